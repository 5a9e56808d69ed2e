"""The REST API: thin FastAPI handlers over ``Store`` (the service layer) and the admin jobs.

Every handler resolves the acting user from a signed token (``Authorization: Bearer`` or the
``rlhf_token`` cookie) and passes it to the store explicitly; reviewers can only act as themselves,
see only their own rankings, and cannot reach ``/api/admin/*``. Errors come back as
``{"detail": "<one line naming the field>"}`` with a 4xx status.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal

import orjson
from annotated_types import Ge, Le
from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Request, Response, UploadFile
from pydantic import BaseModel, Field

from feedback_app.auth import Actor
from feedback_app.store import TooManyLogins

TOKEN_COOKIE = "rlhf_token"


# ---------------------------------------------------------------------------------------------------
# Who is asking


def services(request: Request):
    """The app's ``Services`` (store, signer, limiter, jobs, config), built by ``server.build_app``."""
    return request.app.state.services


def token_from(request) -> str | None:
    """The login token of a request: the ``Authorization: Bearer`` header first (API clients), then the
    ``rlhf_token`` cookie (browsers). Takes a FastAPI request or the ``gr.Request`` Gradio wraps it in."""
    raw = getattr(request, "request", None) or request
    header = raw.headers.get("authorization", "") if hasattr(raw, "headers") else ""
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return raw.cookies.get(TOKEN_COOKIE) if hasattr(raw, "cookies") else None


def actor_of(svc, request) -> Actor | None:
    """The signed-in user of a request (REST route, login form, page guard or Gradio handler), or None:
    one HMAC check of the token, no password hashing, no database read."""
    token = token_from(request)
    return svc.signer.verify(token) if token else None


async def current_actor(request: Request) -> Actor:
    """The signed-in user, or 401. (``async`` so FastAPI runs it on the event loop instead of sending it
    to a worker thread.)"""
    actor = actor_of(services(request), request)
    if actor is None:
        raise HTTPException(401, "log in first: POST /api/login, then send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return actor


async def admin_actor(actor: Actor = Depends(current_actor)) -> Actor:
    if not actor.is_admin:
        raise HTTPException(403, "admins only")
    return actor


def _json(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _fast(payload: Any, status_code: int = 200) -> Response:
    """A JSON response serialised by orjson, skipping FastAPI's generic encoder (the hot routes)."""
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


# ---------------------------------------------------------------------------------------------------
# Request bodies

# Ids and rounds are SQL BIGINTs: a larger number (2**63, or 10**30 sent as JSON 1e30) is a 422 here,
# not an overflow in the database driver (a 500). One type for every id and round of the API.
BIGINT_MAX = 2**63 - 1
Id = Annotated[int, Ge(0), Le(BIGINT_MAX)]
Round = Annotated[int, Ge(0), Le(BIGINT_MAX)]


class LoginIn(BaseModel):
    username: str = Field(..., max_length=100)
    password: str = Field(..., max_length=256)  # auth.MAX_PASSWORD: the same limit as the form and the CLI


class RankingIn(BaseModel):
    item_id: Id
    ranks: list[Any] = Field(..., description="one rank per candidate, in the order shown; 1 best; ties allowed")
    idempotency_key: str | None = Field(None, description="unique per submission (e.g. a UUID); a retry with "
                                        "the same key returns the stored ranking (or send Idempotency-Key)")
    seconds: float | None = Field(None, allow_inf_nan=False, description="seconds the reviewer spent on the item")
    simulated: bool = Field(False, description="true when a scripted reviewer wrote it")
    fetch_next: bool = Field(False, description="also hand out your next item (returned as `next_item`): "
                             "one round trip per ranking")


class EditIn(BaseModel):
    ranks: list[Any]


class FlagIn(BaseModel):
    kind: Literal["unsafe", "broken", "off-topic"]
    comment: str = Field("", max_length=2000)
    candidate_id: Id | None = Field(None, description="the flagged reply; omit to flag the whole item")


class UserIn(BaseModel):
    username: str = Field(..., max_length=100, description="1 to 100 characters; no spaces, control or invisible "
                          "characters; case-insensitive ('Admin' is 'admin')")
    password: str = Field(..., max_length=256, description="8 to 256 characters, zxcvbn strength 3 or more")
    role: Literal["admin", "reviewer"] = "reviewer"
    replace: bool = Field(False, description="reset the password and role of an existing account (ends its "
                          "sessions, enables it again)")


class GenerateIn(BaseModel):
    round: Round = Field(0, description="generation round the new items belong to")
    model: str | None = Field(None, description="policy: 'bundled', or a model directory on the server")
    agent_reply_as_candidate: bool | None = Field(
        None, description="put each prompt's agent reply (chat logs) among its K candidates (default: the server's "
                          "config)")


class PrioritiseIn(BaseModel):
    members: int | None = Field(None, ge=2, le=64, description="probes in the ensemble (default 8)")


class EraseIn(BaseModel):
    conversation: str | None = Field(None, min_length=1, max_length=500, description="conversation id, as imported")
    customer: str | None = Field(None, min_length=1, max_length=500, description="customer identifier, as imported")


class ExportIn(BaseModel):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,100}$",
                             description="folder under the server's export directory (default: a timestamp)")
    reviewers: list[str] | None = None
    rounds: list[Round] | None = None
    source: Literal["all", "human", "simulated"] = "all"
    include_flagged: bool = False
    min_gold_accuracy: float | None = Field(None, ge=0, le=1, description="leave out reviewers below this gold accuracy")
    min_agreement: float | None = Field(None, ge=0, le=1, description="leave out reviewers below this agreement")
    include_pending_demonstrations: bool = Field(False, description="sft/ also takes demonstrations not yet accepted")


class GoldIn(BaseModel):
    ranks: list[Annotated[int, Ge(1), Le(6)]] | None = Field(None, description="known rank per reply in stored "
                                                             "order (reply 1 first), 1 best, ties allowed")
    best: Annotated[int, Ge(1), Le(6)] | None = Field(None, description="or: the best reply's number (1-based)")


class SettingsIn(BaseModel):
    guideline: str | None = Field(None, max_length=20000)
    k: int | None = None
    reviewers_per_item: int | None = None
    lease_seconds: float | None = None
    gold_rate: float | None = None
    gold_threshold: float | None = None
    agreement_threshold: float | None = None


# ---------------------------------------------------------------------------------------------------
# Routes

class FieldError(BaseModel):
    loc: list[str | int] = Field(..., description="where: 'body', 'query', 'path' or 'header', then the field")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx answer (the request's own values are never echoed back)."""

    detail: str | list[FieldError] = Field(..., description="one line naming the field and the problem, or "
                                                            "(422 from request validation) one entry per field")


# Declared once for every route: the schema (and clients generated from it) know every error's shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text} for status, text in {
        400: "bad input (names the field)", 401: "not logged in", 403: "not allowed (role, or a cross-site request)",
        404: "not found", 409: "conflict with the stored state", 410: "gone", 411: "body without a Content-Length",
        413: "request body over the route's limit", 422: "invalid field values",
        429: "too many attempts; see Retry-After"}.items()}

router = APIRouter(prefix="/api", responses=ERROR_RESPONSES)


@router.post("/login", tags=["session"], summary="Log in; returns a signed token (also set as a cookie)")
def login(body: LoginIn, request: Request, response: Response):
    svc = services(request)
    client = request.client.host if request.client else "?"
    try:
        actor = svc.store.login(body.username, body.password, client)
    except TooManyLogins as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(math.ceil(exc.retry_after))}) from None
    token = svc.signer.issue(actor)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", max_age=svc.signer.max_age)
    return {"token": token, "username": actor.username, "role": actor.role}


@router.post("/logout", tags=["session"], summary="End every session of your account and forget the cookie")
def logout(request: Request, response: Response):
    svc = services(request)
    actor = actor_of(svc, request)
    if actor is not None:  # the token stops working on the server, not only in this browser
        svc.store.logout(actor)
    response.delete_cookie(TOKEN_COOKIE)
    return {"ok": True}


@router.get("/me", tags=["session"], summary="Who the token belongs to")
def me(actor: Actor = Depends(current_actor)):
    return _json(actor)


@router.get("/items/next", tags=["review"], summary="The item to rank now (null when none is left)")
async def next_item(request: Request, actor: Actor = Depends(current_actor)):
    # The two hot routes are async and await the store: on SQLite the work runs on the one writer
    # thread, so a reviewer costs no thread while waiting.
    return _fast({"item": _json(await services(request).store.next_item_async(actor))})


@router.post("/rankings", tags=["review"], status_code=201,
             summary="Submit a ranking; retries with the same idempotency key store it once")
async def submit_ranking(body: RankingIn, request: Request, actor: Actor = Depends(current_actor),
                         idempotency_key: str | None = Header(None, alias="Idempotency-Key")):
    key = body.idempotency_key or idempotency_key
    store = services(request).store
    args = (actor, body.item_id, body.ranks, key, body.seconds, body.simulated)
    if body.fetch_next:
        view, following = await store.submit_and_next_async(*args)
        payload = {**_json(view), "next_item": _json(following)}
    else:
        view = await store.submit_ranking_async(*args)
        payload = _json(view)
    return _fast(payload, 200 if view.replayed else 201)


@router.put("/rankings/{ranking_id}", tags=["review"], summary="Edit one of your rankings")
def edit_ranking(ranking_id: Id, body: EditIn, request: Request, actor: Actor = Depends(current_actor)):
    return _json(services(request).store.edit_ranking(actor, ranking_id, body.ranks))


@router.post("/rankings/undo", tags=["review"], summary="Undo your last ranking; its item comes back to you")
def undo(request: Request, actor: Actor = Depends(current_actor)):
    return {"item": _json(services(request).store.undo_last(actor))}


@router.get("/rankings/mine", tags=["review"], summary="Your own rankings, newest first")
def my_rankings(request: Request, limit: int = 50, actor: Actor = Depends(current_actor)):
    return {"rankings": [_json(r) for r in services(request).store.my_rankings(actor, min(max(limit, 1), 500))]}


@router.post("/items/{item_id}/skip", tags=["review"], summary="Skip an item handed to you")
def skip(item_id: Id, request: Request, actor: Actor = Depends(current_actor)):
    services(request).store.skip(actor, item_id)
    return {"ok": True}


@router.post("/items/{item_id}/flags", tags=["review"], status_code=201,
             summary="Flag a reply (or the whole item) as unsafe, broken or off-topic")
def flag(item_id: Id, body: FlagIn, request: Request, actor: Actor = Depends(current_actor)):
    flag_id = services(request).store.flag(actor, item_id, body.kind, body.comment, body.candidate_id)
    return {"flag_id": flag_id}


@router.get("/progress", tags=["review"], summary="Your counts (and the project's, for admins)")
def progress(request: Request, actor: Actor = Depends(current_actor)):
    return _json(services(request).store.progress(actor))


# -- admin ----------------------------------------------------------------------------------------


@router.post("/admin/users", tags=["admin"], status_code=201, summary="Create (or reset) an account")
def add_user(body: UserIn, request: Request, actor: Actor = Depends(admin_actor)):
    return _json(services(request).store.add_user(body.username, body.password, body.role, body.replace, by=actor))


@router.get("/admin/users", tags=["admin"], summary="Every account with its role and whether it is active")
def list_users(request: Request, actor: Actor = Depends(admin_actor)):
    return {"users": [_json(a) for a in services(request).store.accounts_table()]}


@router.post("/admin/users/{username}/disable", tags=["admin"],
             summary="Disable an account: its sessions end, its leases return, its rankings stay")
def disable_user(username: str, request: Request, actor: Actor = Depends(admin_actor)):
    disabled = services(request).store.disable_user(username, by=actor)
    return {"username": disabled.username, "active": False}


@router.get("/admin/audit", tags=["admin"], summary="The audit log of admin actions, newest first")
def audit_log(request: Request, limit: int = 200, actor: Actor = Depends(admin_actor)):
    return {"entries": [_json(e) for e in services(request).store.audit_log(min(max(limit, 1), 1000))]}


ChatLogField = Annotated[str | None, Form(max_length=200, description="chat logs: see `rlhf app import --help` "
                                                                  "(blank: the default)")]


@router.post("/admin/import", tags=["admin"], summary="Import prompts or a chat log (JSONL/CSV); personal data redacted first")
def import_prompts(request: Request, file: UploadFile = File(...), round: Annotated[Round, Form()] = 0,
                   chat_log: Annotated[bool, Form(description="read the file as a chat log (a row per turn)")] = False,
                   conversation_column: ChatLogField = None, turn_column: ChatLogField = None,
                   speaker_column: ChatLogField = None, text_column: ChatLogField = None,
                   customer_column: ChatLogField = None, customer_speaker: ChatLogField = None,
                   agent_speaker: ChatLogField = None, actor: Actor = Depends(admin_actor)):
    from feedback_app.chatlog import chat_log_format, import_bytes, store_import

    svc = services(request)
    name = file.filename or "upload.jsonl"
    fmt = chat_log_format({"conversation_column": conversation_column, "turn_column": turn_column,
                           "speaker_column": speaker_column, "text_column": text_column,
                           "customer_column": customer_column, "customer_speaker": customer_speaker,
                           "agent_speaker": agent_speaker})
    # a chat log (a row per turn: detected by its columns, or chat_log) or prompts; redacted before anything
    # is stored
    rows, report = import_bytes(name, file.file.read(), svc.config.redaction, fmt, chat_log=chat_log)
    return store_import(svc.store, rows, report, svc.config.redaction, name, round=round, by=actor)


@router.post("/admin/generate", tags=["admin"], status_code=202,
             summary="Start generating K candidates for prompts without an item in the round (background)")
def start_generation(body: GenerateIn, request: Request, actor: Actor = Depends(admin_actor)):
    svc = services(request)
    config = (svc.config if body.agent_reply_as_candidate is None
              else svc.config.model_copy(update={"agent_reply_as_candidate": body.agent_reply_as_candidate}))
    job = svc.jobs.start_generation(svc.store, config, body.round, body.model)
    svc.store.audit(actor, "generation started", f"round {body.round}",
                    {"job": job["id"], "model": body.model, "agent_reply_as_candidate": config.agent_reply_as_candidate})
    return job


@router.post("/admin/prioritise", tags=["admin"], status_code=202,
             summary="Start scoring the open items by what their ranking would teach the reward model (background); "
                     "they are then handed out highest first")
def start_prioritise(body: PrioritiseIn, request: Request, actor: Actor = Depends(admin_actor)):
    svc = services(request)
    job = svc.jobs.start_prioritise(svc.store, svc.config, body.members)
    svc.store.audit(actor, "prioritise started", svc.store.project.name, {"job": job["id"], "members": body.members})
    return job


@router.post("/admin/erase", tags=["admin"],
             summary="Erase one conversation or one customer (prompts, candidates, rankings); lists the earlier "
                     "exports that held the data")
def erase(body: EraseIn, request: Request, actor: Actor = Depends(admin_actor)):
    from feedback_app.erasure import erase as erase_data

    report = erase_data(services(request).store, conversation=body.conversation, customer=body.customer, by=actor)
    return dataclasses.asdict(report)


@router.get("/admin/gold", tags=["admin"], summary="Gold items and their known ranks (by reply, 1 best)")
def list_gold(request: Request, actor: Actor = Depends(admin_actor)):
    return [{"item_id": item_id, "ranks": ranks} for item_id, ranks in services(request).store.gold_items().items()]


@router.put("/admin/gold/{item_id}", tags=["admin"],
            summary="Mark an item as gold with its known ranking (or its best reply); audited")
def mark_gold(item_id: Id, body: GoldIn, request: Request, actor: Actor = Depends(admin_actor)):
    from feedback_app.gold import best_reply_ranks
    from feedback_app.store import Invalid

    store = services(request).store
    if (body.ranks is None) == (body.best is None):
        raise Invalid("give either ranks or best")
    ranks = body.ranks if body.ranks is not None else best_reply_ranks(body.best, len(store.item_replies(item_id)))
    store.mark_gold(item_id, ranks, by=actor)
    return {"item_id": item_id, "ranks": ranks}


@router.delete("/admin/gold/{item_id}", tags=["admin"], status_code=204, summary="Make a gold item ordinary again")
def unmark_gold(item_id: Id, request: Request, actor: Actor = Depends(admin_actor)):
    services(request).store.unmark_gold(item_id, by=actor)
    return Response(status_code=204)


@router.patch("/admin/settings", tags=["admin"], summary="Change project settings (versioned and audited)")
def change_settings(body: SettingsIn, request: Request, actor: Actor = Depends(admin_actor)):
    store = services(request).store
    changed = store.update_settings(body.model_dump(exclude_none=True), by=actor)
    return {"changed": changed, "settings_version": store.project.settings_version,
            "guideline_version": store.project.guideline_version}


@router.get("/admin/jobs/{job_id}", tags=["admin"], summary="Progress of a background job")
def job_status(job_id: str, request: Request, actor: Actor = Depends(admin_actor)):
    return services(request).jobs.status(job_id)


@router.post("/admin/export", tags=["admin"], summary="Export rankings as TRL datasets on the server")
def export(body: ExportIn, request: Request, actor: Actor = Depends(admin_actor)):
    from feedback_app.export import ExportFilters, export_path, export_rankings

    svc = services(request)
    out = export_path(svc.export_dir, body.name)
    filters = ExportFilters(body.reviewers, body.rounds, body.source, body.include_flagged, body.min_gold_accuracy,
                            body.min_agreement, body.include_pending_demonstrations)
    manifest = export_rankings(svc.store, out, filters, svc.config.test_fraction, by=actor,
                               min_test_prompts=svc.config.min_test_prompts)  # audited there
    return {"path": str(out), "manifest": {k: v for k, v in manifest.items()
                                           if k not in ("ranking_ids", "demonstration_ids")}}

"""REST routes of the blind A/B evaluation (service: ``feedback_app.ab_store.AbService``).

  POST /api/admin/ab/sets              admin: create a set from two policies' replies to held-out prompts
  GET  /api/admin/ab/sets/{set}/report admin: win rate with its interval, position bias, every judgement
  GET  /api/ab/sets                    the sets (policy names only for admins: reviewers judge blind)
  GET  /api/ab/sets/{set}/next         reviewer: next item, replies as left/right in a stored random order
  POST /api/ab/judgements/{id}         reviewer: verdict left, right, tie or both_bad
  POST /api/ab/sets/{set}/undo         reviewer: take back your latest verdict in the set (once)
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from feedback_app.api import ERROR_RESPONSES, Id, admin_actor, current_actor, services
from feedback_app.auth import Actor

router = APIRouter(prefix="/api", responses=ERROR_RESPONSES)

# A set is named by its name or its id (``AbService._set``).
SetRef = Annotated[str, Path(min_length=1, max_length=200)]


def ab_service(request: Request):
    """One ``AbService`` per app (its random generator draws the blind orders)."""
    state = request.app.state
    if getattr(state, "ab", None) is None:
        from feedback_app.ab_store import AbService

        state.ab = AbService(services(request).store)
    return state.ab


class AbItemIn(BaseModel):
    prompt: Any = Field(..., description="text or chat messages")
    reply_a: str
    reply_b: str


class AbSetIn(BaseModel):
    name: str = Field(..., max_length=200)
    policy_a: str = Field(..., max_length=500, description="name of policy A (e.g. the base model)")
    policy_b: str = Field(..., max_length=500, description="name of policy B (e.g. the aligned checkpoint)")
    judgements_per_item: int = Field(1, ge=1, le=50, description="different reviewers who judge each item")
    items: list[AbItemIn]


class VerdictIn(BaseModel):
    verdict: Literal["left", "right", "tie", "both_bad"]
    seconds: float | None = Field(None, allow_inf_nan=False)
    simulated: bool = Field(False, description="true when a scripted reviewer judged")


@router.post("/admin/ab/sets", tags=["a/b"], status_code=201, summary="Create a blind A/B set")
def create_set(body: AbSetIn, request: Request, actor: Actor = Depends(admin_actor)):
    info = ab_service(request).create_set(actor, body.name, body.policy_a, body.policy_b,
                                          [i.model_dump() for i in body.items], body.judgements_per_item)
    return dataclasses.asdict(info)


@router.get("/admin/ab/sets/{set_ref}/report", tags=["a/b"], summary="Win rate, interval, position bias")
def report(set_ref: SetRef, request: Request,
           confidence: Annotated[float, Query(allow_inf_nan=False)] = 0.95, actor: Actor = Depends(admin_actor)):
    return ab_service(request).report(actor, set_ref, min(max(confidence, 0.5), 0.999)).to_dict()


@router.get("/ab/sets", tags=["a/b"], summary="A/B sets (policy names for admins only)")
def list_sets(request: Request, actor: Actor = Depends(current_actor)):
    return {"sets": [dataclasses.asdict(s) for s in ab_service(request).list_sets(actor)]}


@router.get("/ab/sets/{set_ref}/next", tags=["a/b"], summary="Your next A/B item (null when none is left)")
def next_item(set_ref: SetRef, request: Request, actor: Actor = Depends(current_actor)):
    view = ab_service(request).next_item(actor, set_ref)
    return {"item": dataclasses.asdict(view) if view else None}


@router.post("/ab/judgements/{judgement_id}", tags=["a/b"], summary="Answer an A/B item")
def judge(judgement_id: Id, body: VerdictIn, request: Request, actor: Actor = Depends(current_actor)):
    return ab_service(request).judge(actor, judgement_id, body.verdict, body.seconds, body.simulated)


@router.post("/ab/sets/{set_ref}/undo", tags=["a/b"],
             summary="Take back your latest verdict in the set; its pair comes back to you (once, audited)")
def undo(set_ref: SetRef, request: Request, actor: Actor = Depends(current_actor)):
    return {"item": dataclasses.asdict(ab_service(request).undo_last(actor, set_ref))}

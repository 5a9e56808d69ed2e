"""``build_app(config) -> FastAPI``: the feedback app's web server (no module globals).

It owns the store, login tokens, the login rate limit and the security headers, serves the REST API
(``api.py``), ``GET /health``, the OpenAPI schema (``/openapi.json``) and its page (``/docs``,
rendered here so it needs no script from a CDN: the machines are offline and the
Content-Security-Policy forbids remote scripts). Pages mounted later (``gr.mount_gradio_app``) sit
behind the same middleware and call the same ``Store`` methods.
"""

from __future__ import annotations

import gc
import html
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from feedback_app import ab_api, api, demo_api
from feedback_app.auth import TokenSigner, load_or_create_secret
from feedback_app.config import AppConfig
from feedback_app.generate import Jobs
from feedback_app.security import BodyLimit, CrossSiteGuard
from feedback_app.store import ServiceError, Store
from rlhf.errors import UserError

# Same-origin everything; no remote scripts, styles, fonts or images (a reply cannot load a tracking
# pixel) and no connection to another host; inline scripts and styles stay allowed because Gradio's
# pages need them, eval does not (the browser tests run the pages under this policy).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; media-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): adds the headers to every response,
    including those of apps mounted later."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [h for h in SECURITY_HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Services:
    """Everything a handler needs, held by the app (``app.state.services``), never by a module."""

    config: AppConfig
    store: Store
    signer: TokenSigner  # checks tokens against the store's accounts (role, active, session version)
    jobs: Jobs
    export_dir: Path


def build_services(config: AppConfig) -> Services:
    """Open (and migrate) the database, load the signing secret; shared by the server and the CLI."""
    store = Store.open(config)
    store.set_redaction(config.redaction.model_dump())  # audited when it changes (redaction off/on)
    from feedback_app.redact import warm_up

    warm_up(config.redaction)  # before serving: the first import request must not wait seconds for it
    signer = TokenSigner(load_or_create_secret(config.resolved_secret_file()), config.token_max_age, store.accounts)
    export_dir = config.resolved_secret_file().parent / "exports"
    return Services(config, store, signer, Jobs(), export_dir)


def build_app(config: AppConfig) -> FastAPI:
    svc = build_services(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import anyio.to_thread

        # Sync handlers run in AnyIO's thread pool (40 by default); leave room for 50+ reviewers.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 64
        # Everything loaded by now (Gradio, the redaction analyzer's spaCy and name lists: about 700k
        # objects) lives as long as the server. Left in the collected heap, each full collection walks
        # all of it: 0.3 s and more with the event loop stopped, the p99 tail of every request.
        # Frozen, the collector skips them; objects made while serving are still collected as before.
        gc.collect()
        gc.freeze()
        yield
        svc.store.sessions.kw["bind"].dispose()

    app = FastAPI(title="rlhf feedback app", version="1",
                  description="Reviewers rank candidate replies; admins import prompts, generate candidates "
                              "and export TRL preference datasets. Log in with POST /api/login, then send "
                              "`Authorization: Bearer <token>`.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.services = svc
    # Outermost last: the headers go on every answer, refusals included; sizes are checked first.
    app.add_middleware(CrossSiteGuard)
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": validation_details(exc.errors())}, status_code=422)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health", tags=["session"], summary="Liveness: 200 when the app and its database answer")
    def health():
        return {"ok": True, "project": svc.store.project.name}

    @app.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(render_docs(app.openapi()))

    app.include_router(api.router)
    app.include_router(ab_api.router)  # blind A/B evaluation
    app.include_router(demo_api.router)  # demonstrations: the replies reviewers wanted
    return app


def validation_details(errors) -> list[dict]:
    """FastAPI's 422 body without the offending input: each error keeps where (``loc``), what
    (``msg``) and its kind (``type``), so a 10 MB string is never sent back, nor a password."""
    return [{"loc": [part if isinstance(part, int) else str(part)[:100] for part in e.get("loc", ())],
             "msg": str(e.get("msg", ""))[:300], "type": str(e.get("type", ""))} for e in errors]


def render_docs(schema: dict) -> str:
    """A plain HTML page of the OpenAPI schema: every route, its summary, parameters and body."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(schema['info']['title'])} API</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code,pre{background:#f4f4f4}"
             "h3{margin-bottom:.2em}.m{font-weight:bold;color:#064}</style></head><body>",
             f"<h1>{esc(schema['info']['title'])} API</h1><p>{esc(schema['info'].get('description', ''))}</p>",
             "<p>Machine-readable schema: <a href='/openapi.json'>/openapi.json</a></p>"]
    components = schema.get("components", {}).get("schemas", {})
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            parts.append(f"<h3><span class='m'>{method.upper()}</span> <code>{esc(path)}</code></h3>")
            parts.append(f"<p>{esc(op.get('summary', ''))}</p>")
            params = [f"{p['name']} ({p['in']})" for p in op.get("parameters", [])]
            if params:
                parts.append(f"<p>Parameters: {esc(', '.join(params))}</p>")
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                ref = content.get("schema", {}).get("$ref", "")
                fields = components.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
                shown = {name: f.get("description") or f.get("type") or "" for name, f in fields.items()}
                parts.append(f"<p>Body ({esc(media)}):</p><pre>{esc(json.dumps(shown, indent=2))}</pre>")
    parts.append("</body></html>")
    return "".join(parts)

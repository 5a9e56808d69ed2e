"""Login form, page guard and the Gradio mounts, on the app's own FastAPI server.

The login form posts to ``/login`` (no script needed): the same ``Store.authenticate``, the same
failed-login rate limit and the same signed ``rlhf_token`` cookie as ``POST /api/login``. The Gradio
apps read that cookie through ``auth_dependency``: a request without a valid token (or, on
``/admin``, without the admin role) gets 401 from every Gradio route, and a browser asking for the
page itself is sent to the login form instead.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from feedback_app.api import TOKEN_COOKIE, actor_of
from feedback_app.auth import load_or_create_secret
from feedback_app.security import login_form_token, login_form_token_ok
from feedback_app.store import ServiceError, TooManyLogins

REVIEW_PATH, ADMIN_PATH = "/review", "/admin"
AB_PATH = "/ab"  # blind A/B judgements (feedback_app/pages/ab.py)

# Gradio loads its own scripts and styles from the mount; system fonts only (the default theme would
# fetch Google Fonts, a request outside this host).
CSS = """
.reply-card {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px;}
.reply-card .prose {max-height: 22em; overflow-y: auto;}
.invalid {outline: 2px solid #c00;}
footer {display: none !important;}
.reply-card.current {border: 2px solid #1d4ed8;}
/* /review: a long reply is cut to a few lines with a visible "more" until it is the reply in focus
   (review.js marks it .long), instead of a silent inner scrollbar. */
[id^=card-] .prose {max-height: none; overflow: visible;}
[id^=card-].long:not(.current) .prose {max-height: 9em; overflow: hidden;}
[id^=card-].long:not(.current)::after {content: "\2026 more: J/K or a click on this reply shows all of it";
  display: block; padding: 0 12px 6px; font-style: italic; color: #374151;}
button:focus-visible, input:focus-visible, textarea:focus-visible, a:focus-visible,
[role=tab]:focus-visible {outline: 3px solid #1d4ed8 !important; outline-offset: 2px;}
.reply-card:focus-visible, #prompt:focus-visible, #all-done:focus-visible {outline: 3px solid #1d4ed8; outline-offset: 2px;}
.gradio-container {overflow: clip !important;}  /* 'hidden' would make it the sticky bar's scroller */
#action-bar {position: sticky; bottom: 0; z-index: 20; background: var(--background-fill-primary);
             padding: 8px 0; border-top: 1px solid var(--border-color-primary);}
/* /review: data and a button for review.js only (the REST submit path), never shown or focused */
#ticket, .offscreen {display: none !important;}
"""
# The reviewer page's keys (feedback_app/pages/review.js), served by the app itself: a same-origin
# script file, so the Content-Security-Policy needs neither inline script nor eval for it.
REVIEW_SCRIPT = Path(__file__).with_name("review.js")
REVIEW_SCRIPT_PATH = "/static/review.js"
DEMO_SCRIPT = Path(__file__).with_name("demo_reply.js")  # /review's "Write a better reply" box, likewise
DEMO_SCRIPT_PATH = "/static/demo_reply.js"
AB_SCRIPT = Path(__file__).with_name("ab.js")  # the blind A/B page's keys, likewise
AB_SCRIPT_PATH = "/static/ab.js"


def safe_next(path: str | None) -> str:
    """A local path to go to after login (never another site: no scheme, no '//')."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return REVIEW_PATH
    return path


def login_page(message: str = "", next_path: str = REVIEW_PATH, username: str = "", csrf: str = "") -> str:
    esc = html.escape
    note = f"<p class='err' role='alert'>{esc(message)}</p>" if message else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Log in: rlhf feedback</title>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<style>body{font-family:system-ui,sans-serif;max-width:24em;margin:4em auto;padding:0 1em}"
        "label{display:block;margin-top:1em}input{width:100%;padding:.5em;font-size:1em;box-sizing:border-box}"
        "button{margin-top:1.5em;padding:.6em 1.5em;font-size:1em}.err{color:#b00;font-weight:bold}</style>"
        "</head><body><h1>Rank model replies</h1>"
        f"{note}<form method='post' action='/login'>"
        f"<input type='hidden' name='next' value='{esc(next_path)}'>"
        f"<input type='hidden' name='csrf' value='{esc(csrf)}'>"
        f"<label for='username'>Username</label><input id='username' name='username' value='{esc(username)}' "
        "autocomplete='username' required autofocus>"
        "<label for='password'>Password</label><input id='password' name='password' type='password' "
        "autocomplete='current-password' required>"
        "<button type='submit'>Log in</button></form></body></html>"
    )


class PageGuard:
    """Pure ASGI middleware: a browser opening ``/review`` or ``/admin`` without a valid login goes to
    the login form; a reviewer opening ``/admin`` gets a plain 403 page. (Gradio's own routes under
    those paths refuse such requests with 401 through ``auth_dependency``.)"""

    def __init__(self, app, services):
        self.app, self.services = app, services

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and scope.get("method") == "GET" and path.rstrip("/") in (REVIEW_PATH, ADMIN_PATH, AB_PATH):
            request = Request(scope)
            actor = actor_of(self.services, request)
            if actor is None:
                response = RedirectResponse(f"/login?next={quote(path.rstrip('/'))}", status_code=303)
                return await response(scope, receive, send)
            if path.rstrip("/") == ADMIN_PATH and not actor.is_admin:
                response = HTMLResponse("<!doctype html><title>Admins only</title><h1>Admins only</h1>"
                                        "<p><a href='/review'>Back to ranking</a></p>", status_code=403)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def add_login_routes(app: FastAPI, svc) -> None:
    @app.get("/", include_in_schema=False)
    def root(request: Request):
        actor = actor_of(svc, request)
        if actor is None:
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse(ADMIN_PATH if actor.is_admin else REVIEW_PATH, status_code=303)

    secret = load_or_create_secret(svc.config.resolved_secret_file())

    def form_page(request: Request, message: str, target: str, username: str, status: int = 200,
                  headers=None) -> HTMLResponse:
        """The login form carrying its CSRF token (``login_form_token``: no cookie needed)."""
        csrf = login_form_token(secret, request.scope)
        return HTMLResponse(login_page(message, target, username, csrf), status_code=status, headers=headers)

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = REVIEW_PATH):
        return form_page(request, "", safe_next(next), "")

    @app.post("/login", include_in_schema=False)
    def login_submit(request: Request, username: str = Form(""), password: str = Form(""),
                     next: str = Form(REVIEW_PATH), csrf: str = Form("")):
        client = request.client.host if request.client else "?"
        target = safe_next(next)
        if not login_form_token_ok(secret, request.scope, csrf):
            return form_page(request, "This form expired; please log in again.", target, username, 403)
        try:
            actor = svc.store.login(username, password, client)  # the REST API's login, throttle and all
        except TooManyLogins as exc:
            wait = math.ceil(exc.retry_after)
            return form_page(request, f"Too many failed logins; retry in {wait} s.", target, username, 429,
                             {"Retry-After": str(wait)})
        except ServiceError:
            return form_page(request, "Wrong username or password.", target, username, 401)
        if target.startswith(ADMIN_PATH) and not actor.is_admin:
            target = REVIEW_PATH
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, svc.signer.issue(actor), httponly=True, samesite="strict",
                            max_age=svc.signer.max_age)
        return response

    @app.get(REVIEW_SCRIPT_PATH, include_in_schema=False)
    def review_script():
        return FileResponse(REVIEW_SCRIPT, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @app.get(DEMO_SCRIPT_PATH, include_in_schema=False)
    def demo_script():
        return FileResponse(DEMO_SCRIPT, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @app.get(AB_SCRIPT_PATH, include_in_schema=False)
    def ab_script():
        return FileResponse(AB_SCRIPT, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @app.get("/logout", include_in_schema=False)
    def logout(request: Request):
        actor = actor_of(svc, request)
        # A link on another page (an <img src=/logout> on another port of this host is same-site and
        # carries the cookie) must not end the sessions: only the app's own link or a typed address.
        own = request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
        if actor is not None and own:  # ends the account's sessions on the server too (the token stops working)
            svc.store.logout(actor)
        elif actor is not None:
            return RedirectResponse(REVIEW_PATH, status_code=303)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(TOKEN_COOKIE)
        return response


def mount_pages(app: FastAPI) -> FastAPI:
    """Add the login form and mount the reviewer and admin Gradio apps behind it."""
    import gradio as gr

    from feedback_app.pages.admin import build_admin_page
    from feedback_app.pages.reviewer import build_reviewer_page

    svc = app.state.services
    add_login_routes(app, svc)
    app.add_middleware(PageGuard, services=svc)

    def any_user(request: Request) -> str | None:
        actor = actor_of(svc, request)
        return actor.username if actor else None

    def admin_only(request: Request) -> str | None:
        actor = actor_of(svc, request)
        return actor.username if actor and actor.is_admin else None

    # Text contrast at least 4.5:1 (WCAG AA, checked by axe-core in tests/web): the default theme's
    # hints and placeholders (#bbbbc2 on white, 1.9:1) and its orange Submit (white on #f97316, 2.8:1)
    # fall short; gray-600 hints, gray-500 placeholders and white on orange-700 (5.2:1) do not. Links
    # are blue-700, readable on the grey reply cards too (6.8:1).
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]).set(
        body_text_color_subdued="#4b5563", body_text_color_subdued_dark="#d1d5db",
        input_placeholder_color="#6b7280", input_placeholder_color_dark="#9ca3af",
        button_primary_background_fill="#c2410c", button_primary_background_fill_dark="#c2410c",
        button_primary_background_fill_hover="#9a3412", button_primary_background_fill_hover_dark="#9a3412",
        link_text_color="#1d4ed8", link_text_color_visited="#1d4ed8", link_text_color_active="#1d4ed8",
        link_text_color_hover="#1e3a8a")
    common = dict(footer_links=[], run_history=False, mcp_server=False, ssr_mode=False, theme=theme, css=CSS,
                  show_error=False, pwa=False, enable_monitoring=False)
    gr.mount_gradio_app(app, build_reviewer_page(svc), path=REVIEW_PATH, auth_dependency=any_user,
                        head=f'<script src="{REVIEW_SCRIPT_PATH}"></script><script src="{DEMO_SCRIPT_PATH}"></script>',
                        **common)
    gr.mount_gradio_app(app, build_admin_page(svc), path=ADMIN_PATH, auth_dependency=admin_only,
                        max_file_size="20mb", **common)
    from feedback_app.ab_store import AbService
    from feedback_app.pages.ab import build_ab_page

    gr.mount_gradio_app(app, build_ab_page(svc, AbService(svc.store)), path=AB_PATH, auth_dependency=any_user,
                        head=f'<script src="{AB_SCRIPT_PATH}"></script>', **common)
    return app

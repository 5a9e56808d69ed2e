"""Refusing hostile requests before any work is done, and model text that cannot reach other hosts.

* ``BodyLimit``: pure ASGI middleware; a request whose declared body is over the route's limit gets
  413 before one byte of it is read (1 MB by default, 20 MB on the admin import routes; the reviewer
  and A/B pages take no uploads at all).
* ``CrossSiteGuard``: pure ASGI middleware; a browser request that changes something (POST, PUT,
  PATCH, DELETE) must come from the app's own origin, Gradio's queue and upload routes included, and a
  REST call authenticated by the login cookie must also carry ``X-CSRF-Token`` (derived from the
  login token; a script sending ``Authorization: Bearer`` needs none). It also marks every cookie
  ``Secure`` when the request arrived over HTTPS (directly, or through a trusted TLS proxy).
* ``inert_markdown``: model replies and prompts are shown as Markdown; raw HTML other than plain
  formatting tags is shown as text, and images are turned into links, so a reply cannot make the
  reviewer's browser fetch anything (the Content-Security-Policy forbids it too; this does not rely
  on it).

SameSite=Strict cookies alone do not stop cross-site requests: a page on another port of the same
host is "same-site" and its requests carry the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from urllib.parse import urlsplit

KB, MB = 1024, 1024 * 1024
DEFAULT_BODY_LIMIT = 1 * MB
UPLOAD_LIMIT = 20 * MB  # the admin page's own Gradio limit (max_file_size="20mb") and the REST import
UPLOAD_LIMITS = {"/api/admin/import": UPLOAD_LIMIT, "/admin/gradio_api/upload": UPLOAD_LIMIT}
UPLOAD_ROUTES = ("/gradio_api/upload", "/gradio_api/process_recording")  # Gradio's file-accepting routes

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TOKEN_COOKIE = "rlhf_token"  # the login cookie (feedback_app.api.TOKEN_COOKIE)
CSRF_COOKIE = "rlhf_csrf"  # readable by the page's scripts; the value to send as X-CSRF-Token
CSRF_HEADER = "x-csrf-token"
# REST routes that a cookie cannot authenticate, hence need no X-CSRF-Token (the origin check applies).
CSRF_EXEMPT = frozenset({"/api/login"})


def body_limit(path: str) -> int:
    """Bytes of request body allowed on ``path``: 0 on the upload routes of pages with no upload control."""
    if path in UPLOAD_LIMITS:
        return UPLOAD_LIMITS[path]
    if path.endswith(UPLOAD_ROUTES):
        return 0
    return DEFAULT_BODY_LIMIT


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _refuse(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuses a body over ``body_limit(path)`` from its Content-Length, before reading it; a body of
    unknown length (chunked) gets 411, since its size would only be known after reading it. (The HTTP
    server itself never reads past the declared Content-Length.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = body_limit(scope["path"])
        length = _header(scope, b"content-length")
        chunked = "chunked" in (_header(scope, b"transfer-encoding") or "").lower()
        if length is None and chunked:
            return await _refuse(send, 411, "send the request body with a Content-Length header")
        if length is not None:
            if not length.strip().isdigit():
                return await _refuse(send, 400, "Content-Length: not a number of bytes")
            if int(length) > limit:
                detail = ("this page takes no file uploads" if limit == 0 else
                          f"request body of {int(length)} bytes is over this route's limit of {limit} bytes")
                return await _refuse(send, 413, detail, [(b"connection", b"close")])
        await self.app(scope, receive, send)


def transport_warning(host: str, behind_proxy: bool) -> str | None:
    """What to say at start when passwords and tokens would cross a network in plain HTTP."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if loopback or behind_proxy:
        return None
    return (f"WARNING: --host {host}: the app speaks plain HTTP; passwords and login tokens cross the network "
            "unencrypted. Put a TLS proxy in front of it and start it with --behind-proxy true "
            "(see README, Deployment and security).")


# ---------------------------------------------------------------------------------------------------
# Cross-site requests


def csrf_token(login_token: str) -> str:
    """The CSRF token of a session: a hash of its login token. Knowing it reveals nothing of the login
    token; a page on another origin cannot read the HttpOnly login cookie to compute it, nor send a
    custom header to this app without a CORS preflight, which the app never grants."""
    return hashlib.sha256(b"rlhf-csrf:" + login_token.encode()).hexdigest()[:32]


def own_origin(scope) -> str:
    """``scheme://host[:port]`` this request was addressed to (scheme and client as uvicorn resolved
    them: behind ``--behind-proxy`` the proxy's X-Forwarded-Proto counts; the proxy must pass Host)."""
    return f"{scope.get('scheme', 'http')}://{(_header(scope, b'host') or '').lower()}"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else "null"


def same_origin(scope) -> bool:
    """Whether an unsafe request comes from the app's own pages. Browsers send ``Origin`` with every
    POST, but ``null`` under this app's ``Referrer-Policy: no-referrer`` (Chromium's forms) and from
    sandboxed contexts; then ``Sec-Fetch-Site`` (sent by current browsers) decides, and an old browser's
    ``Referer``; a ``null`` with neither is refused. A request with none of the three does not come
    from a browser page (curl, ``rlhf simulate``, the tests' HTTP clients): it is no cross-site request."""
    origin = _header(scope, b"origin")
    if origin is not None and origin.strip().lower() != "null":
        return origin.strip().lower() == own_origin(scope)
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        return site.strip().lower() in ("same-origin", "none")  # none: typed or bookmarked by the user
    referer = _header(scope, b"referer")
    if referer is not None:
        return _origin_of(referer.strip()) == own_origin(scope)
    return origin is None


def from_browser(scope) -> bool:
    """A request sent by a web browser (every browser's User-Agent starts with ``Mozilla/``, and only
    browsers send Origin, Sec-Fetch-* or Referer): a cross-site request can only come from one."""
    agent = _header(scope, b"user-agent") or ""
    return agent.startswith("Mozilla/") or any(_header(scope, h) is not None
                                               for h in (b"origin", b"sec-fetch-site", b"referer"))


def login_form_token(secret: bytes, scope, hours_ago: int = 0, now: float | None = None) -> str:
    """The login form's CSRF token before there is a session: an HMAC of the client's address and
    User-Agent and the hour, so the form needs no cookie (a failed login leaves none) and a page on
    another origin, which cannot read the form, cannot forge one."""
    hour = int((time.time() if now is None else now) // 3600) - hours_ago
    client = (scope.get("client") or ("?", 0))[0]
    agent = _header(scope, b"user-agent") or ""
    return hmac.new(secret, f"login-form|{client}|{agent}|{hour}".encode(), hashlib.sha256).hexdigest()[:32]


def login_form_token_ok(secret: bytes, scope, sent: str, now: float | None = None) -> bool:
    """Required of browsers (a login CSRF happens in the victim's browser; a script posting the form
    has no browser session to be tricked into); a form stays valid for one to two hours."""
    if not from_browser(scope):
        return True
    return any(hmac.compare_digest(sent.encode(), login_form_token(secret, scope, h, now).encode()) for h in (0, 1))


def _cookies(scope) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    try:
        jar.load(_header(scope, b"cookie") or "")
    except Exception:  # a malformed Cookie header: no cookies, the request is then unauthenticated
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


class CrossSiteGuard:
    """Refuses unsafe cross-site requests (403) before any route runs, and requires ``X-CSRF-Token`` on
    REST calls the login cookie authenticates. Sets ``rlhf_csrf`` beside every new login cookie, and
    marks cookies ``Secure`` on HTTPS requests."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] in UNSAFE_METHODS:
            bearer = (_header(scope, b"authorization") or "").lower().startswith("bearer ")
            if not bearer:
                if not same_origin(scope):
                    return await _refuse(send, 403, "cross-site request refused: this app only accepts "
                                                    "changes from its own pages (Origin must be "
                                                    f"{own_origin(scope)})")
                login_token = _cookies(scope).get(TOKEN_COOKIE)
                path = scope["path"]
                if login_token and path.startswith("/api/") and path not in CSRF_EXEMPT:
                    sent = _header(scope, CSRF_HEADER.encode()) or ""
                    if not hmac.compare_digest(sent.encode(), csrf_token(login_token).encode()):
                        return await _refuse(send, 403, "missing or wrong X-CSRF-Token header: send the "
                                                        f"'{CSRF_COOKIE}' cookie's value, or authenticate "
                                                        "with 'Authorization: Bearer <token>'")
        secure = scope.get("scheme") == "https"

        async def send_with_cookies(message):
            if message["type"] == "http.response.start":
                message["headers"] = _with_cookie_rules(list(message.get("headers", [])), secure)
            await send(message)

        await self.app(scope, receive, send_with_cookies)


def _with_cookie_rules(headers: list, secure: bool) -> list:
    """Adds ``Secure`` to cookies on HTTPS, and the session's CSRF cookie beside a new login cookie."""
    out = []
    for key, value in headers:
        if key.lower() == b"set-cookie":
            text = value.decode("latin-1")
            name, _, rest = text.partition("=")
            if name.strip() == TOKEN_COOKIE:
                token = rest.split(";", 1)[0].strip().strip('"')
                attributes = rest.split(";", 1)[1] if ";" in rest else ""
                if token:  # a login, not a logout (which clears the cookie)
                    kept = ";".join(a for a in attributes.split(";") if a.strip().lower() != "httponly")
                    out.append((b"set-cookie", _secure(f"{CSRF_COOKIE}={csrf_token(token)};{kept}", secure)))
                else:
                    out.append((b"set-cookie", _secure(f"{CSRF_COOKIE}=\"\";{attributes}", secure)))
            value = _secure(text, secure)
        out.append((key, value))
    return out


def _secure(cookie: str, secure: bool) -> bytes:
    if secure and "secure" not in [a.strip().lower() for a in cookie.split(";")[1:]]:
        cookie += "; Secure"
    return cookie.encode("latin-1")


# ---------------------------------------------------------------------------------------------------
# Model text shown as Markdown

# Formatting tags kept as HTML when written without attributes; any other tag, comment or
# declaration is shown as text. No kept tag can load anything.
SAFE_TAGS = frozenset("b i em strong u s del ins sub sup small mark code pre kbd samp var br hr p div span "
                      "blockquote ul ol li dl dt dd h1 h2 h3 h4 h5 h6 table thead tbody tr th td caption".split())
# Fenced blocks and code spans, never longer than CommonMark's (treating less as code only shows a
# "<" escaped in code; treating more would leave live HTML): a fence opens at most 3 spaces in and
# closes at a line starting with the same run; a code span does not cross a blank line.
_CODE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^`\n]*\n.*?(?:^ {0,3}\1[`~]*[ \t]*$|\Z)"
                   r"|(`+)(?!`)(?:(?!\n[ \t]*\n).)+?(?<!`)\2(?!`)", re.MULTILINE | re.DOTALL)
_OPENING = re.compile(r"<(?=[A-Za-z/!?])")  # where a browser may see a tag, comment or declaration
_SAFE_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)\s*/?>")
_AUTOLINK = re.compile(r"<[A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]*>")  # <https://...>: a link, fetches nothing


def _inert(text: str) -> str:
    out, last = [], 0
    for opening in _OPENING.finditer(text):
        at = opening.start()
        tag = _SAFE_TAG.match(text, at)
        if (tag and tag.group(1).lower() in SAFE_TAGS) or _AUTOLINK.match(text, at):
            continue
        out.append(text[last:at] + "&lt;")
        last = at + 1
    out.append(text[last:])
    # ![alt](url) and ![alt][ref] load an image; an entity for "[" shows the markup as text instead.
    return "".join(out).replace("![", "!&#91;")


def inert_markdown(text: str) -> str:
    """Markdown that renders without any request: raw HTML tags other than attribute-less formatting
    tags (``SAFE_TAGS``) are escaped so they show as text (``<img src=...>``, ``<video>``,
    ``<form action=...>``, ``srcset``, ``<!-- -->``), and Markdown images become links. Code spans and
    fenced blocks are left alone: their content is shown as text already."""
    out, last = [], 0
    for code in _CODE.finditer(text):
        out.append(_inert(text[last:code.start()]))
        out.append(code.group(0))
        last = code.end()
    out.append(_inert(text[last:]))
    return "".join(out)

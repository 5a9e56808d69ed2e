"""One token reader for the REST API, the login form, the page guard and the Gradio pages
(``feedback_app.api.token_from``): the Authorization header first, then the login cookie."""

from types import SimpleNamespace

from starlette.requests import Request

from feedback_app.api import TOKEN_COOKIE, token_from


def _request(authorization: str | None = None, cookie: str | None = None) -> Request:
    headers = []
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    if cookie is not None:
        headers.append((b"cookie", f"{TOKEN_COOKIE}={cookie}".encode()))
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def test_header_first_then_cookie():
    assert token_from(_request("Bearer from-header", "from-cookie")) == "from-header"
    assert token_from(_request("bearer  spaced ", None)) == "spaced"
    assert token_from(_request(None, "from-cookie")) == "from-cookie"
    assert token_from(_request("Basic dXNlcjpwdw==", "from-cookie")) == "from-cookie"  # not a bearer token
    assert token_from(_request()) is None


def test_a_gradio_request_is_read_through_the_request_it_wraps():
    wrapped = SimpleNamespace(request=_request("Bearer from-header", "from-cookie"))  # gr.Request's shape
    assert token_from(wrapped) == "from-header"

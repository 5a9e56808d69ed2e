"""The feedback app's web pages: a login form, the reviewer page and the admin pages (Gradio).

``mount_pages(app)`` adds them to the app built by ``feedback_app.server.build_app``: the Gradio apps
are mounted inside that FastAPI server (``gr.mount_gradio_app``), so its login tokens, security
headers and rate limits apply to every page, and every handler calls the same ``Store`` methods as
the REST API. Light at import: gradio is imported inside the builders.
"""

from __future__ import annotations


def mount_pages(app):
    """Mount the login form, ``/review`` and ``/admin`` on ``app`` (a ``build_app`` FastAPI app)."""
    from feedback_app.pages.web import mount_pages as _mount

    return _mount(app)

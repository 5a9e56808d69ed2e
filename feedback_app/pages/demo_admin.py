"""The admin page's Demonstrations tab: each reviewer's written replies with their counts, accepted or
rejected one at a time (audit-logged by ``feedback_app.demonstrations.decide``). Accepted ones go into
the export's ``sft/`` folder (``rlhf app export``; the Export tab)."""

# No `from __future__ import annotations`: Gradio finds a handler's `request: gr.Request` by its annotation.
import json

from feedback_app.store import ServiceError
from rlhf.errors import UserError

STATUSES = ["pending", "accepted", "rejected", "all"]


def _short(text, n: int = 160) -> str:
    text = text if isinstance(text, str) else " / ".join(m.get("content", "") for m in text if isinstance(m, dict)) \
        if isinstance(text, list) else json.dumps(text, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def rows(store, status: str = "pending", author: str = "") -> list[list]:
    """One row per demonstration: id, reviewer, status, guideline version, prompt, reply (shortened)."""
    from feedback_app.demonstrations import listing

    views = listing(store, None if status in ("all", "", None) else status, author.strip() or None)
    return [[v.id, v.author, v.status, v.guideline_version, v.based_on or "new", _short(v.prompt), _short(v.text, 400)]
            for v in views]


def author_rows(store) -> list[list]:
    from feedback_app.demonstrations import counts_by_author

    return [list(row) for row in counts_by_author(store)]


def decide_one(store, admin, demonstration_id, accept: bool) -> str:
    from feedback_app.demonstrations import decide

    if demonstration_id is None:
        raise UserError("demonstration id: type the id of a row first")
    view = decide(store, admin, int(demonstration_id), accept)
    return f"Demonstration {view.id} by {view.author}: {view.status}."


def demonstrations_tab(svc, admin_of) -> None:
    """Build the tab inside the admin page's ``gr.Tabs`` (``admin_of(request)`` is the admin who clicked)."""
    import gradio as gr

    store = svc.store
    with gr.Tab("Demonstrations", id="demonstrations") as tab:
        gr.Markdown("Replies reviewers wrote on the ranking page (*Write a better reply*, key W). Accept the "
                    "ones that show how this team answers: accepted ones are exported in `sft/` for "
                    "`rlhf sft`; pending ones only with *include pending*. Each decision is audit-logged.")
        per_author = gr.Dataframe(headers=["reviewer", "pending", "accepted", "rejected"], value=lambda: author_rows(store),
                                  interactive=False, label="Per reviewer", elem_id="demo-authors")
        with gr.Row():
            status = gr.Radio(STATUSES, value="pending", label="Show", elem_id="demo-status-filter")
            author = gr.Textbox(label="Reviewer (blank: everyone)", elem_id="demo-author-filter")
        table = gr.Dataframe(headers=["id", "reviewer", "status", "guideline", "from", "prompt", "reply"],
                             value=lambda: rows(store), interactive=False, wrap=True, label="Demonstrations",
                             elem_id="demo-table", column_widths=["6%", "10%", "9%", "8%", "8%", "25%", "34%"])
        with gr.Row():
            chosen = gr.Number(None, precision=0, minimum=1, label="Demonstration id", elem_id="demo-id")
            accept_btn = gr.Button("Accept", variant="primary", elem_id="demo-accept")
            reject_btn = gr.Button("Reject", variant="stop", elem_id="demo-reject")
        message = gr.Markdown("", elem_id="demo-message")

    def refresh(status_value, author_value):
        return rows(store, status_value, author_value or ""), author_rows(store)

    def on_decide(accept: bool):
        def run(demonstration_id, status_value, author_value, request: gr.Request):
            try:
                text = decide_one(store, admin_of(request), demonstration_id, accept)
            except (ServiceError, UserError) as exc:
                text = f"**Error:** {exc}"
            return (text, *refresh(status_value, author_value))
        return run

    outputs = [table, per_author]
    for event in (tab.select, status.change, author.submit):
        event(refresh, [status, author], outputs, concurrency_id="admin")
    accept_btn.click(on_decide(True), [chosen, status, author], [message, *outputs], concurrency_id="admin")
    reject_btn.click(on_decide(False), [chosen, status, author], [message, *outputs], concurrency_id="admin")

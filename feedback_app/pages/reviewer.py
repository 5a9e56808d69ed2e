"""The reviewer page: a prompt and its K replies in this reviewer's shuffled order, one rank control
per reply (1 = best, ties allowed), skip, flag a reply with a comment, undo the last ranking.

The handlers (``next_view``, ``submit``, ``skip``, ``undo``, ``flag``, ``check_ranks``) are plain
functions of the store, the acting user and the page state; ``build_reviewer_page`` only wires them
to Gradio components. Model output is shown through ``gr.Markdown`` (which sanitises HTML), never
``gr.HTML``.
"""

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from feedback_app.auth import Actor
from feedback_app.models import RankingRow
from feedback_app.security import inert_markdown
from feedback_app.store import ItemView, ServiceError, Store

LETTERS = "ABCDEF"
FLAG_KINDS = ("unsafe", "broken", "off-topic")
WHOLE_ITEM = "the whole item"
# Shown beside the item; the keys themselves are handled by review.js (a same-origin file).
KEY_LEGEND = ("### Keys\n"
              "- **1** to **{k}**: rank the reply in focus (then the next one is in focus; equal digits tie)\n"
              "- **J** / **K** or **Up** / **Down**: previous or next reply\n"
              "- **Ctrl+Enter**: submit · **S**: skip · **U**: undo · **F**: flag the reply in focus")


@dataclass
class View:
    """What the page shows after an action: the item (or none), prefilled ranks, a message."""

    item: ItemView | None
    ranks: list[int | None] = field(default_factory=list)  # prefilled (after undo), in the order shown
    message: str = ""
    progress: str = ""

    def state(self) -> dict | None:
        """The page's per-session state: the item on screen and a fresh idempotency key."""
        if self.item is None:
            return None
        return {"item_id": self.item.item_id, "candidate_ids": [c.id for c in self.item.candidates],
                "shown_at": time.time(), "key": uuid.uuid4().hex}


def prompt_markdown(prompt: Any) -> str:
    """A prompt (text or chat messages) as Markdown that loads nothing (``inert_markdown``); earlier
    turns labelled by role."""
    if isinstance(prompt, str):
        return inert_markdown(prompt)
    lines = []
    for message in prompt:
        role = inert_markdown(str(message.get("role", "")).capitalize())
        lines.append(f"**{role}:** {inert_markdown(str(message.get('content', '')))}")
    return "\n\n".join(lines)


def progress_text(store: Store, actor: Actor, jobs=None) -> str:
    """'12 of 40 today': rankings since local midnight, out of those plus the items still open to you."""
    counts = store.progress(actor)
    midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
    with store.sessions() as s:
        today = s.scalar(select(func.count(RankingRow.id)).where(RankingRow.user_id == actor.id,
                                                                 RankingRow.created_at >= midnight)) or 0
    left = counts.available + counts.leased
    text = f"**{today} of {today + left} today** · {counts.ranked} ranked in all · {counts.skipped} skipped"
    job = jobs.latest() if jobs is not None else None
    if job and job["state"] == "running":
        text += f"\n\nCandidates are being generated: {job['done']} of {job['total'] or '?'} prompts."
    return text


def next_view(store: Store, actor: Actor, message: str = "", jobs=None) -> View:
    item = store.next_item(actor)
    if item is None:
        message = (message + " " if message else "") + "Nothing left to rank right now. Check again later."
    return View(item, [None] * len(item.candidates) if item else [], message.strip(),
                progress_text(store, actor, jobs))


def done_text(view: View) -> str:
    """The card shown when the queue is empty: the day's count and what to do next."""
    return ("### All done\n\nThere is nothing left for you to rank right now. New items appear when "
            "candidates are generated; press *Check for new items* later.\n\n" + view.progress)


def check_ranks(ranks: list[Any], k: int) -> list[str | None]:
    """One error message (or None) per rank control: every reply needs a rank in 1..K, and some
    reply must be ranked 1. Pure, so the page marks only the offending controls."""
    errors: list[str | None] = []
    for value in ranks[:k]:
        try:
            rank = int(value)
        except (TypeError, ValueError):
            errors.append("Give this reply a rank.")
            continue
        errors.append(None if 1 <= rank <= k else f"Rank must be 1 to {k}.")
    parsed = [int(v) for v in ranks[:k] if str(v).isdigit()]
    if all(e is None for e in errors) and 1 not in parsed:
        errors = ["The best reply gets rank 1; ties share a rank." for _ in errors]
    return errors


def submit(store: Store, actor: Actor, state: dict | None, ranks: list[Any], jobs=None) -> View:
    """Store the ranking of the item on screen (ranks in the order shown) and show the next item."""
    if not state:
        return next_view(store, actor, jobs=jobs)
    problems = [p for p in check_ranks(ranks, len(state["candidate_ids"])) if p]
    if problems:  # the page's validator stops this first; a hand-made request lands here
        return _same_item(store, actor, state, ranks, problems[0], jobs)
    seconds = max(0.0, time.time() - state["shown_at"])
    try:
        store.submit_ranking(actor, state["item_id"], [int(r) for r in ranks], state["key"], seconds=round(seconds, 2))
    except ServiceError as exc:
        return _same_item(store, actor, state, ranks, str(exc), jobs)
    return next_view(store, actor, "Saved.", jobs)


def skip(store: Store, actor: Actor, state: dict | None, jobs=None) -> View:
    if state:
        try:
            store.skip(actor, state["item_id"])
        except ServiceError as exc:
            return next_view(store, actor, str(exc), jobs)
    return next_view(store, actor, "Skipped.", jobs)


def undo(store: Store, actor: Actor, jobs=None) -> View:
    """Take back the last ranking: its item returns with the ranks given before, to change or resubmit.
    The item on screen keeps its lease and comes back afterwards."""
    mine = store.my_rankings(actor, limit=1)
    try:
        item = store.undo_last(actor)
    except ServiceError as exc:
        return next_view(store, actor, str(exc), jobs)
    previous = mine[0].ranks if mine and mine[0].item_id == item.item_id else [None] * len(item.candidates)
    return View(item, list(previous), "Your last ranking was taken back; change it and submit again.",
                progress_text(store, actor, jobs))


def flag(store: Store, actor: Actor, state: dict | None, target: str, kind: str, comment: str) -> str:
    """Flag one reply (by its letter on screen) or the whole item; returns the message to show."""
    if not state:
        return "There is no item on screen to flag."
    candidate_id = None
    if target != WHOLE_ITEM:
        index = LETTERS.index(target.split()[-1])
        candidate_id = state["candidate_ids"][index]
    store.flag(actor, state["item_id"], kind, comment or "", candidate_id)
    return f"Flagged {target} as {kind}. Thank you; flagged replies are left out of the training data."


def _same_item(store: Store, actor: Actor, state: dict, ranks: list[Any], message: str, jobs=None) -> View:
    item = store.next_item(actor)  # the same item while the lease holds
    if item is None or item.item_id != state["item_id"]:
        return View(item, [None] * len(item.candidates) if item else [], message, progress_text(store, actor, jobs))
    return View(item, list(ranks), message, progress_text(store, actor, jobs))


# ---------------------------------------------------------------------------------------------------
# The Gradio page


def build_reviewer_page(svc) -> "gr.Blocks":
    """The reviewer page for the app's ``Services`` (store, signer, jobs); K controls for the project's K."""
    import gradio as gr

    from feedback_app.api import actor_of

    # Gradio finds the request parameter by its annotation, so it must be the class itself (this
    # module does not use `from __future__ import annotations`).
    store: Store = svc.store
    k = store.project.k
    rank_choices = [str(r) for r in range(1, k + 1)]
    targets = [f"reply {LETTERS[i]}" for i in range(k)] + [WHOLE_ITEM]

    def who(request: gr.Request) -> Actor:
        actor = actor_of(svc, request)
        if actor is None:  # the mount's auth_dependency already refused anonymous requests
            raise gr.Error("Log in again.")
        return actor

    with gr.Blocks(title="Rank replies", analytics_enabled=False) as page:
        state = gr.State(None)
        with gr.Row():
            header = gr.Markdown("")
            gr.Markdown("[Log out](/logout)", elem_id="logout")
        # "Saved." sits at the top, where the page scrolls after Submit or Skip (review.js).
        message = gr.Markdown("", elem_id="message")
        with gr.Row():
            with gr.Column(scale=3):
                done_card = gr.Markdown("", elem_id="all-done", container=True, visible=False)
                with gr.Column(elem_id="item-area") as item_area:
                    gr.Markdown("### Prompt")
                    prompt = gr.Markdown("", elem_id="prompt", container=True)
                    replies, rank_controls = [], []
                    for i in range(k):
                        with gr.Group(elem_classes="reply-card", elem_id=f"card-{i}"):
                            gr.Markdown(f"#### Reply {LETTERS[i]}")
                            replies.append(gr.Markdown("", elem_id=f"reply-{i}"))
                            rank_controls.append(gr.Radio(rank_choices, value=None, label=f"Rank of reply {LETTERS[i]}",
                                                          info="1 = best; give equal ranks for a tie",
                                                          elem_id=f"rank-{i}"))
                # Sticky at the bottom of the window (CSS in web.py): reachable without scrolling. Outside
                # the item area, so Undo stays there once the queue is empty.
                with gr.Row(elem_id="action-bar"):
                    submit_btn = gr.Button("Submit ranking", variant="primary", elem_id="submit")
                    skip_btn = gr.Button("Skip", elem_id="skip")
                    undo_btn = gr.Button("Undo last ranking", elem_id="undo")
            with gr.Column(scale=1):
                gr.Markdown(KEY_LEGEND.format(k=k), elem_id="key-legend")
                gr.Markdown("### Guidelines")
                gr.Markdown(store.project.guideline or "Rank the replies from best (1) to worst.",
                            elem_id="guidelines")
                progress = gr.Markdown("", elem_id="progress")
                refresh_btn = gr.Button("Check for new items", size="sm", elem_id="refresh")
                with gr.Accordion("Flag a reply", open=False, elem_id="flag-box"):
                    # Radios, not a dropdown, so the F key can pick the reply in focus (review.js).
                    flag_target = gr.Radio(targets, value=targets[0], label="Which reply", elem_id="flag-target")
                    flag_kind = gr.Radio(list(FLAG_KINDS), value=None, label="Problem", elem_id="flag-kind")
                    flag_comment = gr.Textbox(label="Comment", lines=2, max_length=2000, elem_id="flag-comment")
                    flag_btn = gr.Button("Flag", elem_id="flag")
                    flag_message = gr.Markdown("", elem_id="flag-message")

        view_outputs = [state, header, prompt, *replies, *rank_controls, message, progress, submit_btn, skip_btn,
                        item_area, done_card]

        def render(view: View, actor: Actor) -> list:
            item = view.item
            head = f"Signed in as **{actor.username}**" + (" · [Admin pages](/admin)" if actor.is_admin else "")
            if item is None:
                # The item area is hidden and its ranks cleared, so no earlier item's ranks stay checked.
                return [None, head, "", *[""] * k, *[gr.update(value=None, interactive=False)] * k,
                        view.message, view.progress, gr.update(interactive=False), gr.update(interactive=False),
                        gr.update(visible=False), gr.update(value=done_text(view), visible=True)]
            ranks = [str(r) if r else None for r in view.ranks]
            return [view.state(), head, prompt_markdown(item.prompt), *[inert_markdown(c.text) for c in item.candidates],
                    *[gr.update(value=r, interactive=True) for r in ranks], view.message, view.progress,
                    gr.update(interactive=True), gr.update(interactive=True),
                    gr.update(visible=True), gr.update(value="", visible=False)]

        def on_load(request: gr.Request):
            actor = who(request)
            return render(next_view(store, actor, jobs=svc.jobs), actor)

        # The request comes first: Gradio injects it by position, which *ranks would swallow.
        def on_submit(request: gr.Request, current, *ranks):
            actor = who(request)
            return render(submit(store, actor, current, list(ranks), svc.jobs), actor)

        # The validator sees the inputs only (not the session's state): the buttons are disabled while
        # no item is on screen, so an empty page is never validated.
        def validate_submit(current, *ranks):
            return [gr.validate(True, "")] + [gr.validate(e is None, e or "") for e in check_ranks(list(ranks), k)]

        def on_skip(current, request: gr.Request):
            actor = who(request)
            return render(skip(store, actor, current, svc.jobs), actor)

        def on_undo(request: gr.Request):
            actor = who(request)
            return render(undo(store, actor, svc.jobs), actor)

        def on_flag(current, target, kind, comment, request: gr.Request):
            try:
                return flag(store, who(request), current, target, kind, comment), None, ""
            except ServiceError as exc:
                return str(exc), gr.skip(), gr.skip()

        def validate_flag(current, target, kind, comment):
            return [gr.validate(True, ""), gr.validate(target in targets, "Choose a reply."),
                    gr.validate(kind in FLAG_KINDS, "Choose what is wrong."),
                    gr.validate(len(comment or "") <= 2000, "At most 2000 characters.")]

        page.load(on_load, None, view_outputs, concurrency_id="review", show_progress="hidden")
        submit_btn.click(on_submit, [state, *rank_controls], view_outputs, validator=validate_submit,
                         concurrency_id="review", api_name="submit")
        skip_btn.click(on_skip, [state], view_outputs, concurrency_id="review", api_name="skip")
        undo_btn.click(on_undo, None, view_outputs, concurrency_id="review", api_name="undo")
        refresh_btn.click(on_load, None, view_outputs, concurrency_id="review", api_name="refresh")
        flag_btn.click(on_flag, [state, flag_target, flag_kind, flag_comment], [flag_message, flag_kind, flag_comment],
                       validator=validate_flag, concurrency_id="review", api_name="flag")
    # Reviewers' events share one generous pool; generation runs in its own thread, never here.
    page.queue(default_concurrency_limit=64)
    return page

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
from feedback_app.models import Candidate, RankingRow
from feedback_app.security import inert_markdown
from feedback_app.store import ItemView, ServiceError, Store

LETTERS = "ABCDEF"
# The page builds this many reply cards and rank controls once and shows as many as the item on screen
# has replies: the project's K may change while the server runs (a CLI import into an empty project),
# and an item keeps the K it was made with.
MAX_K = len(LETTERS)
FLAG_KINDS = ("unsafe", "broken", "off-topic")
WHOLE_ITEM = "the whole item"
RECENT_TURNS = 2  # a conversation's last turns shown; earlier ones sit behind "Show N earlier turns"
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


def split_turns(prompt: Any, recent: int = RECENT_TURNS) -> tuple[Any, Any]:
    """``(earlier, shown)``: a conversation's turns before its last ``recent`` ones (collapsed on the
    page) and those last turns. A text prompt, or a conversation of at most ``recent`` turns, has no
    earlier part (``[]``)."""
    if isinstance(prompt, str) or len(prompt) <= recent:
        return [], prompt
    return list(prompt[:-recent]), list(prompt[-recent:])


def earlier_label(n: int) -> str:
    return f"Show {n} earlier turn" + ("" if n == 1 else "s")


def reply_markdown(text: str, end: dict | None) -> str:
    """A reply as inert Markdown, marked as cut when generation stopped at its token limit (``end`` is
    the candidate's stored ``sampling``: ``finish_reason`` "length" and ``new_tokens``), so reviewers
    do not blame the reply for an ending the generator removed."""
    body = inert_markdown(text)
    if end and end.get("finish_reason") == "length":
        body += f"\n\n*\u2026 cut at {end.get('new_tokens', '?')} tokens (the generator's limit)*"
    return body


def candidate_ends(store: Store, candidate_ids: list[int]) -> dict[int, dict]:
    """The stored generation record (``Candidate.sampling``) of each candidate on screen."""
    if not candidate_ids:
        return {}
    with store.sessions() as s:
        return {cid: sampling or {} for cid, sampling in
                s.execute(select(Candidate.id, Candidate.sampling).where(Candidate.id.in_(candidate_ids)))}


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


def ticket_text(state: dict | None, guideline_version: str | None = None) -> str:
    """The item on screen (``View.state()``) for review.js: "ITEM_ID KEY", its id and the ranking's
    idempotency key, the same the page's own Submit would use, then the guideline version it is shown
    under (review.js draws the next item itself only while that version holds)."""
    if state is None:
        return ""
    text = f"{int(state['item_id'])} {state['key']}"
    return f"{text} {guideline_version}" if guideline_version else text


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
    ranks = list(ranks)[:len(state["candidate_ids"])]  # the page sends MAX_K controls, hidden ones empty
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
        if index >= len(state["candidate_ids"]):
            return f"This item has {len(state['candidate_ids'])} replies; choose one of them."
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
    """The reviewer page for the app's ``Services`` (store, signer, jobs): ``MAX_K`` reply cards and rank
    controls, as many shown as the item on screen has replies."""
    import gradio as gr

    from feedback_app.api import actor_of

    # Gradio finds the request parameter by its annotation, so it must be the class itself (this
    # module does not use `from __future__ import annotations`).
    store: Store = svc.store

    def who(request: gr.Request) -> Actor:
        actor = actor_of(svc, request)
        if actor is None:  # the mount's auth_dependency already refused anonymous requests
            raise gr.Error("Log in again.")
        return actor

    def targets_of(n: int) -> list[str]:
        return [f"reply {LETTERS[i]}" for i in range(n)] + [WHOLE_ITEM]

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
                    # A long conversation's older turns, collapsed: the last RECENT_TURNS stay in view.
                    with gr.Accordion(earlier_label(0), open=False, visible=False, elem_id="earlier-box") as earlier_box:
                        earlier = gr.Markdown("", elem_id="earlier-turns")
                    prompt = gr.Markdown("", elem_id="prompt", container=True)
                    card_groups, replies, rank_controls = [], [], []
                    all_ranks = [str(r) for r in range(1, MAX_K + 1)]
                    for i in range(MAX_K):
                        with gr.Group(elem_classes="reply-card", elem_id=f"card-{i}", visible=i < 2) as card:
                            gr.Markdown(f"#### Reply {LETTERS[i]}")
                            replies.append(gr.Markdown("", elem_id=f"reply-{i}"))
                            # Built with every rank up to MAX_K (Gradio checks a submitted value against
                            # the choices it was built with); each item shows 1..its K.
                            rank_controls.append(gr.Radio(all_ranks, value=None, label=f"Rank of reply {LETTERS[i]}",
                                                          info="1 = best; give equal ranks for a tie",
                                                          elem_id=f"rank-{i}"))
                        card_groups.append(card)
                # Sticky at the bottom of the window (CSS in web.py): reachable without scrolling. Outside
                # the item area, so Undo stays there once the queue is empty.
                with gr.Row(elem_id="action-bar"):
                    # Narrow enough to share one line at 390 px (Gradio's default 160 px each stacks them
                    # and the sticky bar then covers a fifth of a phone's screen).
                    submit_btn = gr.Button("Submit ranking", variant="primary", elem_id="submit", min_width=96)
                    skip_btn = gr.Button("Skip", elem_id="skip", min_width=64)
                    undo_btn = gr.Button("Undo last ranking", elem_id="undo", min_width=96)
                # Demonstrations: demo_reply.js builds its "Write a better reply" box (key W) in here.
                gr.Markdown("", elem_id="demo-reply")
            with gr.Column(scale=1):
                legend = gr.Markdown(KEY_LEGEND.format(k="K"), elem_id="key-legend")
                gr.Markdown("### Guidelines")
                guidelines = gr.Markdown(store.project.guideline or "Rank the replies from best (1) to worst.",
                                         elem_id="guidelines")
                progress = gr.Markdown("", elem_id="progress")
                refresh_btn = gr.Button("Check for new items", size="sm", elem_id="refresh")
                with gr.Accordion("Flag a reply", open=False, elem_id="flag-box"):
                    # Radios, not a dropdown, so the F key can pick the reply in focus (review.js).
                    flag_target = gr.Radio(targets_of(MAX_K), value="reply A", label="Which reply",
                                           elem_id="flag-target")
                    flag_kind = gr.Radio(list(FLAG_KINDS), value=None, label="Problem", elem_id="flag-kind")
                    flag_comment = gr.Textbox(label="Comment", lines=2, max_length=2000, elem_id="flag-comment")
                    flag_btn = gr.Button("Flag", elem_id="flag")
                    flag_message = gr.Markdown("", elem_id="flag-message")
        # How many replies the item on screen has, for the validator (which sees the inputs, not the
        # session's state); the handler checks against the state again.
        shown_k = gr.Number(0, visible=False, precision=0)
        # The item on screen for review.js, which submits a complete ranking through the REST API (one
        # short request, the same store call, handing out the next item too) and draws that next item
        # itself; this page renders it ("saved") only when the script cannot (no item left, another K
        # or guideline, a refusal).
        ticket = gr.Textbox("", elem_id="ticket", interactive=False, container=False, show_label=False)
        saved_btn = gr.Button("Show the next item", elem_id="after-submit", elem_classes="offscreen")
        # review.js draws the next item from the REST answer itself, so this page's own state falls
        # behind; before any other event of this page it presses this to render the item now leased
        # (the one on screen), then replays the reviewer's ranks and the event.
        sync_btn = gr.Button("Show the item on screen", elem_id="sync-view", elem_classes="offscreen")

        view_outputs = [state, header, earlier_box, earlier, prompt, *card_groups, *replies, *rank_controls, message,
                        progress, submit_btn, skip_btn, item_area, done_card, legend, guidelines, flag_target, shown_k,
                        ticket]

        def render(view: View, actor: Actor) -> list:
            item = view.item
            head = f"Signed in as **{actor.username}**" + (" · [Admin pages](/admin)" if actor.is_admin else "")
            guideline = (item.guideline if item else store.project.guideline) or "Rank the replies from best (1) to worst."
            if item is None:
                # The item area is hidden and its ranks cleared, so no earlier item's ranks stay checked.
                return [None, head, gr.update(visible=False), "", "", *[gr.update(visible=False)] * MAX_K,
                        *[""] * MAX_K, *[gr.update(value=None, interactive=False)] * MAX_K,
                        view.message, view.progress, gr.update(interactive=False), gr.update(interactive=False),
                        gr.update(visible=False), gr.update(value=done_text(view), visible=True), gr.update(),
                        guideline, gr.update(), 0, ""]
            n = len(item.candidates)
            ranks = [str(r) if r else None for r in view.ranks] + [None] * (MAX_K - n)
            ends = candidate_ends(store, [c.id for c in item.candidates])
            texts = [reply_markdown(c.text, ends.get(c.id)) for c in item.candidates] + [""] * (MAX_K - n)
            choices = [str(r) for r in range(1, n + 1)]
            older, recent = split_turns(item.prompt)
            current = view.state()
            return [current, head,
                    gr.update(visible=bool(older), label=earlier_label(len(older)), open=False),
                    prompt_markdown(older) if older else "", prompt_markdown(recent),
                    *[gr.update(visible=i < n) for i in range(MAX_K)], *texts,
                    *[gr.update(choices=choices, value=r, interactive=i < n) for i, r in enumerate(ranks)],
                    view.message, view.progress, gr.update(interactive=True), gr.update(interactive=True),
                    gr.update(visible=True), gr.update(value="", visible=False), KEY_LEGEND.format(k=n), guideline,
                    gr.update(choices=targets_of(n), value="reply A"), n,
                    ticket_text(current, "".join(str(item.guideline_version or "").split()))]

        def on_load(request: gr.Request):
            actor = who(request)
            return render(next_view(store, actor, jobs=svc.jobs), actor)

        # The request comes first: Gradio injects it by position, which *ranks would swallow.
        def on_submit(request: gr.Request, current, n, *ranks):
            actor = who(request)
            return render(submit(store, actor, current, list(ranks), svc.jobs), actor)

        # The validator sees the inputs only (not the session's state): the buttons are disabled while
        # no item is on screen, so an empty page is never validated.
        def validate_submit(current, n, *ranks):
            n = int(n or 0)
            errors = check_ranks(list(ranks), n) + [None] * (MAX_K - n)
            return [gr.validate(True, ""), gr.validate(True, "")] + [gr.validate(e is None, e or "") for e in errors]

        def on_saved(request: gr.Request):  # review.js stored the ranking through the REST API
            actor = who(request)
            return render(next_view(store, actor, "Saved.", svc.jobs), actor)

        def on_sync(request: gr.Request):
            actor = who(request)
            return render(next_view(store, actor, "", svc.jobs), actor)

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
            n = len(current["candidate_ids"]) if current else MAX_K
            return [gr.validate(True, ""), gr.validate(target in targets_of(n), "Choose a reply."),
                    gr.validate(kind in FLAG_KINDS, "Choose what is wrong."),
                    gr.validate(len(comment or "") <= 2000, "At most 2000 characters.")]

        page.load(on_load, None, view_outputs, concurrency_id="review", show_progress="hidden")
        submit_btn.click(on_submit, [state, shown_k, *rank_controls], view_outputs, validator=validate_submit,
                         concurrency_id="review", api_name="submit")
        saved_btn.click(on_saved, None, view_outputs, concurrency_id="review", api_name="saved")
        sync_btn.click(on_sync, None, view_outputs, concurrency_id="review", api_name="sync", show_progress="hidden")
        skip_btn.click(on_skip, [state], view_outputs, concurrency_id="review", api_name="skip")
        undo_btn.click(on_undo, None, view_outputs, concurrency_id="review", api_name="undo")
        refresh_btn.click(on_load, None, view_outputs, concurrency_id="review", api_name="refresh")
        flag_btn.click(on_flag, [state, flag_target, flag_kind, flag_comment], [flag_message, flag_kind, flag_comment],
                       validator=validate_flag, concurrency_id="review", api_name="flag")
    # Reviewers' events share one generous pool; generation runs in its own thread, never here.
    page.queue(default_concurrency_limit=64)
    return page

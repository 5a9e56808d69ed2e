"""The blind A/B page (``/ab``): a prompt and two replies side by side, no policy names, in the order
stored for this judgement; buttons "Left is better", "Right is better", "Tie", "Both bad". Admins
also see each set's win rate with its 95% interval and the position-bias check.

Handlers (``ab_view``, ``answer``, ``report_markdown``) are plain functions of the ``AbService``, the
acting user and the page state; ``build_ab_page`` only wires them to Gradio components. Replies are
shown through ``gr.Markdown`` (which sanitises HTML).
"""

import time
from dataclasses import dataclass

from sqlalchemy import func, select

from feedback_app.ab_store import AbItemView, AbService, AbSetInfo
from feedback_app.auth import Actor
from feedback_app.models import AbItem, AbJudgement
from feedback_app.pages.reviewer import prompt_markdown
from feedback_app.security import inert_markdown
from feedback_app.store import ServiceError

BUTTONS = (("Left is better", "left"), ("Right is better", "right"), ("Tie", "tie"), ("Both bad", "both_bad"))


@dataclass
class AbView:
    item: AbItemView | None
    message: str = ""

    def state(self) -> dict | None:
        return None if self.item is None else {"judgement_id": self.item.judgement_id, "shown_at": time.time()}


def ab_view(service: AbService, actor: Actor, set_ref: str | None, message: str = "") -> AbView:
    """The reviewer's next A/B item of ``set_ref`` (None when nothing is left or no set is chosen)."""
    if not set_ref:
        return AbView(None, "Choose an A/B set.")
    try:
        item = service.next_item(actor, set_ref)
    except ServiceError as exc:
        return AbView(None, str(exc))
    if item is None:
        message = (message + " " if message else "") + "Nothing left to judge in this set."
    return AbView(item, message.strip())


def answer(service: AbService, actor: Actor, set_ref: str | None, state: dict | None, verdict: str) -> AbView:
    """Store the verdict on the judgement on screen, then show the next item."""
    if not state:
        return ab_view(service, actor, set_ref)
    seconds = max(0.0, time.time() - state.get("shown_at", time.time()))
    try:
        service.judge(actor, state["judgement_id"], verdict, seconds=min(seconds, 1e6))
    except ServiceError as exc:
        return AbView(None, str(exc))
    return ab_view(service, actor, set_ref, "Saved.")


def take_back(service: AbService, actor: Actor, set_ref: str | None) -> AbView:
    """Undo: the reviewer's latest verdict in the set is taken back and its pair shown again; a refusal
    (none to take back, taken back already, already in a written report) is said above the pair on
    screen."""
    if not set_ref:
        return AbView(None, "Choose an A/B set.")
    try:
        item = service.undo_last(actor, set_ref)
    except ServiceError as exc:
        return ab_view(service, actor, set_ref, str(exc))
    return AbView(item, "Your last verdict was taken back; judge this pair again.")


def set_choices(sets: list[AbSetInfo], actor: Actor) -> list[tuple[str, str]]:
    """The A/B sets as the dropdown offers them: ``(label, set id)``. Reviewers see "Set 2 (12 pairs)",
    never the set's name, which admins often write after the policies ("aligned-vs-base")."""
    return [(f"{s.name} ({s.items} pairs)" if actor.is_admin else f"Set {i + 1} ({s.items} pairs)", str(s.set_id))
            for i, s in enumerate(sets)]


def progress_markdown(service: AbService, actor: Actor, set_ref: str | None) -> str:
    """'**3 of 12** judged': this reviewer's answered judgements in the set, of the set's pairs."""
    if not set_ref or not str(set_ref).isdigit():
        return ""
    with service.store.sessions() as s:
        total = s.scalar(select(func.count(AbItem.id)).where(AbItem.set_id == int(set_ref))) or 0
        done = s.scalar(select(func.count(AbJudgement.id)).join(AbItem, AbItem.id == AbJudgement.item_id)
                        .where(AbItem.set_id == int(set_ref), AbJudgement.user_id == actor.id,
                               AbJudgement.verdict.is_not(None))) or 0
    return f"**{done} of {total}** judged in this set"


def report_markdown(service: AbService, actor: Actor) -> str:
    """Admins: every set's win rate of policy A (95% interval, non-tied judgements) and position bias."""
    if not actor.is_admin:
        return ""
    lines = ["| set | A vs B | wins / losses / ties / both bad | win rate of A (95% CI) "
             "| length-controlled (95% CI) | left side won (p) |",
             "|---|---|---|---|---|---|"]
    for info in service.list_sets(actor):
        r = service.report(actor, info.set_id)
        wr, pb = r.win_rate, r.position_bias
        rate = "n/a" if wr.win_rate_a is None else f"{wr.win_rate_a:.1%} [{wr.ci_low:.1%}, {wr.ci_high:.1%}]"
        bias = "n/a" if pb.left_share is None else f"{pb.left_share:.1%} (p={pb.p_value:.3g})"
        lc = r.length_controlled or {}
        controlled = "n/a" if lc.get("length_controlled") is None else \
            f"{lc['length_controlled']:.1%} [{lc['lc_interval'][0]:.1%}, {lc['lc_interval'][1]:.1%}]"
        lines.append(f"| {info.name} | {r.policy_a} vs {r.policy_b} | {wr.wins_a} / {wr.wins_b} / "
                     f"{wr.ties} / {wr.both_bad} | {rate} | {controlled} | {bias} |")
    return "\n".join(lines) if len(lines) > 2 else "No A/B sets yet."


def build_ab_page(svc, service: AbService):
    """The Gradio Blocks of ``/ab`` for the app's ``Services`` and its ``AbService``."""
    import gradio as gr

    from feedback_app.api import actor_of

    def who(request: gr.Request) -> Actor:
        actor = actor_of(svc, request)
        if actor is None:
            raise gr.Error("Log in first.")
        return actor

    def render(view: AbView, actor: Actor, set_ref: str | None):
        item = view.item
        return (prompt_markdown(item.prompt) if item else "", inert_markdown(item.left) if item else "",
                inert_markdown(item.right) if item else "", view.message, view.state(),
                progress_markdown(service, actor, set_ref))

    def on_load(request: gr.Request):
        """Header, sets and report. Reviewers start on the newest set; an admin starts on none, so
        opening the page for the report leases no pair away from the reviewers."""
        actor = who(request)
        choices = set_choices(service.list_sets(actor), actor)
        head = (f"Signed in as **{actor.username}** · [Rank replies](/review)"
                + (" · [Admin pages](/admin)" if actor.is_admin else "") + " · [Log out](/logout)")
        value = None if actor.is_admin or not choices else choices[-1][1]
        return head, gr.update(choices=choices, value=value), report_markdown(service, actor)

    with gr.Blocks(title="Blind A/B") as page:
        header = gr.Markdown("", elem_id="ab-header")
        gr.Markdown("## Which reply is better?\nThe two replies come from two models, in a random order. "
                    "Judge them by the project's guideline:", elem_id="ab-intro")
        gr.Markdown(svc.store.project.guideline or "Prefer the reply that helps the user more.",
                    elem_id="ab-guidelines")
        with gr.Row():
            chosen = gr.Dropdown(label="A/B set", choices=[], interactive=True, elem_id="ab-set", scale=3)
            progress = gr.Markdown("", elem_id="ab-progress")
        # The keys themselves are handled by ab.js (a same-origin file, see pages/web.py).
        gr.Markdown("Keys: **1** or **Left**: left is better · **2** or **Right**: right is better · "
                    "**T**: tie · **B**: both bad · **U**: undo your last verdict", elem_id="ab-keys")
        prompt = gr.Markdown(elem_id="ab-prompt")
        with gr.Row():
            with gr.Column():
                gr.Markdown("#### Response 1 (left)")
                left = gr.Markdown(elem_classes=["reply-card"], elem_id="ab-left")
            with gr.Column():
                gr.Markdown("#### Response 2 (right)")
                right = gr.Markdown(elem_classes=["reply-card"], elem_id="ab-right")
        with gr.Row():
            buttons = [(gr.Button(label, elem_id=f"ab-verdict-{verdict}"), verdict) for label, verdict in BUTTONS]
            undo_btn = gr.Button("Undo last verdict", elem_id="ab-undo")
        message = gr.Markdown(elem_id="ab-message")
        report = gr.Markdown(elem_id="ab-report")
        state = gr.State(None)
        outputs = [prompt, left, right, message, state, progress]

        def show(set_ref, request: gr.Request):
            actor = who(request)
            return render(ab_view(service, actor, set_ref), actor, set_ref)

        page.load(on_load, None, [header, chosen, report])
        chosen.change(show, chosen, outputs)

        def on_click(verdict: str):
            def click(set_ref, st, request: gr.Request):
                actor = who(request)
                return render(answer(service, actor, set_ref, st, verdict), actor, set_ref)
            return click

        for button, verdict in buttons:
            button.click(on_click(verdict), [chosen, state], outputs)

        def on_undo(set_ref, request: gr.Request):
            actor = who(request)
            return render(take_back(service, actor, set_ref), actor, set_ref)

        undo_btn.click(on_undo, chosen, outputs)
    return page

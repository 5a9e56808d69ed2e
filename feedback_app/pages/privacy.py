"""The admin page's personal-data parts: the dashboard's redaction notice and its line on the agents'
replies, and erasure on request (a conversation id or a customer identifier). Plain functions of the
store, no Gradio here; ``feedback_app.pages.admin`` wires them to the page."""

from __future__ import annotations

import time

from rlhf.errors import UserError

ERASE_KINDS = ("conversation", "customer")


def redaction_notice(store) -> str:
    """One line on the project's redaction: a warning while it is off (since when and by whom, from the
    audit log), else the settings in force."""
    from feedback_app.chatlog import project_settings

    settings = project_settings(store)
    if settings.enabled:
        patterns = ", ".join(settings.patterns) or "none"
        return (f"Redaction **on**: personal data is replaced by placeholders before storage (project patterns: "
                f"{patterns}).")
    since = next((e for e in store.audit_log(limit=100000) if e.action == "redaction off"), None)
    when = (f" since {time.strftime('%Y-%m-%d %H:%M', time.gmtime(since.at))} UTC (by {since.actor}, in the audit "
            f"log)" if since else "")
    return (f"⚠️ **Redaction is OFF** for project `{store.project.name}`{when}: imported texts and generated "
            f"replies are stored as given, personal data included. Turn it on (`redaction.enabled: true`) and run "
            f"`rlhf app redact-store` to redact what was stored meanwhile.")


def agent_summary(store, include_simulated: bool = True) -> str:
    from feedback_app.agent_replies import agent_markdown, load_agent_wins

    return agent_markdown(*load_agent_wins(store, include_simulated))


def erase_request(store, kind: str, identifier: str, by=None) -> str:
    """Erase one conversation or one customer (``feedback_app.erasure.erase``, audited) and say what went
    and which earlier exports held the data."""
    from feedback_app.erasure import erase

    if kind not in ERASE_KINDS:
        raise UserError(f"kind: choose one of {', '.join(ERASE_KINDS)}")
    identifier = (identifier or "").strip()
    if not identifier:
        raise UserError(f"{kind}: give the {kind} id to erase, as in the imported chat log")
    report = erase(store, **{kind: identifier}, by=by)
    lines = [f"Erased {kind} data: {report.prompts} prompts, {report.items} items, {report.rankings} rankings, "
             f"{report.demonstrations} demonstrations (recorded in the audit log under its hash)."]
    if report.exports_with_data:
        lines += ["", "Earlier exports that contained it (rebuild them and the models trained on them):"]
        lines += [f"- `{path}`" for path in report.exports_with_data]
    else:
        lines += ["", "No earlier export contained it."]
    if report.exports_unreadable:
        lines += ["", "Exports whose manifest could not be read (moved or deleted; check them by hand):"]
        lines += [f"- `{path}`" for path in report.exports_unreadable]
    return "\n".join(lines)

"""The admin pages: dashboard, accounts and roles, prompt import, background candidate generation,
export with filters, and the project's settings.

Handlers are plain functions of the app's ``Services``; ``build_admin_page`` wires them to Gradio.
Generation runs in ``Jobs``' own thread (never in the page's event queue), and the page polls its
progress with a timer, so reviewers' pages never wait for it.
"""

# No `from __future__ import annotations`: Gradio finds a handler's `request: gr.Request` parameter by
# its annotation, which must be the class itself, not a string.
import shutil
import tempfile
import time
from pathlib import Path

from feedback_app.api import actor_of
from feedback_app.pages import demo_admin
from feedback_app.store import ServiceError
from rlhf.errors import UserError

SOURCES = ("all", "human", "simulated")


def users_table(store) -> list[list[str]]:
    return [[a.username, a.role] for a in store.list_users()]


def accounts_rows(store) -> list[list[str]]:
    return [[a.username, a.role, "active" if a.active else "disabled"] for a in store.accounts_table()]


def add_account(store, username: str, password: str, role: str, replace: bool, by=None) -> str:
    actor = store.add_user(username, password, role, replace=replace, by=by)
    return f"{'Reset' if replace else 'Created'} {actor.role} account '{actor.username}'."


def disable_account(store, username: str, by=None) -> str:
    if not (username or "").strip():
        raise UserError("username: choose the account to disable")
    actor = store.disable_user(username.strip(), by=by)
    return f"Disabled '{actor.username}': signed out everywhere, its items went back to the pool, its rankings stay."


def audit_rows(store, limit: int = 200) -> list[list[str]]:
    """The audit log for the page: when (UTC), admin, action, target, details."""
    return [[time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at)), e.actor, e.action, e.target,
             ", ".join(f"{k}={v}" for k, v in e.detail.items())] for e in store.audit_log(limit)]


def import_file(store, path: str | None, round: int, by=None, chat_log: bool = False,
                chat_format: dict | None = None) -> str:
    """``chat_format``: the chat-log columns and speaker values (``ChatLogFormat`` fields; blank = default)."""
    from feedback_app.chatlog import chat_log_format, import_bytes, project_settings, store_import

    if not path:
        raise UserError("file: choose a JSONL or CSV file of prompts first")
    file = Path(path)
    fmt = chat_log_format(chat_format or {})
    settings = project_settings(store)  # the server records its config's settings in the project at start
    rows, report = import_bytes(file.name, file.read_bytes(), settings, fmt, chat_log=bool(chat_log))
    counts = store_import(store, rows, report, settings, file.name, round=int(round), by=by)
    redaction = report.summary() if settings.enabled else "redaction is OFF for this project: texts stored as given"
    return (f"{file.name}: {counts['prompts_added']} prompts added ({counts['prompts_existing']} already there), "
            f"{counts['items_added']} items with replies added; {redaction}.")


def start_generation(svc, round: int, model: str, by=None, agent_reply: bool | None = None) -> str:
    model = (model or "").strip() or None
    config = (svc.config if agent_reply is None
              else svc.config.model_copy(update={"agent_reply_as_candidate": bool(agent_reply)}))
    job = svc.jobs.start_generation(svc.store, config, int(round), model)
    svc.store.audit(by, "generation started", f"round {int(round)}",
                    {"job": job["id"], "model": model, "agent_reply_as_candidate": config.agent_reply_as_candidate})
    return f"Generation started (job {job['id']}); progress below."


def start_prioritise(svc, by=None) -> str:
    job = svc.jobs.start_prioritise(svc.store, svc.config, None)
    svc.store.audit(by, "prioritise started", svc.store.project.name, {"job": job["id"]})
    return f"Prioritising started (job {job['id']}); the result shows below."


def job_text(jobs) -> str:
    job = jobs.latest()
    if job is None:
        return "No generation job has run since the server started."
    took = time.time() - job["started_at"]
    if job["kind"] == "prioritise":
        if job["state"] == "running":
            return f"Prioritising the open items ({took:.0f} s so far)."
        if job["state"] == "failed":
            return f"Prioritising failed: {job['error']}"
        return f"Prioritising done: {(job['result'] or {}).get('summary', '')}."
    if job["state"] == "running":
        return f"Generating: {job['done']} of {job['total'] or '?'} prompts done ({took:.0f} s so far)."
    if job["state"] == "failed":
        return f"Generation failed: {job['error']}"
    r = job["result"] or {}
    return (f"Generation done: {r.get('items_added', 0)} items added for {r.get('prompts', 0)} prompts "
            f"with model '{r.get('model')}', round {r.get('round')}.")


def job_state(jobs) -> str:
    """The latest background job in the dashboard's words (the Prompts tab shows ``job_text`` in full)."""
    job = jobs.latest()
    if job is None:
        return "none since the server started."
    what = "prioritising " if job["kind"] == "prioritise" else ""
    if job["state"] == "running":
        return f"{what}running" + ("." if what else f", {job['done']} of {job['total'] or '?'} prompts.")
    if job["state"] == "failed":
        return f"{what}failed (see the Prompts and generation tab)."
    if what:
        return f"prioritising finished, {(job['result'] or {}).get('items', 0)} open items scored."
    r = job["result"] or {}
    return f"finished, {r.get('items_added', 0)} new items in round {r.get('round')}."


def parse_rounds(text: str) -> list[int] | None:
    """'0, 2' -> [0, 2]; empty -> None (all rounds)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UserError(f"rounds: give whole numbers separated by commas (got {text!r})") from None


def export(svc, name: str, reviewers: list[str] | None, rounds: str, source: str,
           include_flagged: bool, by=None, min_gold_accuracy: float | None = None,
           min_agreement: float | None = None) -> tuple[str, str]:
    """Export into the server's export folder; returns a message and a zip of the export to download."""
    from feedback_app.export import ExportFilters, export_path, export_rankings

    out = export_path(svc.export_dir, name)
    filters = ExportFilters(list(reviewers) or None if reviewers else None, parse_rounds(rounds), source,
                            bool(include_flagged), _threshold(min_gold_accuracy), _threshold(min_agreement))
    manifest = export_rankings(svc.store, out, filters, svc.config.test_fraction, by=by,
                               min_test_prompts=svc.config.min_test_prompts)  # audited there
    archive = shutil.make_archive(str(Path(tempfile.mkdtemp(prefix="rlhf-export-")) / out.name), "zip", out)
    c = manifest["counts"]
    dropped = (manifest.get("quality") or {}).get("dropped_reviewers")
    return (f"Exported {c['rankings']} rankings from {c['reviewers']} reviewers to `{out}`: pairwise "
            f"{c['pairwise']['train']} train / {c['pairwise']['test']} test, K-wise {c['kwise']['train']} / "
            f"{c['kwise']['test']}." + (f" Left out for quality: {', '.join(dropped)}." if dropped else "")), archive


def _threshold(value) -> float | None:
    """A quality threshold from the page: blank or 0 is no filter."""
    return float(value) if value not in (None, "") and float(value) > 0 else None


def project_markdown(store, config) -> str:
    p = store.refresh_project()
    origin = (f"Settings version {p.settings_version}: edited here (or with `rlhf app settings`), so they win over "
              f"the app's config at the next start." if p.settings_version else
              "These come from the app's config (`--config`, `--k`, `--reviewers-per-item`, `--guideline`) until "
              "they are edited here.")
    return (f"**Project** `{p.name}` · K = {p.k} replies per prompt · {p.reviewers_per_item} reviewers per item · "
            f"guideline version {p.guideline_version} · lease {store.lease_seconds:g} s · gold rate {p.gold_rate:.0%} "
            f"· policy `{config.model}`\n\n{origin} Another project runs with `--project NAME`.")


def save_settings(store, guideline: str, k, reviewers_per_item, lease_seconds, gold_rate, gold_threshold,
                  agreement_threshold, by=None) -> str:
    """The Project tab's Save: only what changed is written (versioned and audited by the store)."""
    def whole(x):
        return int(x) if x is not None and float(x) == int(x) else x

    changed = store.update_settings({"guideline": guideline or "", "k": whole(k), "reviewers_per_item":
                                     whole(reviewers_per_item), "lease_seconds": lease_seconds, "gold_rate": gold_rate,
                                     "gold_threshold": gold_threshold, "agreement_threshold": agreement_threshold}, by)
    if not changed:
        return "Nothing changed."
    return "Saved: " + "; ".join(f"{name} {before!r} → {after!r}" if name != "guideline" else "guideline"
                                 for name, (before, after) in changed.items()) + "."


def gold_rows(store) -> list[list]:
    """The Gold tab's table: item, known ranks by reply, the prompt's start."""
    from sqlalchemy import select

    from feedback_app.models import Item

    gold = store.gold_items()
    with store.sessions() as s:
        prompts = {item.id: item.prompt_row.prompt for item in s.scalars(select(Item).where(Item.id.in_(list(gold))))}
    return [[item_id, ", ".join(f"reply {p + 1}: {r}" for p, r in enumerate(ranks)),
             _short(prompts.get(item_id))] for item_id, ranks in gold.items()]


def _short(prompt, width: int = 120) -> str:
    text = prompt if isinstance(prompt, str) else (prompt[-1].get("content", "") if prompt else "")
    return text if len(text) <= width else text[:width - 1] + "…"


def item_preview(store, item_id) -> str:
    """An item's prompt and replies, numbered as the gold ranking counts them."""
    if item_id in (None, ""):
        raise UserError("item: give an item id")
    replies = store.item_replies(int(item_id))
    return "\n\n".join(f"**Reply {n}.** {text[:600]}" for n, text in enumerate(replies, 1))


def mark_gold(store, item_id, spec: str, by=None) -> str:
    from feedback_app.gold import parse_gold

    if item_id in (None, ""):
        raise UserError("item: give an item id")
    item_id = int(item_id)
    ranks = parse_gold(spec, len(store.item_replies(item_id)))
    store.mark_gold(item_id, ranks, by)
    rate = store.refresh_project().gold_rate
    note = "" if rate else " The gold rate is 0: set it on the Project tab so reviewers get gold items."
    return f"Item {item_id} is gold (ranks {', '.join(map(str, ranks))}).{note}"


def unmark_gold(store, item_id, by=None) -> str:
    if item_id in (None, ""):
        raise UserError("item: give an item id")
    store.unmark_gold(int(item_id), by)
    return f"Item {int(item_id)} is an ordinary item again."


# ---------------------------------------------------------------------------------------------------


def build_admin_page(svc) -> "gr.Blocks":
    import gradio as gr

    from feedback_app.chatlog import ChatLogFormat
    from feedback_app.pages import dashboard, privacy

    store = svc.store

    def guarded(fn):
        """Errors of the user's making become a message on the page, not an overlay."""
        def run(*args):
            try:
                return fn(*args)
            except (ServiceError, UserError) as exc:
                return f"**Error:** {exc}"
        return run

    def refresh_dashboard(simulated: bool):
        d = dashboard.load_dashboard(store, include_simulated=simulated)
        return (dashboard.summary_markdown(d) + "\n\n**Generation job**: " + job_state(svc.jobs), dashboard.figure(d), dashboard.per_day_table(d), d.flags,
                gr.update(choices=[u for u, _ in users_table(store)]), dashboard.reviewer_rows(d))

    with gr.Blocks(title="Admin: rlhf feedback", analytics_enabled=False) as page:
        gr.Markdown("## Admin · [Ranking page](/review) · [Log out](/logout)")
        with gr.Tabs():
            with gr.Tab("Dashboard", id="dashboard"):
                with gr.Row():
                    include_sim = gr.Checkbox(True, label="Include simulated rankings")
                    refresh_btn = gr.Button("Refresh", size="sm", elem_id="dash-refresh")
                summary = gr.Markdown("", elem_id="dash-summary")
                redaction_line = gr.Markdown("", elem_id="dash-redaction")  # personal data: privacy.py
                agent_line = gr.Markdown("", elem_id="dash-agent")
                per_reviewer = gr.Dataframe(headers=dashboard.REVIEWER_HEADERS, interactive=False, wrap=True,
                                            column_widths=dashboard.REVIEWER_WIDTHS,
                                            label="Reviewers (agreement: share of reply pairs ordered like the "
                                            "other reviewers' consensus, 0.5 = chance)", elem_id="dash-reviewers")
                plot = gr.Plot(label="Plots", elem_id="dash-plot")
                # Full width with set column widths: beside the per-day table the reply column was squashed.
                flags = gr.Dataframe(headers=["when", "reviewer", "item", "reply", "kind", "comment"],
                                     label="Flagged replies", interactive=False, elem_id="dash-flags", wrap=True,
                                     column_widths=["13%", "10%", "6%", "46%", "9%", "16%"], max_height=420)
                per_day = gr.Dataframe(headers=["reviewer", "day", "rankings"], label="Items done per reviewer "
                                       "and day", interactive=False, elem_id="dash-per-day")
                dash_timer = gr.Timer(15.0)  # the dashboard refreshes by itself
            with gr.Tab("Accounts", id="accounts"):
                users = gr.Dataframe(headers=["username", "role", "state"], value=lambda: accounts_rows(store),
                                     interactive=False, label="Accounts", elem_id="users")
                with gr.Row():
                    new_name = gr.Textbox(label="Username", elem_id="new-username")
                    new_password = gr.Textbox(label="Password (8 to 256 characters, hard to guess)", type="password",
                                              elem_id="new-password")
                    new_role = gr.Radio(["reviewer", "admin"], value="reviewer", label="Role", elem_id="new-role")
                    replace = gr.Checkbox(False, label="Reset an existing account (also enables it)")
                add_btn = gr.Button("Save account", variant="primary", elem_id="add-user")
                with gr.Row():
                    disable_name = gr.Textbox(label="Account to disable (its rankings stay)", elem_id="disable-username")
                    disable_btn = gr.Button("Disable account", variant="stop", elem_id="disable-user")
                account_msg = gr.Markdown("", elem_id="account-message")
            with gr.Tab("Audit log", id="audit") as audit_tab:
                audit = gr.Dataframe(headers=["when (UTC)", "admin", "action", "target", "details"],
                                     value=lambda: audit_rows(store), interactive=False, wrap=True,
                                     label="Admin actions, newest first", elem_id="audit-log")
            with gr.Tab("Prompts and generation", id="prompts"):
                gr.Markdown("Import prompts from JSONL (`{\"prompt\": ...}` per line, optional `\"replies\"`: K "
                            "texts) or CSV (a `prompt` column, optional `reply_1`..`reply_K`), or a chat log (a row per "
                            "turn; its columns below). Personal data is replaced by placeholders before anything is "
                            "stored.")
                with gr.Row():
                    upload = gr.File(label="Prompt file", file_types=[".jsonl", ".csv", ".json"], type="filepath",
                                     elem_id="import-file")
                    import_round = gr.Number(0, precision=0, minimum=0, label="Round of imported replies")
                with gr.Accordion("Chat logs (a row per turn): columns and speaker values", open=False):
                    chat_log = gr.Checkbox(False, label="Read the file as a chat log (otherwise: when its first row "
                                                        "has the conversation and speaker columns)", elem_id="chat-log")
                    with gr.Row():
                        chat_fields = [gr.Textbox(label=info.description, placeholder=info.default or "none",
                                                  elem_id="chat-" + name.replace("_", "-"))
                                       for name, info in ChatLogFormat.model_fields.items()]
                import_btn = gr.Button("Import", elem_id="import")
                import_msg = gr.Markdown("", elem_id="import-message")
                gr.Markdown("Generate K candidate replies for every prompt without an item in a round. It runs "
                            "in the background; reviewers keep working.")
                with gr.Row():
                    gen_round = gr.Number(0, precision=0, minimum=0, label="Round")
                    gen_model = gr.Textbox(svc.config.model, label="Policy ('bundled', or a model directory)")
                gen_agent = gr.Checkbox(svc.config.agent_reply_as_candidate, elem_id="generate-agent",
                                        label="An agent's real reply (chat logs) as one of the K candidates, unmarked "
                                              "to reviewers")
                gen_btn = gr.Button("Start generation", elem_id="generate")
                gen_msg = gr.Markdown("", elem_id="generate-message")
                gr.Markdown("Once reviewers have ranked a first batch (8 rankings or more), hand out first the "
                            "open items whose replies the reward model is least sure about: an ensemble of probes "
                            "on the policy's features scores what each item's ranking would teach it (`rlhf app "
                            "prioritise`; what it gains is measured in the README). Run it again as rankings come in.")
                pri_btn = gr.Button("Prioritise open items", elem_id="prioritise")
                pri_msg = gr.Markdown("", elem_id="prioritise-message")
                job_status = gr.Markdown(lambda: job_text(svc.jobs), elem_id="job-status")
                timer = gr.Timer(2.0)
            with gr.Tab("Export", id="export"):
                with gr.Row():
                    export_name = gr.Textbox(label="Name (folder under the server's export directory)",
                                             placeholder="export-YYYYmmdd-HHMMSS", elem_id="export-name")
                    export_reviewers = gr.Dropdown(choices=[u for u, _ in users_table(store)], multiselect=True,
                                                   label="Reviewers (empty = everyone)")
                    export_rounds = gr.Textbox(label="Rounds (e.g. 0,1; empty = all)")
                with gr.Row():
                    export_source = gr.Radio(list(SOURCES), value="all", label="Source")
                    export_flagged = gr.Checkbox(False, label="Keep flagged replies")
                with gr.Row():
                    export_min_gold = gr.Number(None, minimum=0, maximum=1, label="Leave out reviewers below this gold "
                                                "accuracy (blank: keep all)", elem_id="export-min-gold")
                    export_min_agree = gr.Number(None, minimum=0, maximum=1, label="Leave out reviewers below this "
                                                 "agreement (blank: keep all)", elem_id="export-min-agreement")
                export_btn = gr.Button("Export dataset", variant="primary", elem_id="export")
                export_msg = gr.Markdown("", elem_id="export-message")
                export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
            with gr.Tab("Erasure", id="erasure"):
                gr.Markdown("A customer asks to be forgotten: every prompt of one conversation, or of one customer, "
                            "is deleted with its candidates, rankings and flags. The audit log records it under a "
                            "hash, never the id; the earlier exports that held the data are listed.")
                with gr.Row():
                    erase_kind = gr.Radio(list(privacy.ERASE_KINDS), value="customer", label="Erase by",
                                          elem_id="erase-kind")
                    erase_id = gr.Textbox(label="Conversation id or customer identifier, as in the imported chat log",
                                          elem_id="erase-id")
                erase_sure = gr.Checkbox(False, label="I understand this cannot be undone", elem_id="erase-confirm")
                erase_btn = gr.Button("Erase", variant="stop", elem_id="erase")
                erase_msg = gr.Markdown("", elem_id="erase-message")
            with gr.Tab("Gold items", id="gold"):
                gr.Markdown("A gold item has a known ranking. Every reviewer gets the gold items, unannounced, at the "
                            "project's gold rate (Project tab), whatever *reviewers per item* says; their answers "
                            "give each reviewer's gold accuracy on the dashboard. Gold items stay out of exports "
                            "and agreement figures. Type `best=2` (reply 2 is best, the rest tie below) or ranks "
                            "by reply such as `1,3,2,4`. A file imported with a `gold_ranking` or `gold_best` "
                            "field marks its items too.")
                with gr.Row():
                    gold_item = gr.Number(None, precision=0, minimum=1, label="Item id", elem_id="gold-item")
                    gold_spec = gr.Textbox(label="Known ranking ('best=N' or ranks by reply)", elem_id="gold-ranks")
                with gr.Row():
                    gold_show = gr.Button("Show item", size="sm", elem_id="gold-show")
                    gold_mark = gr.Button("Mark as gold", variant="primary", elem_id="gold-mark")
                    gold_unmark = gr.Button("Unmark", variant="secondary", elem_id="gold-unmark")
                gold_msg = gr.Markdown("", elem_id="gold-message")
                gold_preview = gr.Markdown("", elem_id="gold-preview")
                gold_table = gr.Dataframe(headers=["item", "known ranks", "prompt"], value=lambda: gold_rows(store),
                                          interactive=False, wrap=True, label="Gold items", elem_id="gold-table",
                                          column_widths=["8%", "32%", "60%"])
            with gr.Tab("Project", id="project") as project_tab:
                project_info = gr.Markdown(lambda: project_markdown(store, svc.config), elem_id="project-info")
                p0 = store.refresh_project()
                set_guideline = gr.Textbox(p0.guideline, lines=4, label="Guideline reviewers see (a change bumps the "
                                           "guideline version each ranking records)", elem_id="set-guideline")
                with gr.Row():
                    set_k = gr.Number(p0.k, precision=0, minimum=2, maximum=6, label="K (replies per prompt)",
                                      elem_id="set-k")
                    set_rpi = gr.Number(p0.reviewers_per_item, precision=0, minimum=1, maximum=50,
                                        label="Reviewers per item", elem_id="set-rpi")
                    set_lease = gr.Number(store.lease_seconds, minimum=30, label="Lease time (s)", elem_id="set-lease")
                with gr.Row():
                    set_gold_rate = gr.Slider(0, 0.5, p0.gold_rate, step=0.01, label="Gold rate (share of hand-outs)",
                                              elem_id="set-gold-rate")
                    set_gold_min = gr.Slider(0, 1, p0.gold_threshold, step=0.01, label="Flag reviewers below this "
                                             "gold accuracy", elem_id="set-gold-threshold")
                    set_agree_min = gr.Slider(0, 1, p0.agreement_threshold, step=0.01, label="Flag reviewers below "
                                              "this agreement (0.5 = chance)", elem_id="set-agreement-threshold")
                settings_btn = gr.Button("Save settings", variant="primary", elem_id="save-settings")
                settings_msg = gr.Markdown("", elem_id="settings-message")
                gr.Markdown("K can change only once no item of the old K waits for rankings (the reviewer page "
                            "follows each item's own reply count). Each save is audit-logged.")
            demo_admin.demonstrations_tab(svc, lambda request: actor_of(svc, request))  # written replies

        dash_outputs = [summary, plot, per_day, flags, export_reviewers, per_reviewer]
        page.load(refresh_dashboard, [include_sim], dash_outputs, concurrency_id="admin")
        dash_timer.tick(refresh_dashboard, [include_sim], dash_outputs, concurrency_id="admin", show_progress="hidden")
        refresh_btn.click(refresh_dashboard, [include_sim], dash_outputs, concurrency_id="admin")
        include_sim.change(refresh_dashboard, [include_sim], dash_outputs, concurrency_id="admin")

        def admin_of(request: gr.Request):
            """The signed-in admin who clicked (the page is mounted for admins only), for the audit log."""
            return actor_of(svc, request)

        def on_add(name, password, role, reset, request: gr.Request):
            message = guarded(add_account)(store, name, password, role, reset, admin_of(request))
            return (message, accounts_rows(store), ("" if not message.startswith("**Error") else gr.skip()),
                    audit_rows(store))

        def on_disable(name, request: gr.Request):
            message = guarded(disable_account)(store, name, admin_of(request))
            return message, accounts_rows(store), audit_rows(store)

        add_btn.click(on_add, [new_name, new_password, new_role, replace], [account_msg, users, new_password, audit],
                      concurrency_id="admin")
        disable_btn.click(on_disable, [disable_name], [account_msg, users, audit], concurrency_id="admin")
        audit_tab.select(lambda: audit_rows(store), None, audit, concurrency_id="admin")
        def on_import(path, rnd, as_chat_log, conversation_column, turn_column, speaker_column, text_column,
                      customer_column, customer_speaker, agent_speaker, request: gr.Request):
            chat_format = {"conversation_column": conversation_column, "turn_column": turn_column,
                           "speaker_column": speaker_column, "text_column": text_column,
                           "customer_column": customer_column, "customer_speaker": customer_speaker,
                           "agent_speaker": agent_speaker}  # the chat_fields, in ChatLogFormat's order
            return guarded(import_file)(store, path, rnd, admin_of(request), as_chat_log, chat_format)

        def on_generate(rnd, model, agent_reply, request: gr.Request):
            return guarded(start_generation)(svc, rnd, model, admin_of(request), agent_reply)

        import_btn.click(on_import, [upload, import_round, chat_log, *chat_fields], import_msg, concurrency_id="admin")
        gen_btn.click(on_generate, [gen_round, gen_model, gen_agent], gen_msg, concurrency_id="admin")

        def on_prioritise(request: gr.Request):
            return guarded(start_prioritise)(svc, admin_of(request))

        pri_btn.click(on_prioritise, None, pri_msg, concurrency_id="admin")
        timer.tick(lambda: job_text(svc.jobs), None, job_status, concurrency_id="admin", show_progress="hidden")

        def on_export(name, reviewers, rounds, source, flagged, min_gold, min_agree, request: gr.Request):
            try:
                return export(svc, name, reviewers, rounds, source, flagged, admin_of(request), min_gold, min_agree)
            except (ServiceError, UserError) as exc:
                return f"**Error:** {exc}", None

        export_btn.click(on_export, [export_name, export_reviewers, export_rounds, export_source, export_flagged,
                                     export_min_gold, export_min_agree], [export_msg, export_file], concurrency_id="admin")

        # -- gold items and project settings ------------------------------------------------------------
        def on_mark(item_id, spec, request: gr.Request):
            return guarded(mark_gold)(store, item_id, spec, admin_of(request)), gold_rows(store)

        def on_unmark(item_id, request: gr.Request):
            return guarded(unmark_gold)(store, item_id, admin_of(request)), gold_rows(store)

        gold_show.click(guarded(lambda item_id: item_preview(store, item_id)), [gold_item], gold_preview,
                        concurrency_id="admin")
        gold_mark.click(on_mark, [gold_item, gold_spec], [gold_msg, gold_table], concurrency_id="admin")
        gold_unmark.click(on_unmark, [gold_item], [gold_msg, gold_table], concurrency_id="admin")

        def on_settings(guideline, k, rpi, lease, rate, gold_min, agree_min, request: gr.Request):
            message = guarded(save_settings)(store, guideline, k, rpi, lease, rate, gold_min, agree_min,
                                             admin_of(request))
            return message, project_markdown(store, svc.config)

        settings_btn.click(on_settings, [set_guideline, set_k, set_rpi, set_lease, set_gold_rate, set_gold_min,
                                         set_agree_min], [settings_msg, project_info], concurrency_id="admin")
        project_tab.select(lambda: project_markdown(store, svc.config), None, project_info, concurrency_id="admin")
        # -- personal data (feedback_app/pages/privacy.py): redaction notice, agents' replies, erasure ---
        def refresh_privacy(simulated: bool):
            return privacy.redaction_notice(store), privacy.agent_summary(store, simulated)

        for event in (page.load, refresh_btn.click, include_sim.change):
            event(refresh_privacy, [include_sim], [redaction_line, agent_line], concurrency_id="admin")

        def on_erase(kind, identifier, sure, request: gr.Request):
            if not sure:
                return "**Error:** confirm: tick 'I understand this cannot be undone' first", gr.skip(), gr.skip()
            message = guarded(privacy.erase_request)(store, kind, identifier, admin_of(request))
            # the id typed is personal data: cleared from the page once used
            return message, ("" if not message.startswith("**Error") else gr.skip()), False

        erase_btn.click(on_erase, [erase_kind, erase_id, erase_sure], [erase_msg, erase_id, erase_sure],
                        concurrency_id="admin")
    page.queue(default_concurrency_limit=16)
    return page

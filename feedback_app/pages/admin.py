"""The admin pages: dashboard, accounts and roles, prompt import, background candidate generation,
export with filters, and the project's settings.

Handlers are plain functions of the app's ``Services``; ``build_admin_page`` wires them to Gradio.
Generation runs in ``Jobs``' own thread (never in the page's event queue), and the page polls its
progress with a timer, so reviewers' pages never wait for it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from feedback_app.store import ServiceError
from rlhf.errors import UserError

SOURCES = ("all", "human", "simulated")


def users_table(store) -> list[list[str]]:
    return [[a.username, a.role] for a in store.list_users()]


def add_account(store, username: str, password: str, role: str, replace: bool) -> str:
    actor = store.add_user(username, password, role, replace=replace)
    return f"{'Reset' if replace else 'Created'} {actor.role} account '{actor.username}'."


def import_file(store, path: str | None, round: int) -> str:
    from feedback_app.importing import parse_bytes

    if not path:
        raise UserError("file: choose a JSONL or CSV file of prompts first")
    file = Path(path)
    rows = parse_bytes(file.name, file.read_bytes())
    counts = store.import_rows(rows, round=int(round))
    return (f"{file.name}: {counts['prompts_added']} prompts added ({counts['prompts_existing']} already there), "
            f"{counts['items_added']} items with replies added.")


def start_generation(svc, round: int, model: str) -> str:
    job = svc.jobs.start_generation(svc.store, svc.config, int(round), (model or "").strip() or None)
    return f"Generation started (job {job['id']}); progress below."


def job_text(jobs) -> str:
    job = jobs.latest()
    if job is None:
        return "No generation job has run since the server started."
    took = time.time() - job["started_at"]
    if job["state"] == "running":
        return f"Generating: {job['done']} of {job['total'] or '?'} prompts done ({took:.0f} s so far)."
    if job["state"] == "failed":
        return f"Generation failed: {job['error']}"
    r = job["result"] or {}
    return (f"Generation done: {r.get('items_added', 0)} items added for {r.get('prompts', 0)} prompts "
            f"with model '{r.get('model')}', round {r.get('round')}.")


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
           include_flagged: bool) -> tuple[str, str]:
    """Export into the server's export folder; returns a message and a zip of the export to download."""
    from feedback_app.export import ExportFilters, export_path, export_rankings

    out = export_path(svc.export_dir, name)
    filters = ExportFilters(list(reviewers) or None if reviewers else None, parse_rounds(rounds), source,
                            bool(include_flagged))
    manifest = export_rankings(svc.store, out, filters, svc.config.test_fraction)
    archive = shutil.make_archive(str(Path(tempfile.mkdtemp(prefix="rlhf-export-")) / out.name), "zip", out)
    c = manifest["counts"]
    return (f"Exported {c['rankings']} rankings from {c['reviewers']} reviewers to `{out}`: pairwise "
            f"{c['pairwise']['train']} train / {c['pairwise']['test']} test, K-wise {c['kwise']['train']} / "
            f"{c['kwise']['test']}."), archive


def project_markdown(store, config) -> str:
    p = store.project
    return (f"**Project** `{p.name}` · K = {p.k} replies per prompt · {p.reviewers_per_item} reviewers per item · "
            f"guideline version {p.guideline_version} · lease {config.lease_seconds} s · policy `{config.model}`\n\n"
            f"**Guideline:** {p.guideline}\n\nThese come from the app's config (`--config`, `--k`, "
            f"`--reviewers-per-item`, `--guideline`); another project runs with `--project NAME`.")


# ---------------------------------------------------------------------------------------------------


def build_admin_page(svc) -> "gr.Blocks":
    import gradio as gr

    from feedback_app.pages import dashboard

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
        return (dashboard.summary_markdown(d), dashboard.figure(d), dashboard.per_day_table(d), d.flags,
                gr.update(choices=[u for u, _ in users_table(store)]))

    with gr.Blocks(title="Admin: rlhf feedback", analytics_enabled=False) as page:
        gr.Markdown("## Admin · [Ranking page](/review) · [Log out](/logout)")
        with gr.Tabs():
            with gr.Tab("Dashboard", id="dashboard"):
                with gr.Row():
                    include_sim = gr.Checkbox(True, label="Include simulated rankings")
                    refresh_btn = gr.Button("Refresh", size="sm", elem_id="dash-refresh")
                summary = gr.Markdown("", elem_id="dash-summary")
                plot = gr.Plot(label="Plots", elem_id="dash-plot")
                with gr.Row():
                    per_day = gr.Dataframe(headers=["reviewer", "day", "rankings"], label="Items done per reviewer "
                                           "and day", interactive=False, elem_id="dash-per-day")
                    flags = gr.Dataframe(headers=["when", "reviewer", "item", "reply", "kind", "comment"],
                                         label="Flagged replies", interactive=False, elem_id="dash-flags",
                                         wrap=True)
            with gr.Tab("Accounts", id="accounts"):
                users = gr.Dataframe(headers=["username", "role"], value=lambda: users_table(store),
                                     interactive=False, label="Accounts", elem_id="users")
                with gr.Row():
                    new_name = gr.Textbox(label="Username", elem_id="new-username")
                    new_password = gr.Textbox(label="Password (8+ characters)", type="password",
                                              elem_id="new-password")
                    new_role = gr.Radio(["reviewer", "admin"], value="reviewer", label="Role", elem_id="new-role")
                    replace = gr.Checkbox(False, label="Reset an existing account")
                add_btn = gr.Button("Save account", variant="primary", elem_id="add-user")
                account_msg = gr.Markdown("", elem_id="account-message")
            with gr.Tab("Prompts and generation", id="prompts"):
                gr.Markdown("Import prompts from JSONL (`{\"prompt\": ...}` per line, optional `\"replies\"`: K "
                            "texts) or CSV (a `prompt` column, optional `reply_1`..`reply_K`).")
                with gr.Row():
                    upload = gr.File(label="Prompt file", file_types=[".jsonl", ".csv", ".json"], type="filepath",
                                     elem_id="import-file")
                    import_round = gr.Number(0, precision=0, minimum=0, label="Round of imported replies")
                import_btn = gr.Button("Import", elem_id="import")
                import_msg = gr.Markdown("", elem_id="import-message")
                gr.Markdown("Generate K candidate replies for every prompt without an item in a round. It runs "
                            "in the background; reviewers keep working.")
                with gr.Row():
                    gen_round = gr.Number(0, precision=0, minimum=0, label="Round")
                    gen_model = gr.Textbox(svc.config.model, label="Policy ('bundled', or a model directory)")
                gen_btn = gr.Button("Start generation", elem_id="generate")
                gen_msg = gr.Markdown("", elem_id="generate-message")
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
                export_btn = gr.Button("Export dataset", variant="primary", elem_id="export")
                export_msg = gr.Markdown("", elem_id="export-message")
                export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
            with gr.Tab("Project", id="project"):
                gr.Markdown(project_markdown(store, svc.config))

        dash_outputs = [summary, plot, per_day, flags, export_reviewers]
        page.load(refresh_dashboard, [include_sim], dash_outputs, concurrency_id="admin")
        refresh_btn.click(refresh_dashboard, [include_sim], dash_outputs, concurrency_id="admin")
        include_sim.change(refresh_dashboard, [include_sim], dash_outputs, concurrency_id="admin")

        def on_add(name, password, role, reset):
            message = guarded(add_account)(store, name, password, role, reset)
            return message, users_table(store), ("" if not message.startswith("**Error") else gr.skip())

        add_btn.click(on_add, [new_name, new_password, new_role, replace], [account_msg, users, new_password],
                      concurrency_id="admin")
        import_btn.click(lambda path, rnd: guarded(import_file)(store, path, rnd), [upload, import_round],
                         import_msg, concurrency_id="admin")
        gen_btn.click(lambda rnd, model: guarded(start_generation)(svc, rnd, model), [gen_round, gen_model], gen_msg,
                      concurrency_id="admin")
        timer.tick(lambda: job_text(svc.jobs), None, job_status, concurrency_id="admin", show_progress="hidden")

        def on_export(name, reviewers, rounds, source, flagged):
            try:
                return export(svc, name, reviewers, rounds, source, flagged)
            except (ServiceError, UserError) as exc:
                return f"**Error:** {exc}", None

        export_btn.click(on_export, [export_name, export_reviewers, export_rounds, export_source, export_flagged],
                         [export_msg, export_file], concurrency_id="admin")
    page.queue(default_concurrency_limit=16)
    return page

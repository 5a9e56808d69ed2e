"""``rlhf app ...`` and ``rlhf simulate``: light at import (the work is imported inside each command).

  rlhf app serve                      the web server (pages, REST API, /docs, /health) on 127.0.0.1
  rlhf app demo                       make demo: example prompts, an admin, background generation, pages
  rlhf app users add NAME --role R    create an account (password asked, or --password-stdin)
  rlhf app users disable NAME         end an account's sessions and leases (its rankings stay)
  rlhf app import FILE                prompts (JSONL, CSV or a datasets folder; optional replies), or a chat
                                      log (a row per turn); personal data redacted before storage
  rlhf app erase --conversation ID    erase one conversation (or --customer ID); lists exports that held it
  rlhf app redact-store               redact a store written before redaction, in place, with a report
  rlhf app generate                   K candidates per prompt with the policy (bundled by default)
  rlhf app export OUT                 TRL pairwise + K-wise datasets and a manifest
  rlhf app export --prompts FILE      the prompt set PPO reads
  rlhf app export --agent-replies F   agents' reference replies as 'rlhf sft' rows
  rlhf app gold ITEM --best N         mark a gold item (or --ranks 1,3,2,4; --unmark; no ITEM lists them)
  rlhf app prioritise                 hand out first the items the reward model is least sure about
  rlhf app settings --set k=3         show or change the project's settings (versioned, audited)
  rlhf app backup FILE                a backup while the app runs (SQLite file, or pg_dump SQL for PostgreSQL)
  rlhf simulate --url URL ...         scripted reviewers over the REST API
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from rlhf.config import add_config_flags, config_from_args
from rlhf.errors import UserError


def _app_config(args):
    from feedback_app.config import AppConfig

    return config_from_args(AppConfig, args)


def _store(args, setup: bool = True, config_class=None):
    """The command's config (``config_class``, an ``AppConfig`` by default) and the project's store
    (``Store.open``). Only commands that set a store up (``setup``: users add, import, serve, demo) may
    create the database or the project and write the project's settings; the others (generate,
    export, backup, ab) refuse a missing one."""
    from feedback_app.config import AppConfig
    from feedback_app.store import Store

    config = config_from_args(config_class or AppConfig, args)
    return config, Store.open(config, create=setup)


def register(subparsers) -> None:
    from feedback_app.config import (AbCreateConfig, AbReportConfig, AppConfig, DemoConfig, ExportConfig,
                                     SimulateConfig)

    app = subparsers.add_parser("app", help="the feedback app: store, REST API, import, generate, export",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = app.add_subparsers(dest="app_command", metavar="ACTION", required=True)

    def command(name: str, help: str, run, config=AppConfig):
        parser = sub.add_parser(name, help=help, description=help)
        add_config_flags(parser, config)
        parser.set_defaults(run=run)
        return parser

    serve = command("serve", "start the web server (reviewer and admin pages, REST API, /docs, /health)", run_serve)
    serve.add_argument("--no-pages", action="store_true", help="serve the REST API only (no Gradio pages)")

    demo = command("demo", "the app on the embedded defaults: import example prompts, create an admin, "
                           "generate candidates in the background, serve the pages (make demo)", _run_demo,
                   DemoConfig)

    users = sub.add_parser("users", help="manage reviewer and admin accounts")
    usub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", help="create an account (or reset it with --replace)")
    add.add_argument("username")
    add.add_argument("--role", choices=("reviewer", "admin"), default="reviewer")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--replace", action="store_true", help="reset the password and role of an existing account")
    add_config_flags(add, AppConfig)
    add.set_defaults(run=run_users_add)
    ls = usub.add_parser("list", help="list accounts (name, role, active or disabled)")
    add_config_flags(ls, AppConfig)
    ls.set_defaults(run=run_users_list)
    dis = usub.add_parser("disable", help="disable an account: its sessions end at once, its leases go back "
                                          "to the pool, its rankings stay (add --replace enables it again)")
    dis.add_argument("username")
    add_config_flags(dis, AppConfig)
    dis.set_defaults(run=run_users_disable)

    imp = command("import", "import prompts from JSONL, CSV or a datasets folder (rows may carry K replies)",
                  run_import)
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--round", type=int, default=0, help="generation round of imported replies")
    _chat_log_flags(imp)

    command("redact-store", "redact the project's stored prompts, reference replies and candidates in place "
                            "(a store written before redaction, or while it was off)", run_redact_store)

    era = command("erase", "erase one chat-log conversation or one customer: prompts, candidates, rankings; "
                           "audited; lists the earlier exports that held the data", run_erase)
    who = era.add_mutually_exclusive_group(required=True)
    who.add_argument("--conversation", help="conversation id, as in the imported chat log")
    who.add_argument("--customer", help="customer identifier, as in the chat log's --customer-column")

    gen = command("generate", "generate K candidate replies for every prompt without an item in the round",
                  run_generate)
    gen.add_argument("--round", type=int, default=0, help="generation round the new items belong to")

    exp = command("export", "export rankings as TRL datasets (pairwise + K-wise + manifest), or the prompts",
                  run_export, ExportConfig)
    # The usual shapes of three ExportConfig fields, beside their generated --out/--reviewers/--rounds.
    exp.add_argument("cfg:out", nargs="?", metavar="OUT", default=argparse.SUPPRESS,
                     help="output folder for the datasets")
    exp.add_argument("--reviewer", action="append", dest="cfg:reviewers", default=argparse.SUPPRESS, metavar="NAME",
                     help="only this reviewer's rankings (repeat for several)")
    exp.add_argument("--round", action="append", type=int, dest="cfg:rounds", default=argparse.SUPPRESS, metavar="N",
                     help="only this generation round (repeatable)")

    gold = command("gold", "mark an item as gold (a known ranking, mixed unannounced into every reviewer's "
                           "queue), unmark it, or list gold items", run_gold)
    gold.add_argument("item", type=int, nargs="?", help="item id (as in the admin page and the REST API)")
    what = gold.add_mutually_exclusive_group()
    what.add_argument("--ranks", help="known ranks by reply, 1 best, e.g. 1,3,2,4 (ties allowed)")
    what.add_argument("--best", type=int, help="the best reply's number (1..K); the others tie below it")
    what.add_argument("--unmark", action="store_true", help="make the item an ordinary one again")

    pri = command("prioritise", "hand out first the open items whose replies an ensemble of reward probes, fitted "
                                "to the rankings so far, disagrees on most (rankings where they teach most)",
                  run_prioritise)
    pri.add_argument("--members", type=int, default=None, help="probes in the ensemble (default 8)")
    pri.add_argument("--clear", action="store_true", help="set every item back to priority 0 (oldest first)")

    sets = command("settings", "show or change the project's settings (each change is versioned and audited)",
                   run_settings)
    sets.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                      help="guideline, k, reviewers_per_item, lease_seconds, gold_rate (0..0.5), gold_threshold, "
                           "agreement_threshold (repeatable)")

    bak = command("backup", "copy the database while the app runs (SQLite online backup; PostgreSQL: pg_dump, "
                            "restore with psql -f FILE)", run_backup)
    bak.add_argument("dest", metavar="FILE")

    ab = sub.add_parser("ab", help="blind A/B evaluation of two policies (create a set, report win rates)")
    absub = ab.add_subparsers(dest="ab_command", metavar="ACTION", required=True)
    abc = absub.add_parser("create", help="create an A/B set from two `rlhf generate --output` files")
    abc.add_argument("cfg:name", metavar="NAME", help="name of the set")
    add_config_flags(abc, AbCreateConfig)
    abc.set_defaults(run=run_ab_create)
    abr = absub.add_parser("report", help="win rate of policy A with its 95%% interval, and the position bias")
    abr.add_argument("cfg:name", metavar="NAME", help="name or id of the set")
    add_config_flags(abr, AbReportConfig)
    abr.set_defaults(run=run_ab_report)

    sim = subparsers.add_parser("simulate", help="scripted reviewers rank items through the REST API",
                                description="Log in as several reviewer accounts and rank by a rule of the "
                                            "reply text. Everything written is marked simulated.")
    add_config_flags(sim, SimulateConfig)
    # A rule may start with '-' ("-text.count('sorry')", "fewer apologies"); argparse would take it for
    # an option and stop with "expected one argument". This parser has no single-dash options but -h,
    # which is matched before this pattern is consulted, so every other '-word' is read as a value.
    sim._negative_number_matcher = re.compile(r"^-[^-]")
    sim.set_defaults(run=run_simulate)


# ---------------------------------------------------------------------------------------------------


def run_serve(args) -> int:
    import uvicorn

    from feedback_app.server import build_app

    config = _app_config(args)
    app = build_app(config)
    if not args.no_pages:
        from feedback_app.pages import mount_pages

        mount_pages(app)
    print(f"feedback app on http://{config.host}:{config.port}  (pages: /review, /admin; API page: /docs, "
          f"health: /health)", flush=True)
    from feedback_app.security import transport_warning

    warning = transport_warning(config.host, config.behind_proxy)
    if warning:
        print(warning, flush=True)
    # Open pages hold event streams; stop waiting for them a few seconds after Ctrl-C/SIGTERM.
    # Forwarded headers only with --behind-proxy: otherwise any local client could forge its address
    # (the login limits count per address) or claim HTTPS.
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5, proxy_headers=config.behind_proxy,
                forwarded_allow_ips=config.forwarded_allow_ips)
    return 0


def _run_demo(args) -> int:
    from feedback_app.config import DemoConfig
    from feedback_app.pages.demo import run_demo

    return run_demo(config_from_args(DemoConfig, args))


def _read_password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("RLHF_PASSWORD"):
        return os.environ["RLHF_PASSWORD"]
    import getpass

    first = getpass.getpass(f"password for {args.username}: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ")
    return first


def run_users_add(args) -> int:
    password = _read_password(args)
    _, store = _store(args)
    actor = store.add_user(args.username, password, args.role, replace=args.replace)
    print(f"{'reset' if args.replace else 'added'} {actor.role} '{actor.username}'")
    return 0


def run_users_list(args) -> int:
    _, store = _store(args)
    for account in store.accounts_table():
        print(f"{account.username}\t{account.role}\t{'active' if account.active else 'disabled'}")
    return 0


def run_gold(args) -> int:
    from feedback_app.gold import best_reply_ranks, parse_gold

    _, store = _store(args, setup=False)
    if args.item is None:
        for item_id, ranks in store.gold_items().items():
            print(f"{item_id}\t{','.join(map(str, ranks))}")
        return 0
    if args.unmark:
        store.unmark_gold(args.item)
        print(f"item {args.item} is no longer gold")
        return 0
    if args.ranks is None and args.best is None:
        raise UserError("gold: give --ranks R1,R2,... or --best N (or --unmark)")
    k = len(store.item_replies(args.item))
    ranks = best_reply_ranks(args.best, k) if args.best is not None else parse_gold(args.ranks, k)
    store.mark_gold(args.item, ranks)
    print(f"item {args.item} is gold: ranks {','.join(map(str, ranks))}; project gold rate "
          f"{store.refresh_project().gold_rate:.0%}")
    return 0


def run_prioritise(args) -> int:
    from feedback_app.prioritise import clear_priorities, prioritise

    config, store = _store(args, setup=False)  # --model (the policy that wrote the candidates) gives the features
    if args.clear:
        print(f"{clear_priorities(store)} items back to priority 0: items go out oldest first")
        return 0
    print(prioritise(store, config.model, args.members, config.seed).summary())
    return 0


def run_settings(args) -> int:
    _, store = _store(args, setup=False)
    changes = {}
    for pair in args.set:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--set: give NAME=VALUE (got {pair!r})")
        changes[name.strip()] = value if name.strip() == "guideline" else _number(name.strip(), value)
    if changes:
        for name, (before, after) in store.update_settings(changes).items():
            print(f"{name}: {before!r} -> {after!r}")
    p = store.refresh_project()
    for name in store.SETTINGS + ("guideline_version", "settings_version"):
        value = store.lease_seconds if name == "lease_seconds" else getattr(p, name)
        print(f"{name}\t{value}")
    return 0


def _number(name: str, value: str):
    try:
        return int(value) if re.fullmatch(r"\s*-?\d+\s*", value) else float(value)
    except ValueError:
        raise UserError(f"--set {name}: {value!r} is not a number") from None


def run_users_disable(args) -> int:
    _, store = _store(args, setup=False)
    actor = store.disable_user(args.username)
    print(f"disabled {actor.role} '{actor.username}': its sessions ended, its leases were freed")
    return 0


def _chat_log_flags(parser) -> None:
    from feedback_app.chatlog import ChatLogFormat

    group = parser.add_argument_group("chat logs (one row per turn; read when the file has the conversation and "
                                      "speaker columns, or with --chat-log)")
    group.add_argument("--chat-log", action="store_true", help="read FILE as a chat log (CSV or JSONL, a row per turn)")
    for name, info in ChatLogFormat.model_fields.items():
        group.add_argument("--" + name.replace("_", "-"), dest=f"chat:{name}", default=info.default,
                           help=f"{info.description} [default: {info.default}]")


def run_import(args) -> int:
    from feedback_app.chatlog import chat_log_format, import_file, store_import

    config = _app_config(args)
    fmt = chat_log_format({k[5:]: v for k, v in vars(args).items() if k.startswith("chat:")})
    # parse and redact everything before opening the store: a bad line stores nothing
    rows, report = import_file(args.file, fmt, config.redaction, chat_log=args.chat_log)
    _, store = _store(args)
    counts = store_import(store, rows, report, config.redaction, str(args.file), round=args.round)
    counts.pop("redaction")
    print(json.dumps(counts))  # stdout stays one JSON line for scripts; the report goes to stderr
    if config.redaction.enabled:
        print(report.summary(), file=sys.stderr)
        for sample in report.samples:
            print("  sample: " + sample.replace("\n", " / "), file=sys.stderr)
    else:
        print("redaction is OFF for this project (recorded in the audit log): texts were stored as given",
              file=sys.stderr)
    return 0


def run_redact_store(args) -> int:
    from feedback_app.backfill import redact_store

    config, store = _store(args, setup=False)
    if not config.redaction.enabled:
        raise UserError("redaction.enabled: redaction is off in this config; turn it on to redact the store")
    counts, report = redact_store(store, config.redaction)
    print(json.dumps(counts))
    print(report.summary(), file=sys.stderr)
    for sample in report.samples:
        print("  sample: " + sample.replace("\n", " / "), file=sys.stderr)
    return 0


def run_erase(args) -> int:
    from feedback_app.erasure import erase

    _, store = _store(args, setup=False)
    report = erase(store, conversation=args.conversation, customer=args.customer)
    print(json.dumps({"prompts": report.prompts, "items": report.items, "rankings": report.rankings,
                      "demonstrations": report.demonstrations, "exports_with_data": report.exports_with_data,
                      "exports_unreadable": report.exports_unreadable}))
    if report.exports_with_data:
        print("rebuild these exports (and the models trained on them): " + ", ".join(report.exports_with_data),
              file=sys.stderr)
    return 0


def run_generate(args) -> int:
    from feedback_app.generate import generate_candidates

    config, store = _store(args, setup=False)
    result = generate_candidates(store, config, round=args.round)
    print(json.dumps(result))
    return 0


def run_export(args) -> int:
    from feedback_app.config import ExportConfig
    from feedback_app.export import ExportFilters, export_prompts, export_rankings
    from feedback_app.store import Store

    config = config_from_args(ExportConfig, args)
    if not config.prompts and not config.out and not config.agent_replies:
        raise UserError("give an output folder (rlhf app export OUT), --prompts FILE.jsonl or --agent-replies "
                        "FILE.jsonl")
    # The REST API's filters; a bad --source stops here, before the store is opened.
    filters = ExportFilters(config.reviewers, config.rounds, config.source, config.include_flagged,
                            config.min_gold_accuracy, config.min_agreement, config.include_pending_demonstrations)
    store = Store.open(config, create=False)
    if config.agent_replies:
        from feedback_app.export import export_agent_replies

        n = export_agent_replies(store, config.agent_replies)
        print(f"wrote {n} agent reference replies to {config.agent_replies} (rlhf sft --data)")
    if config.prompts:
        n = export_prompts(store, config.prompts)
        print(f"wrote {n} prompts to {config.prompts}")
    if not config.out:
        return 0
    manifest = export_rankings(store, config.out, filters, config.test_fraction,  # audited there, as "cli"
                               min_test_prompts=config.min_test_prompts)
    # the demonstrations written to OUT/sft (accepted ones; what 'rlhf sft --data OUT' trains on) beside the rankings
    print(json.dumps({"out": config.out, **manifest["counts"], "sft": manifest.get("sft")}))
    return 0


def run_backup(args) -> int:
    from feedback_app.backup import backup

    source = backup(_app_config(args), args.dest)
    print(f"backed up {source} to {args.dest}")
    return 0


def run_simulate(args) -> int:
    from feedback_app.config import SimulateConfig
    from feedback_app.simulate import ensure_accounts, simulate
    from rlhf.rules import load_rule

    config = config_from_args(SimulateConfig, args)
    load_rule(config.rule)  # a bad rule stops here, before any account is touched
    password = config.password or os.environ.get("RLHF_SIM_PASSWORD")
    if not password:
        raise UserError("--password: give the accounts' password (or set RLHF_SIM_PASSWORD)")
    config.password = password
    if config.create_accounts:
        admin_password = os.environ.get("RLHF_ADMIN_PASSWORD")
        if not config.admin or not admin_password:
            raise UserError("--create-accounts needs --admin NAME and $RLHF_ADMIN_PASSWORD")
        ensure_accounts(config, admin_password)
    if config.ab:
        from feedback_app.ab_simulate import simulate_ab

        results = simulate_ab(config)
        for r in results:
            print(f"{r.username}: {r.submitted} A/B judgements" + (f", {len(r.errors)} refused" if r.errors else ""))
        print(f"total: {sum(r.submitted for r in results)} simulated A/B judgements")
        return 0
    results = simulate(config)
    for r in results:
        print(f"{r.username}: {r.submitted} rankings{' (flipped rule)' if r.flipped else ''}"
              + (f", {len(r.errors)} refused: {r.errors[0]}" if r.errors else ""))
    print(f"total: {sum(r.submitted for r in results)} simulated rankings")
    return 0


def run_ab_create(args) -> int:
    from feedback_app.ab import pair_replies, read_replies_file
    from feedback_app.ab_store import AbService
    from feedback_app.config import AbCreateConfig
    from feedback_app.store import Store

    config = config_from_args(AbCreateConfig, args)
    # Parse both files before opening the store: a bad line stores nothing.
    items = pair_replies(read_replies_file(config.replies_a), read_replies_file(config.replies_b),
                         f"{config.replies_a} / {config.replies_b}")
    store = Store.open(config, create=False)
    admin = _cli_admin()
    info = AbService(store).create_set(admin, config.name, config.policy_a, config.policy_b, items,
                                       config.judgements_per_item)
    print(json.dumps({"set_id": info.set_id, "name": info.name, "items": info.items}))
    return 0


def run_ab_report(args) -> int:
    from feedback_app.ab_store import AbService
    from feedback_app.config import AbReportConfig

    config, store = _store(args, setup=False, config_class=AbReportConfig)
    report = AbService(store).report(_cli_admin(), config.name)
    if config.output:
        from feedback_app.files import path_error, prepare_parent

        try:
            prepare_parent(config.output).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        except OSError as exc:
            raise path_error(config.output, exc) from None
        AbService(store).report_written(_cli_admin(), config.name, str(config.output))
    wr, pb = report.win_rate, report.position_bias
    rate = "n/a" if wr.win_rate_a is None else f"{wr.win_rate_a:.3f} [{wr.ci_low:.3f}, {wr.ci_high:.3f}]"
    print(json.dumps({"name": report.name, "policy_a": report.policy_a, "policy_b": report.policy_b,
                      "items": report.items, "open": report.open}))
    print(f"{report.policy_a} vs {report.policy_b}: {wr.wins_a} wins, {wr.wins_b} losses, "
          f"{wr.ties} ties, {wr.both_bad} both bad; win rate of {report.policy_a} {rate} "
          f"({int(wr.confidence * 100)}% {wr.method})")
    lc = report.length_controlled
    if lc and lc["length_controlled"] is not None:
        low, high = lc["lc_interval"]
        print(f"length-controlled win rate of {report.policy_a} {lc['length_controlled']:.3f} [{low:.3f}, {high:.3f}] "
              f"(raw, ties 1/2: {lc['raw']:.3f}; length coefficient {lc['length_coefficient']:+.2f}, > 0: longer wins)")
    elif lc:
        print(f"length-controlled win rate: n/a ({lc['note']})")
    share = "n/a" if pb.left_share is None else f"{pb.left_share:.3f} (p={pb.p_value:.3g})"
    print(f"position bias: left side won {share}; policy A shown left in {pb.a_on_left} of {pb.judgements}")
    return 0


def _cli_admin():
    """Whoever runs the CLI on the server has the database file, hence admin rights over it."""
    from feedback_app.auth import Actor

    return Actor(0, "cli", "admin")

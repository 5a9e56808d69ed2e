"""Chat logs in, personal data out (issue 15): the shipped synthetic sample, whose planted personal data
must reach neither the database (file and WAL), an export, nor the prompts file PPO reads; the
store side on real SQLite and PostgreSQL; bad chat-log files as one line naming file, line and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

from feedback_app.chatlog import ChatLogFormat, conversation_rows, read_conversations
from feedback_app.redact import RedactionReport, RedactionSettings
from feedback_app.store import conversation_key
from tests.conftest import REPO, run_cli
from tests.feedback.helpers import new_store
from tests.feedback.test_cli import assert_user_error

SAMPLE = REPO / "configs" / "chatlogs" / "contact_centre_sample.csv"
ORDER = r"{ORDER_ID: 'ORD-\d{6}'}"
# Every personal value planted in the sample (and the raw ids, which are stored only as hashes).
PLANTED = ["Maria", "Kowalczyk", "maria.kowalczyk@example.com", "7946 0321", "27 Elmfield Road", "ORD-204118",
           "ORD-204957", "4539 1488 0343 6467", "301-7788", "Priya", "Tom", "Jürgen", "Oberhauser",
           "Lindenstraße 14", "901820", "j.oberhauser@example.de", "GB33BUKB20201555555555", "Daniel",
           "O'Connor", "07700 900 461", "Sam", "CUST-77120", "CUST-80455", "CUST-91002", "CUST-66031", "C-1001"]


def app(db: Path, *args: str):
    return run_cli("app", *args, "--database-url", f"sqlite:///{db}", "--k", "2", "--project", "p")


def leaks(data: bytes | str) -> list[str]:
    """The planted values found in ``data`` as whole words ("Sam", not "SameSite"), also JSON-escaped."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return [value for value in PLANTED
            if any(re.search(r"(?<!\w)" + re.escape(form) + r"(?!\w)", text)
                   for form in {value, json.dumps(value)[1:-1]})]


def test_sample_import_keeps_personal_data_out_of_the_database_exports_and_prompts_file(tmp_path):
    db = tmp_path / "fb.db"
    result = app(db, "import", str(SAMPLE), "--customer-column", "customer_id", "--redaction.patterns", ORDER)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["prompts_added"] == 10  # one per customer message (consecutive ones joined)
    assert "redacted" in result.stderr and "sample: Hi, my name is <PERSON_1>." in result.stderr

    # Rank every item through the store (as reviewers would), then export both ways.
    store = new_store(f"sqlite:///{db}", k=2)
    reviewer = store.add_user("rev", "plum-otter-41", "reviewer")
    for prompt_id, prompt in store.prompts_needing_candidates(0):
        store.add_candidates(prompt_id, 0, [f"Reply A to {prompt_id}", f"Reply B to {prompt_id}"], "m")
    while (item := store.next_item(reviewer)) is not None:
        ranks = [1 if c.text.startswith("Reply A") else 2 for c in item.candidates]
        store.submit_ranking(reviewer, item.item_id, ranks, f"key-{item.item_id}")
    assert app(db, "export", str(tmp_path / "out")).returncode == 0
    assert app(db, "export", "--prompts", str(tmp_path / "prompts.jsonl")).returncode == 0

    files = [db, *db.parent.glob("fb.db-*"), tmp_path / "prompts.jsonl", *(tmp_path / "out").rglob("*")]
    checked = [f for f in files if f.is_file()]
    assert len(checked) >= 5, checked
    for f in checked:
        assert leaks(f.read_bytes()) == [], f
    # The privacy unit (`rlhf reward train --dp`) is the customer, as a salted hash: CUST-77120's two
    # conversations (four prompts) are one unit.
    from collections import Counter

    import datasets

    kwise = datasets.load_from_disk(str(tmp_path / "out" / "kwise"))
    units = Counter(u for split in kwise.values() for u in split["unit"])
    assert all(u.startswith("customer:") and "CUST" not in u for u in units) and max(units.values()) == 4
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert prompts[0] == [{"role": "user", "content": "Hi, my name is <PERSON_1>. My order <ORDER_ID_1> still says "
                                                      "processing after a week."}]


def test_conversations_become_prompts_with_the_agents_reply_on_sqlite_and_postgresql(database_url):
    report = RedactionReport()
    settings = RedactionSettings(patterns={"ORDER_ID": r"ORD-\d{6}"})
    rows = conversation_rows(read_conversations(str(SAMPLE), SAMPLE.read_bytes(),
                                                ChatLogFormat(customer_column="customer_id")), settings, report)
    assert report.counts["EMAIL"] == 4 and report.counts["CARD"] == 1 and report.counts["IBAN"] == 1
    store = new_store(database_url, k=2)
    assert store.import_rows(rows)["prompts_added"] == 10
    with store.sessions() as s:
        from sqlalchemy import select

        from feedback_app.models import Project, PromptRow

        salt = s.scalar(select(Project.redaction_salt))
        stored = s.execute(select(PromptRow.prompt, PromptRow.reference_reply, PromptRow.conversation_key,
                                  PromptRow.customer_key).order_by(PromptRow.id)).all()
    first, second = stored[0], stored[1]
    assert first.reference_reply == ("Hello <PERSON_1>, I'm <PERSON_2> from the support team. Let me look at "
                                     "<ORDER_ID_1> for you.")
    assert second.prompt[-1]["content"] == "Thanks. You can also reach me at <EMAIL_1> or <PHONE_1>."
    assert first.conversation_key == conversation_key(salt, "C-1001") != conversation_key("other", "C-1001")
    # C-1001 and C-1004 are the same customer: found together by the customer's hash
    assert sum(r.customer_key == conversation_key(salt, "CUST-77120") for r in stored) == 4
    last = stored[-1]
    assert last.prompt[-1]["content"] == "Perfect.\nOh and my new number is <PHONE_1>."  # two turns joined
    assert leaks(repr(stored)) == []


def test_bad_chat_logs_are_one_line_naming_file_line_and_field(tmp_path):
    db = tmp_path / "fb.db"
    log = tmp_path / "log.csv"
    header = "conversation_id,turn,speaker,text\n"
    cases = [
        ("conv,turn,speaker,text\nc1,1,customer,hi\n", ["--chat-log"], ["log.csv:1", "conversation_id: no such column"]),
        (header + "c1,1,customer,hi\nc1,2,,hello\n", [], ["log.csv:3", "speaker: missing"]),
        (header + "c1,1,customer,hi\nc1,2,bot,hello\n", [], ["log.csv:3", "'bot' is neither"]),
        (header + "c1,2,customer,hi\nc1,1,agent,hello\n", [], ["log.csv:3", "turn: turn 1 of conversation 'c1' comes "
                                                                           "after turn 2"]),
        (header + "c1,1,customer,hi\nc1,1,agent,hello\n", [], ["log.csv:3", "duplicated (first at", "log.csv:2"]),
        (header + "c1,1,customer,hi\nc2,1,agent,hello\n", [], ["log.csv:3", "conversation 'c2' has no customer turn"]),
        (header + "c1,1,customer,\n", [], ["log.csv:2", "text: empty turn"]),
        (header + "c1,x,customer,hi\n", [], ["log.csv:2", "turn: 'x' is not a whole number"]),
        (header + "c1,1,customer,hi\n", ["--redaction.patterns", "{ORDER_ID: 'ORD-(\\d'}"],
         ["redaction.patterns", "ORDER_ID: not a valid regular expression"]),
        (header, ["--chat-log"], ["log.csv: no turns found"]),
    ]
    for content, flags, fragments in cases:
        log.write_text(content)
        assert_user_error(app(db, "import", str(log), *flags), *fragments)
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"conversation_id": "c1", "turn": 1, "speaker": "customer", "text": "hi"}\n'
                     '{"conversation_id": "c1", "turn": 2, "speaker": "agent"}\n')
    assert_user_error(app(db, "import", str(jsonl)), "log.jsonl:2", "text: no such field")
    assert not db.exists() or new_store(f"sqlite:///{db}", k=2).prompts_needing_candidates(0) == []


def _imported_and_ranked(database_url):
    rows = conversation_rows(read_conversations(str(SAMPLE), SAMPLE.read_bytes(),
                                                ChatLogFormat(customer_column="customer_id")),
                             RedactionSettings(patterns={"ORDER_ID": r"ORD-\d{6}"}), RedactionReport())
    store = new_store(database_url, k=2, reviewers_per_item=1)
    store.import_rows(rows)
    reviewer = store.add_user("rev", "plum-otter-41", "reviewer")
    for prompt_id, _ in store.prompts_needing_candidates(0):
        store.add_candidates(prompt_id, 0, [f"Reply A to {prompt_id}", f"Reply B to {prompt_id}"], "m")
    while (item := store.next_item(reviewer)) is not None:
        store.submit_ranking(reviewer, item.item_id, [1 if c.text.startswith("Reply A") else 2
                                                      for c in item.candidates], f"key-{item.item_id}")
    return store


def test_erasing_a_customer_removes_their_conversations_and_names_the_exports_on_sqlite_and_postgresql(
        database_url, tmp_path):
    from sqlalchemy import func, select

    from feedback_app.erasure import erase
    from feedback_app.export import ExportFilters, export_rankings
    from feedback_app.models import Candidate, Item, PromptRow, RankingRow

    from feedback_app import demonstrations

    store = _imported_and_ranked(database_url)
    reviewer = next(a for a in store.list_users() if a.username == "rev")
    with store.sessions() as s:  # a reviewer's reply to C-1001's first prompt: erased with it
        first_item = s.scalar(select(Item.id).order_by(Item.id))
    demonstrations.add(store, reviewer, first_item, "Let me check that order for you right away.")
    out = tmp_path / "export-1"
    manifest = export_rankings(store, out, ExportFilters(), test_fraction=0.0)
    store.audit(None, "export", str(out), manifest["counts"])
    # an export that failed after its audit entry (no folder) is neither a hit nor "unreadable"
    failed = store.audit(None, "export", str(tmp_path / "export-failed"), {})
    store.audit(None, "export failed", str(tmp_path / "export-failed"), {"audit_id": failed, "error": "disk full"})
    store.audit(None, "export", str(tmp_path / "export-moved"), {})  # audited, its folder moved since

    report = erase(store, customer="CUST-77120")  # conversations C-1001 (3 prompts) and C-1004 (1 prompt)
    assert (report.prompts, report.items, report.rankings, report.demonstrations) == (4, 4, 4, 1)
    assert report.exports_with_data == [str(out)] and report.exports_unreadable == [str(tmp_path / "export-moved")]
    with store.sessions() as s:
        counts = [s.scalar(select(func.count()).select_from(t)) for t in (PromptRow, Item, Candidate, RankingRow)]
    assert counts == [6, 6, 12, 6]
    entry = next(e for e in store.audit_log() if e.action == "erase")
    assert entry.detail["prompts"] == 4 and "CUST-77120" not in json.dumps([entry.target, entry.detail])

    # an export that held only a demonstration of the erased data is named by its manifest's demonstration_ids
    from feedback_app.erasure import affected_exports

    sft_only = tmp_path / "export-sft"
    sft_only.mkdir()
    (sft_only / "manifest.json").write_text(json.dumps({"ranking_ids": [], "demonstration_ids": [41]}))
    store.audit(None, "export", str(sft_only), {})
    assert affected_exports(store, [], [41])[0] == [str(sft_only)] and affected_exports(store, [], [42])[0] == []

    report = erase(store, conversation="C-1002")  # its two prompts, also in that export
    assert (report.prompts, report.rankings) == (2, 2) and report.exports_with_data == [str(out)]
    from rlhf.errors import UserError

    try:
        erase(store, conversation="C-1002")
        raise AssertionError("erasing twice must say there is nothing left")
    except UserError as exc:
        assert "no prompts of conversation 'C-1002'" in str(exc)


def test_rlhf_app_erase_command(tmp_path):
    db = tmp_path / "fb.db"
    assert app(db, "import", str(SAMPLE), "--customer-column", "customer_id", "--redaction.patterns",
               ORDER).returncode == 0
    result = app(db, "erase", "--conversation", "C-1003")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"prompts": 2, "items": 0, "rankings": 0, "demonstrations": 0,
                                         "exports_with_data": [], "exports_unreadable": []}
    assert_user_error(app(db, "erase", "--customer", "CUST-00000"), "no prompts of customer 'CUST-00000'")
    assert leaks(db.read_bytes()) == []


def test_rest_import_of_a_chat_log_is_redacted_before_storage(tmp_path):
    from fastapi.testclient import TestClient

    from feedback_app.server import build_app
    from tests.feedback.test_api import login, make_config, upload

    config = make_config(tmp_path, redaction={"patterns": {"ORDER_ID": r"ORD-\d{6}"}})
    app_ = build_app(config)
    app_.state.services.store.add_user("admin", "admin-pass-1", "admin")
    with TestClient(app_) as client:
        admin = login(client, "admin", "admin-pass-1")
        resp = upload(client, admin, "log.csv", SAMPLE.read_text())
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["prompts_added"] == 10 and body["redaction"]["counts"]["EMAIL"] == 4
        assert leaks(json.dumps(body)) == []
        bad = upload(client, admin, "log.csv", "conversation_id,turn,speaker,text\nc1,1,,hi\n")
        assert bad.status_code == 400 and "log.csv:2: speaker: missing" in bad.text
    db = config.sqlite_path()
    assert leaks(db.read_bytes()) == [] and leaks(Path(f"{db}-wal").read_bytes() if Path(f"{db}-wal").exists()
                                                  else b"") == []


def test_a_store_written_before_redaction_is_redacted_in_place_on_sqlite_and_postgresql(database_url):
    from sqlalchemy import select

    from feedback_app.backfill import redact_store
    from feedback_app.models import Candidate, PromptRow, RankingRow
    from feedback_app.store import ImportRow
    from rlhf.schema import prompt_key

    store = new_store(database_url, k=2, reviewers_per_item=1)
    raw = [{"role": "user", "content": "Hi, I'm Maria Kowalczyk, mail maria.kowalczyk@example.com please"}]
    store.import_rows([ImportRow(raw, ["Hello Maria, we wrote to maria.kowalczyk@example.com", "Sure, call 07700 900 461"],
                                 reference="Thanks Maria, done."),
                       ImportRow("Where is order ORD-204118?", ["It ships today.", "Tracking at https://track.example.com/parcel/1"])])
    reviewer = store.add_user("rev", "plum-otter-41", "reviewer")
    item = store.next_item(reviewer)
    store.submit_ranking(reviewer, item.item_id, [1, 2], "key-1")

    with store.sessions() as s:
        ranks_before = s.scalar(select(RankingRow.ranks))
    settings = RedactionSettings(patterns={"ORDER_ID": r"ORD-\d{6}"})
    counts, report = redact_store(store, settings)
    assert counts == {"prompts_changed": 2, "candidates_changed": 3, "prompt_keys_kept": 0}
    assert report.counts == {"PERSON": 3, "EMAIL": 2, "PHONE": 1, "ORDER_ID": 1, "URL": 1}
    with store.sessions() as s:
        prompts = s.execute(select(PromptRow.prompt, PromptRow.prompt_key, PromptRow.reference_reply)
                            .order_by(PromptRow.id)).all()
        texts = list(s.scalars(select(Candidate.text).order_by(Candidate.id)))
        rankings = s.scalar(select(RankingRow.ranks))
    assert prompts[0].prompt == [{"role": "user", "content": "Hi, I'm <PERSON_1>, mail <EMAIL_1> please"}]
    assert prompts[0].prompt_key == prompt_key(prompts[0].prompt)
    assert prompts[0].reference_reply == "Thanks <PERSON_1>, done."
    assert prompts[1].prompt == "Where is order <ORDER_ID_1>?"
    assert texts == ["Hello <PERSON_1>, we wrote to <EMAIL_1>", "Sure, call <PHONE_1>", "It ships today.",
                     "Tracking at <URL_1>"]
    assert rankings == ranks_before and sorted(rankings) == [1, 2]  # rankings stay with their replies
    assert redact_store(store, settings)[0] == {"prompts_changed": 0, "candidates_changed": 0, "prompt_keys_kept": 0}
    assert any(e.action == "redaction backfill" and e.detail["prompts_changed"] == 2 for e in store.audit_log())

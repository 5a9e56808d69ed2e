"""The real `rlhf app` and `rlhf simulate` commands: a user's session, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets

from tests.conftest import free_port, run_cli, start_app, stop_app
from tests.feedback.helpers import new_store


def app(db, *args, stdin: str | None = None, **kw):
    flags = ["--database-url", f"sqlite:///{db}", "--k", "2", "--reviewers-per-item", "2", "--project", "p"]
    if stdin is not None:
        return subprocess.run([sys.executable, "-m", "rlhf.cli", "app", *args, *flags], input=stdin,
                              capture_output=True, text=True, timeout=300)
    return run_cli("app", *args, *flags, **kw)


def prompts_in(db) -> int:
    store = new_store(f"sqlite:///{db}", k=2)
    return store.progress(store.add_user("counter", "plum-otter-41", "admin")).totals["prompts"]


def assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_import_errors_name_the_line_and_store_nothing(tmp_path):
    db = tmp_path / "fb.db"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "broken"\n')
    assert_user_error(app(db, "import", str(bad)), "bad.jsonl:2", "malformed JSON")
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
    assert_user_error(app(db, "import", str(bad)), "bad.jsonl:2", "no 'prompt' or 'messages'")
    bad.write_text('{"prompt": "fine", "replies": ["one", "two", "three"]}\n')
    assert_user_error(app(db, "import", str(bad)), "bad.jsonl:1", "exactly K=2")
    csv = tmp_path / "bad.csv"
    csv.write_text("question\nhello\n")
    assert_user_error(app(db, "import", str(csv)), "bad.csv:1", "'prompt' column")
    csv.write_text('prompt\nhello\n"[{""role"": ""user""}]"\n')
    assert_user_error(app(db, "import", str(csv)), "bad.csv:3", "content")
    assert_user_error(app(db, "import", str(tmp_path / "missing.jsonl")), "missing.jsonl: file not found")
    assert prompts_in(db) == 0


def test_import_csv_jsonl_and_dataset_folder(tmp_path):
    db = tmp_path / "fb.db"
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,reply_1,reply_2\nWhere is my parcel?,It is late.,It arrives today.\nRefund?,,\n")
    result = app(db, "import", str(csv))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"prompts_added": 2, "prompts_existing": 0, "items_added": 1,
                                         "items_existing": 0}
    folder = tmp_path / "ds"
    datasets.Dataset.from_list([{"prompt": "Refund?"}, {"prompt": "New one"}]).save_to_disk(str(folder))
    assert json.loads(app(db, "import", str(folder)).stdout)["prompts_added"] == 1
    assert prompts_in(db) == 3


def test_users_generate_export_and_backup(tmp_path, tiny_model_dir):
    db = tmp_path / "fb.db"
    assert app(db, "users", "add", "admin", "--role", "admin", "--password-stdin", stdin="admin-pass-1\n").returncode == 0
    assert_user_error(app(db, "users", "add", "admin", "--password-stdin", stdin="admin-pass-1\n"), "already exists")
    assert_user_error(app(db, "users", "add", "bob", "--password-stdin", stdin="short\n"), "password")
    (tmp_path / "p.jsonl").write_text('{"prompt": "Where is my order?"}\n{"prompt": "Can I pay later?"}\n')
    assert app(db, "import", str(tmp_path / "p.jsonl")).returncode == 0
    result = app(db, "generate", "--model", str(tiny_model_dir), "--max-new-tokens", "4", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["items_added"] == 2
    assert_user_error(app(db, "export", str(tmp_path / "out")), "no rankings match")
    result = app(db, "export", "--prompts", str(tmp_path / "ppo.jsonl"))
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "ppo.jsonl").read_text().splitlines()) == 2
    assert app(db, "backup", str(tmp_path / "copy.db")).returncode == 0
    assert prompts_in(tmp_path / "copy.db") == 2
    assert_user_error(app(db, "backup", str(tmp_path / "copy.db")), "already exists")
    assert_user_error(run_cli("app", "backup", "x.db", "--database-url", "postgresql://u@h/db"), "pg_dump")
    assert_user_error(run_cli("app", "export", str(tmp_path / "o"), "--database-url", f"sqlite:///{db}", "--k", "9"),
                      "field 'k'")


def test_simulate_ranks_through_the_api_and_export_trains_the_reward_model_format(tmp_path):
    db = tmp_path / "fb.db"
    url = f"sqlite:///{db}"
    store = new_store(url, k=2, reviewers_per_item=2)
    store.add_user("admin", "admin-pass-1", "admin")
    rows = "\n".join(json.dumps({"prompt": f"q{i}", "replies": ["no", "yes indeed, gladly"]}) for i in range(6))
    (tmp_path / "p.jsonl").write_text(rows + "\n")
    assert app(db, "import", str(tmp_path / "p.jsonl")).returncode == 0
    assert_user_error(run_cli("simulate", "--rule", "len(text", "--password", "x"), "not a Python expression")
    port = free_port()
    server = start_app(["app", "serve", "--database-url", url, "--k", "2", "--reviewers-per-item", "2",
                        "--project", "p"], port, tmp_path / "server.log")
    try:
        assert f"http://127.0.0.1:{port}" in server.output()  # the app prints its address
        result = run_cli("simulate", "--url", f"http://127.0.0.1:{port}", "--accounts", "s1,s2",
                         "--password", "sim-otter-41", "--create-accounts", "--admin", "admin",
                         "--rule", "len(text)", "--disagreement", "0.5", "--seed", "1",
                         env={"RLHF_ADMIN_PASSWORD": "admin-pass-1"})
        assert result.returncode == 0, result.stderr
        assert "total: 12 simulated rankings" in result.stdout
        assert_user_error(run_cli("simulate", "--url", f"http://127.0.0.1:{port}", "--accounts", "s1",
                                  "--password", "wrongpass1", "--rule", "len(text)"), "login as 's1' failed")
    finally:
        stop_app(server)
    out = tmp_path / "export"
    result = app(db, "export", str(out), "--source", "simulated")
    assert result.returncode == 0, result.stderr
    pairs = datasets.load_from_disk(str(out / "pairwise"))
    rows = pairs["train"].to_list() + pairs["test"].to_list()
    by_reviewer = {r["reviewer"]: set() for r in rows}
    for r in rows:
        by_reviewer[r["reviewer"]].add(r["chosen"])
    # one account uses the rule (longer wins), the other the flipped rule (shorter wins)
    assert sorted(map(sorted, by_reviewer.values())) == [["no"], ["yes indeed, gladly"]]
    assert len(rows) == 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["simulated_rankings"] == 12

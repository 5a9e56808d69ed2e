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


def test_simulated_labels_do_not_depend_on_which_account_ranked_what(tmp_path):
    """Three accounts race for the items of two identical fresh apps (real servers) with one seed: the
    noise is drawn per item, in the order of the replies' text, so both runs give every item the same
    ranks, whoever ranked it and in whatever order it was shown."""
    from feedback_app.config import SimulateConfig
    from feedback_app.simulate import simulate
    from tests.feedback.helpers import items

    accounts = ["s1", "s2", "s3"]
    labels = []
    for run in ("first", "second"):
        url = f"sqlite:///{tmp_path / run}.db"
        store = new_store(url, k=2, reviewers_per_item=1)
        items(store, [(f"q{i}", ["x" * 10, "x" * 11]) for i in range(16)])
        actors = [store.add_user(name, "sim-otter-41") for name in accounts]
        port = free_port()
        server = start_app(["app", "serve", "--database-url", url, "--k", "2", "--reviewers-per-item", "1",
                            "--project", "p"], port, tmp_path / f"{run}.log")
        try:
            results = simulate(SimulateConfig(url=f"http://127.0.0.1:{port}", accounts=accounts, password="sim-otter-41",
                                              rule="len(text)", noise=5.0, seed=3))
        finally:
            stop_app(server)
        assert sum(r.submitted for r in results) == 16 and not any(r.errors for r in results)
        chosen = {}
        for actor in actors:
            for ranking in store.my_rankings(actor):
                texts, stored = store.item_replies(ranking.item_id), sorted(ranking.candidate_ids)
                chosen[ranking.item_id] = texts[stored.index(ranking.candidate_ids[ranking.ranks.index(1)])]
        labels.append(chosen)
    assert len(labels[0]) == 16 and labels[0] == labels[1]
    assert 0 < sum(text == "x" * 10 for text in labels[0].values()) < 16  # the noise (std 5 on 1 char) acted

"""Bad input to the real `rlhf app ...` commands: one line naming the file, line or field, exit 2,
nothing stored; and the README's commands as printed.

Each case here was a traceback (exit 1), or quietly worked on a new empty database, before.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

PASSWORD = "quartz-lantern-velvet-91"


def flags(db: Path, *extra: str) -> list[str]:
    return ["--database-url", f"sqlite:///{db}", "--project", "p", "--k", "2", *extra]


def assert_user_error(result, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def prompts_in(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM prompts").fetchone()[0]


@pytest.fixture
def store_db(tmp_path) -> Path:
    """A database set up the way users do it: `rlhf app import` of two prompts with replies."""
    db = tmp_path / "fb.db"
    rows = tmp_path / "ok.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "replies": ["no", "yes"]}) + "\n" for i in range(2)))
    result = run_cli("app", "import", str(rows), *flags(db))
    assert result.returncode == 0, result.stderr
    return db


def test_import_refuses_messages_that_are_not_a_list(tmp_path, store_db):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"messages": 5}\n')
    assert_user_error(run_cli("app", "import", str(bad), *flags(store_db)), "bad.jsonl:2", "'messages'", "int")
    assert prompts_in(store_db) == 2


def test_import_refuses_a_nul_byte_and_says_so(tmp_path, store_db):
    csv = tmp_path / "nul.csv"
    csv.write_bytes(b"prompt\nfine\nhello\x00world\n")
    assert_user_error(run_cli("app", "import", str(csv), *flags(store_db)), "nul.csv:3", "NUL", "'prompt'")
    jsonl = tmp_path / "nul.jsonl"
    jsonl.write_text(json.dumps({"prompt": "ok", "replies": ["a\u0000", "b"]}) + "\n")
    assert_user_error(run_cli("app", "import", str(jsonl), *flags(store_db)), "nul.jsonl:1", "NUL", "'replies'")
    assert prompts_in(store_db) == 2


def test_a_database_under_a_regular_file(tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    rows = tmp_path / "ok.jsonl"
    rows.write_text('{"prompt": "q"}\n')
    db = blocker / "fb.db"
    line = assert_user_error(run_cli("app", "import", str(rows), *flags(db)), str(blocker), "not a folder")
    assert "Traceback" not in line
    assert blocker.read_text() == "not a folder"


def test_export_to_an_existing_file_or_an_unwritable_place(tmp_path, store_db):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    assert_user_error(run_cli("app", "export", str(target), *flags(store_db)), str(target), "exists")
    assert target.read_text() == "keep me"
    assert_user_error(run_cli("app", "export", "/proc/x", *flags(store_db)), "/proc/x")
    assert_user_error(run_cli("app", "export", str(tmp_path / ".."), *flags(store_db)), "not a valid export name")
    assert_user_error(run_cli("app", "export", "--prompts", "/proc/p.jsonl", *flags(store_db)), "/proc/p.jsonl")


def test_backup_to_an_unwritable_place(tmp_path, store_db):
    assert_user_error(run_cli("app", "backup", "/proc/b.db", *flags(store_db)), "/proc/b.db")
    assert_user_error(run_cli("app", "backup", str(tmp_path / "ok.jsonl" / "b.db"), *flags(store_db)),
                      "ok.jsonl", "not a folder")


@pytest.mark.parametrize("command", [["generate"], ["export", "out"], ["backup", "copy.db"],
                                     ["ab", "report", "some-set"]])
def test_commands_that_do_not_set_a_store_up_refuse_a_missing_database(tmp_path, command):
    db = tmp_path / "typo" / "feedback.db"
    line = assert_user_error(run_cli("app", *command, "--database-url", f"sqlite:///{db}", cwd=tmp_path),
                             str(db), "does not exist", "--database-url", "--config")
    assert "Traceback" not in line
    assert not db.exists() and not db.parent.exists()


def test_commands_that_do_not_set_a_store_up_refuse_a_missing_project(tmp_path, store_db):
    result = run_cli("app", "export", str(tmp_path / "out"), "--database-url", f"sqlite:///{store_db}",
                     "--project", "other")
    assert_user_error(result, "project", "'other'", "projects: p", "--project")
    import sqlite3

    with sqlite3.connect(store_db) as conn:
        assert [name for (name,) in conn.execute("SELECT name FROM projects")] == ["p"]


# ---------------------------------------------------------------------------------------------------
# The README's commands, as printed


def readme_commands(prefix: str) -> list[list[str]]:
    """Every command line of README.md starting with ``prefix`` (continuation lines joined, the
    trailing comment dropped), split as a shell would."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = re.sub(r"^[A-Z_]+=\S+ ", "", line.strip())  # an environment assignment in front
        if line.startswith(prefix):
            commands.append(shlex.split(line, comments=True))
    assert commands, f"no '{prefix}' command in README.md"
    return commands


def test_readme_simulate_commands_parse_as_printed():
    from rlhf.cli import build_parser

    for argv in readme_commands("rlhf simulate"):
        argv = [a for a in argv if a != "..."]
        rule = next(a.split("=", 1)[1] if "=" in a else argv[i + 1] for i, a in enumerate(argv)
                    if a.startswith("--rule"))
        assert rule.startswith("-")  # the case argparse used to take for an option
        args = build_parser().parse_args(argv[1:])  # exits 2 ("expected one argument") when it cannot parse
        assert rule in vars(args).values()


def test_readme_ab_commands_as_printed_never_make_a_new_database(tmp_path):
    """Run in an empty folder, the README's A/B commands must not create runs/feedback/feedback.db
    (a set there never shows on the /ab page of the server that holds the reviewers)."""
    for argv in readme_commands("rlhf app ab"):
        for i, arg in enumerate(argv):
            if arg.endswith(".jsonl"):  # reply files: give the command real ones, so only the store decides
                path = tmp_path / Path(arg).name
                path.write_text(json.dumps({"prompt": "q", "replies": ["a", "b"]}) + "\n")
                argv[i] = str(path)
        result = subprocess.run([sys.executable, "-m", "rlhf.cli", *argv[1:]], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)
        assert_user_error(result, "does not exist", "--database-url")
        assert not (tmp_path / "runs").exists(), argv

"""AppConfig's one SQLite URL parser (feedback_app.config.sqlite_path), against hand-written answers."""

from pathlib import Path

import pytest

from feedback_app.config import AppConfig, sqlite_path


@pytest.mark.parametrize("url, path", [
    ("sqlite:///runs/feedback/feedback.db", Path("runs/feedback/feedback.db")),
    ("sqlite:////tmp/abs.db", Path("/tmp/abs.db")),
    ("sqlite+pysqlite:///x.db", Path("x.db")),
    ("sqlite:///x.db?timeout=5", Path("x.db")),
    ("sqlite:///:memory:", None),
    ("sqlite://", None),
    ("postgresql://user:pw@localhost/feedback", None),
])
def test_sqlite_path(url, path):
    assert sqlite_path(url) == path


def test_config_uses_it_for_the_secret_beside_the_database():
    config = AppConfig(database_url="sqlite:////srv/fb/feedback.db")
    assert config.sqlite_path() == Path("/srv/fb/feedback.db")
    assert config.resolved_secret_file() == Path("/srv/fb/secret.key")
    assert AppConfig(database_url="postgresql://h/db").resolved_secret_file() == Path("runs/feedback/secret.key")


def _parsed(*argv):
    from rlhf.cli import build_parser

    return build_parser().parse_args(list(argv))


def test_export_flags_keep_their_shapes_and_fill_the_typed_config():
    from feedback_app.config import ExportConfig
    from rlhf.config import config_from_args

    args = _parsed("app", "export", "out-dir", "--reviewer", "ann", "--reviewer", "bob", "--round", "2",
                   "--include-flagged", "--source", "human", "--database-url", "sqlite:///x.db")
    config = config_from_args(ExportConfig, args)
    assert (config.out, config.reviewers, config.rounds, config.include_flagged, config.source) == \
        ("out-dir", ["ann", "bob"], [2], True, "human")
    assert config.database_url == "sqlite:///x.db" and config.prompts is None
    plain = config_from_args(ExportConfig, _parsed("app", "export", "--prompts", "p.jsonl",
                                                   "--include-flagged", "false"))
    assert (plain.out, plain.prompts, plain.reviewers, plain.rounds, plain.include_flagged) == \
        (None, "p.jsonl", None, None, False)


def test_simulate_ab_and_demo_configs_from_their_flags():
    from feedback_app.config import AbCreateConfig, AbReportConfig, DemoConfig, SimulateConfig
    from rlhf.config import config_from_args

    sim = config_from_args(SimulateConfig, _parsed("simulate", "--accounts", "s1, s2", "--create-accounts",
                                                   "--rule", "-len(text)", "--noise", "0.5", "--max-rankings", "3"))
    assert (sim.accounts, sim.create_accounts, sim.rule, sim.noise, sim.max_rankings, sim.ab) == \
        (["s1", "s2"], True, "-len(text)", 0.5, 3, None)
    create = config_from_args(AbCreateConfig, _parsed("app", "ab", "create", "eval", "--policy-a", "a", "--replies-a",
                                                      "a.jsonl", "--policy-b", "b", "--replies-b", "b.jsonl"))
    assert (create.name, create.policy_a, create.replies_b, create.judgements_per_item) == ("eval", "a", "b.jsonl", 1)
    report = config_from_args(AbReportConfig, _parsed("app", "ab", "report", "7", "--output", "r.json"))
    assert (report.name, report.output) == ("7", "r.json")
    demo = config_from_args(DemoConfig, _parsed("app", "demo", "--admin", "root"))
    assert (demo.admin, demo.prompts) == ("root", "configs/prompts/support_questions.jsonl")

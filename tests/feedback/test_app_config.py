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

"""The one JSONL reader: prompt files, imports into the feedback app and A/B reply files all go
through it, so a bad line reads the same wherever it is found. Standard library only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from rlhf.errors import UserError


def jsonl_rows(text: str, name: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each non-blank line of ``text``, ``where`` being ``"name:line"`` (lines
    counted from 1, blank ones included) for the caller's own messages about that row. A line that is
    not JSON raises ``UserError`` naming the file and line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{name}:{lineno}: malformed JSON: {exc.msg} (each line must be one JSON value; "
                            "this one is not JSON)") from None
        yield f"{name}:{lineno}", value


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped); a file in another encoding is a
    ``UserError`` naming it, not a ``UnicodeDecodeError`` traceback."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None

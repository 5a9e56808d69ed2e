"""Read prompts to import: JSONL, CSV or a ``datasets`` directory. Errors name the file and line.

Rows (JSONL / datasets):
  {"prompt": "text"} or {"prompt": [messages]} or {"messages": [...]}   a prompt
  ("messages" ending in assistant turns: those are the agent's reply, stored as the reference reply)
  optional "replies": [K texts] (or "candidates")  imported as a ready item, with optional "model"
  optional "gold_ranking": [K ranks] (1 best) or "gold_best": N (reply N is best)   a gold item
CSV: a header with a ``prompt`` column; optional ``reply_1`` .. ``reply_K`` columns and ``model``
(and ``gold_ranking`` as "1,3,2,4" or ``gold_best``).
A CSV prompt cell that holds a JSON list is read as chat messages.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from feedback_app.store import ImportRow
from rlhf.errors import UserError
from rlhf.jsonl import jsonl_rows
from rlhf.schema import validate_prompt


def _row(data: Any, where: str) -> ImportRow:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected an object with a 'prompt' field")
    reference = None
    if "prompt" in data:
        prompt = data["prompt"]
    elif "messages" in data:
        if not isinstance(data["messages"], list):
            raise UserError(f"{where}: 'messages' must be a list of {{role, content}} messages "
                            f"(got {type(data['messages']).__name__})")
        prompt = list(data["messages"])
        # The assistant turns that end a conversation are the agent's real reply to it: kept beside
        # the prompt as its reference reply (``prompts.reference_reply``), as a chat log's are.
        trailing: list[str] = []
        while prompt and isinstance(prompt[-1], dict) and prompt[-1].get("role") == "assistant":
            content = prompt.pop().get("content")
            if isinstance(content, str) and content.strip():
                trailing.insert(0, content)
        reference = "\n".join(trailing) if trailing else None
    else:
        raise UserError(f"{where}: no 'prompt' or 'messages' field (fields: {', '.join(sorted(data)) or 'none'})")
    try:
        validate_prompt(prompt)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    replies = data.get("replies", data.get("candidates"))
    if replies is not None and (not isinstance(replies, list) or not all(isinstance(r, str) and r.strip()
                                                                         for r in replies)):
        raise UserError(f"{where}: 'replies' must be a list of non-empty texts")
    # Refused, not stripped: a NUL byte is no text a reviewer could read, PostgreSQL cannot store it
    # in a text column, and quietly editing a prompt would change its identity (its hash).
    for field, value in (("prompt", prompt), ("replies", replies), ("messages", reference)):
        if _has_nul(value):
            raise UserError(f"{where}: '{field}' holds a NUL byte (\\x00); remove it and import again "
                            f"(nothing was imported)")
    model = data.get("model") or ""
    if not isinstance(model, str):
        raise UserError(f"{where}: 'model' must be text")
    return ImportRow(prompt=prompt, replies=replies, model=model, source=where, reference=reference,
                     gold_ranks=_gold(data, where, replies))


def _gold(data: dict, where: str, replies: list[str] | None) -> list[int] | None:
    """A known ranking makes the item gold: "gold_ranking" (ranks by reply, 1 best; in CSV "1,3,2,4")
    or "gold_best" (the best reply's number, 1-based). Checked against K when stored."""
    from feedback_app.gold import best_reply_ranks

    ranking, best = data.get("gold_ranking"), data.get("gold_best")
    if ranking in (None, "") and best in (None, ""):
        return None
    if replies is None:
        raise UserError(f"{where}: a gold ranking needs the 'replies' it ranks")
    try:
        if ranking not in (None, ""):
            ranks = [int(x) for x in ranking.split(",")] if isinstance(ranking, str) else list(ranking)
            if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
                raise ValueError
            return ranks
        return best_reply_ranks(int(best), len(replies))
    except UserError as exc:  # a reply number outside 1..K
        raise UserError(f"{where}: gold_best: {exc}") from None
    except (TypeError, ValueError):
        raise UserError(f"{where}: 'gold_ranking' must list one whole-number rank per reply (1 best), "
                        f"'gold_best' one reply number") from None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def parse_bytes(name: str, data: bytes) -> list[ImportRow]:
    """Rows of an uploaded or read file; the format follows the name's suffix (.csv, else JSONL)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{name}: not a UTF-8 text file") from None
    rows = _parse_csv(name, text) if name.lower().endswith(".csv") else _parse_jsonl(name, text)
    if not rows:
        raise UserError(f"{name}: no prompts found")
    return rows


def _parse_jsonl(name: str, text: str) -> list[ImportRow]:
    return [_row(data, where) for where, data in jsonl_rows(text, name)]


def _parse_csv(name: str, text: str) -> list[ImportRow]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise UserError(f"{name}:1: the header needs a 'prompt' column (got {', '.join(reader.fieldnames or [])})")
    reply_cols = sorted((c for c in reader.fieldnames if c.startswith("reply_")), key=lambda c: int(c[6:] or 0)
                        if c[6:].isdigit() else 0)
    rows = []
    try:
        for record in reader:
            where = f"{name}:{reader.line_num}"
            if None in record:
                raise UserError(f"{where}: more cells than header columns")
            prompt: Any = (record.get("prompt") or "").strip()
            if prompt.startswith("["):
                try:
                    prompt = json.loads(prompt)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{where}: prompt looks like JSON messages but is malformed: {exc.msg}") from None
            data: dict[str, Any] = {"prompt": prompt, "model": record.get("model") or "",
                                    "gold_ranking": record.get("gold_ranking"), "gold_best": record.get("gold_best")}
            replies = [record[c] for c in reply_cols if (record.get(c) or "").strip()]
            if replies:
                data["replies"] = replies
            rows.append(_row(data, where))
    except csv.Error as exc:
        raise UserError(f"{name}:{reader.line_num}: malformed CSV: {exc}") from None
    return rows


def read_import_file(path: str | os.PathLike) -> list[ImportRow]:
    """Rows of a JSONL/CSV file or a ``datasets`` directory (``save_to_disk``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        if not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
            raise UserError(f"{path}: a directory, but not a dataset saved with datasets.save_to_disk")
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else data[next(iter(data))]
        rows = [_row(dict(r), f"{path}: row {i}") for i, r in enumerate(data)]
        if not rows:
            raise UserError(f"{path}: no prompts found")
        return rows
    return parse_bytes(str(path), path.read_bytes())

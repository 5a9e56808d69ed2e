"""Read prompt files: JSONL, plain text, JSON list, or a ``datasets`` directory. Errors name the line.

Accepted rows (JSONL / JSON / datasets):
  {"prompt": "text"}                      plain prompt
  {"prompt": [{"role": "user", ...}]}      chat messages
  {"messages": [...]}                      chat messages (trailing assistant turns are dropped)
A ``.txt`` file holds one prompt per non-empty line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlhf.errors import UserError
from rlhf.jsonl import jsonl_rows, read_text
from rlhf.schema import Prompt, validate_prompt


def _row_prompt(row, where: str) -> Prompt:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with a 'prompt' field")
    if "prompt" in row:
        value = row["prompt"]
    elif "messages" in row:
        value = list(row["messages"] or [])
        while value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
            value.pop()
    else:
        raise UserError(f"{where}: no 'prompt' or 'messages' field (fields: {', '.join(sorted(row)) or 'none'})")
    try:
        return validate_prompt(value)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """All prompts in ``path``; raises UserError naming the file and line of the first bad row."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: prompts file not found")
    if path.is_dir():
        return _read_dataset_dir(path)
    text = read_text(path)
    prompts: list[Prompt]
    if path.suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    elif path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of prompts")
        prompts = [r if isinstance(r, str) else _row_prompt(r, f"{path}: item {i}") for i, r in enumerate(rows)]
    else:  # .jsonl and anything else: one JSON object per line
        prompts = [_row_prompt(row, where) for where, row in jsonl_rows(text, path)]
    if not prompts:
        raise UserError(f"{path}: no prompts found")
    return prompts


def _read_dataset_dir(path: Path) -> list[Prompt]:
    if not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
        raise UserError(f"{path}: a directory, but not a dataset saved with datasets.save_to_disk")
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    prompts = [_row_prompt(row, f"{path}: row {i}") for i, row in enumerate(data)]
    if not prompts:
        raise UserError(f"{path}: no prompts found")
    return prompts

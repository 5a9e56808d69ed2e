"""Preference pairs for DPO, read straight from the feedback store's export (no reward model between).

Sources:
  * the folder ``rlhf app export OUT`` writes: ``OUT/kwise`` (train/test split by prompt, as the
    reward model reads it), each ranking expanded to its K(K-1)/2 pairs (``rlhf.schema.kwise_to_pairs``;
    ties give none), so DPO trains on exactly the comparisons the reward model does;
  * a TRL preference dataset on disk (``datasets`` directory, JSONL, JSON or Parquet) with
    ``prompt``/``chosen``/``rejected`` or the K-wise ``prompt``/``completions``/``ranks``; without a
    test split its prompts are split by ``rlhf.schema.prompt_split``, the reward model's hash split.

Rows come out conversational (``prompt`` as chat messages, ``chosen``/``rejected`` as one assistant
message), so TRL applies the policy's chat template as the online trainers' rollouts do.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.errors import UserError
from rlhf.schema import EXPORT_KWISE, EXPORT_MANIFEST, as_messages, kwise_to_pairs, prompt_split


def _read(path: Path) -> dict:
    """Splits of a datasets directory or a JSONL/JSON/Parquet file: ``{"train": rows, ...}`` or ``{"all": rows}``."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        if path.is_dir():
            data = load_from_disk(str(path))
        elif path.suffix in (".jsonl", ".json"):
            data = Dataset.from_json(str(path))
        elif path.suffix == ".parquet":
            data = Dataset.from_parquet(str(path))
        else:
            raise UserError(f"{path}: unknown data format (give an 'rlhf app export' folder, a datasets directory, "
                            f".jsonl, .json or .parquet)")
    except UserError:
        raise
    except Exception as exc:  # arrow/json parse errors, not a datasets folder: one line naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read preference data: {first}") from None
    if isinstance(data, DatasetDict):
        return {name: list(split) for name, split in data.items()}
    return {"all": list(data)}


def _reply(value) -> list[dict]:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else list(value)


def to_pairs(rows: list[dict], where: str) -> list[dict]:
    """Pairwise or K-wise rows -> TRL conversational pairs ``{"prompt", "chosen", "rejected"}``."""
    pairs = []
    for i, row in enumerate(rows):
        if {"completions", "ranks"} <= row.keys():
            expanded = kwise_to_pairs(row)
        elif {"prompt", "chosen", "rejected"} <= row.keys():
            expanded = [row]
        else:
            raise UserError(f"{where} row {i}: fields {', '.join(sorted(row)) or '(none)'}: expected prompt, chosen, "
                            f"rejected (TRL preference data) or prompt, completions, ranks (K-wise rankings)")
        try:
            prompt = as_messages(row["prompt"])
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where} row {i}: bad prompt: {exc}") from None
        pairs += [{"prompt": prompt, "chosen": _reply(p["chosen"]), "rejected": _reply(p["rejected"])}
                  for p in expanded]
    return pairs


def load_pairs(path: str | Path, test_fraction: float) -> tuple[list[dict], list[dict], dict]:
    """(train pairs, held-out pairs, manifest): the held-out side holds whole prompts, never seen in training."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: preference data not found")
    manifest: dict = {"source": str(path)}
    if path.is_dir() and (path / EXPORT_MANIFEST).is_file() and (path / EXPORT_KWISE).is_dir():
        try:
            manifest = json.loads((path / EXPORT_MANIFEST).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path / EXPORT_MANIFEST}: malformed JSON: {exc}") from None
        path = path / EXPORT_KWISE
    splits = _read(path)
    if "train" in splits:
        train = to_pairs(splits["train"], f"{path} [train]")
        held = splits.get("test", splits.get("validation", []))
        test = to_pairs(held, f"{path} [test]")
    else:  # split the rankings by their prompt, before expanding them, exactly as the reward model does
        rows = [row for split in splits.values() for row in split]
        sides = [prompt_split(row.get("prompt"), test_fraction) if row.get("prompt") else "train" for row in rows]
        train = to_pairs([r for r, s in zip(rows, sides) if s == "train"], str(path))
        test = to_pairs([r for r, s in zip(rows, sides) if s == "test"], str(path))
    if not train:
        raise UserError(f"{path}: no training pair (rankings need two replies with distinct ranks, and at least "
                        f"one prompt on the train side of the split)")
    return train, test, manifest


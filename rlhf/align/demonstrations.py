"""Demonstrations for ``rlhf sft``: prompt-completion rows, checked before any model loads.

The data contract (one row):
  {"prompt": "text" | [chat messages], "completion": "the reply" | [one assistant message],
   "source": "demonstration" | "agent", "author": ..., "prompt_key": ..., "unit": ...}   (the last four optional;
   ``unit``, the privacy unit, is needed by ``rlhf sft --dp``)
or {"messages": [... , {"role": "assistant", ...}]}: the last assistant message is the completion.

Sources (``data`` holds one or more, read in order):
  * the folder ``rlhf app export OUT`` writes: ``OUT/sft`` (a DatasetDict whose train/test split is the
    rankings' prompt-level split), or any ``datasets`` directory of such rows;
  * a JSONL, JSON or Parquet file of rows (``configs/sft/contact_centre_demos.jsonl``, ``OUT/sft.jsonl``),
    split here by ``rlhf.schema.prompt_split``, the reward model's hash split.

Rows leave conversational (``prompt`` as chat messages, ``completion`` as one assistant message) so
TRL's SFTTrainer renders them with the policy's chat template, exactly as replies are generated, and
its ``completion_only_loss`` puts the loss on the reply's tokens alone.

Bad input is one ``UserError`` naming the file, line (or split and row) and field: a missing or empty
prompt, an empty completion, a row longer than ``max_length`` tokens. Long rows are counted and the
run refused, never silently cut (TRL would truncate them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.errors import UserError
from rlhf.schema import as_messages, prompt_split, validate_prompt

SFT_EXPORT = "sft"  # the folder 'rlhf app export' writes demonstrations into


@dataclass
class Demonstration:
    """One checked row: where it came from, the prompt as chat messages, the reply text."""

    where: str  # "file:line" or "dir [split] row i", for messages about this row
    prompt: list[dict]
    completion: str
    source: str = "demonstration"  # "demonstration" (a reviewer wrote it) or "agent" (a reference reply)
    stored_prompt: object = None  # the prompt as the store keeps it (text or messages): the split's key
    unit: str | None = None  # privacy unit for 'rlhf sft --dp' (customer, conversation or prompt), if the row has one

    def row(self) -> dict:
        """The TRL conversational prompt-completion row."""
        return {"prompt": self.prompt, "completion": [{"role": "assistant", "content": self.completion}]}


@dataclass
class Demonstrations:
    train: list[Demonstration] = field(default_factory=list)
    test: list[Demonstration] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        by_source: dict[str, int] = {}
        for d in self.train + self.test:
            by_source[d.source] = by_source.get(d.source, 0) + 1
        return {"train_rows": len(self.train), "heldout_rows": len(self.test), "by_source": by_source}


# ---------------------------------------------------------------------------------------------------
# One row


def parse_row(row, where: str) -> Demonstration:
    """A raw row -> ``Demonstration``; ``UserError`` naming ``where`` and the field for a bad one."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with 'prompt' and 'completion' fields")
    if "prompt" not in row and "messages" in row:
        messages = list(row["messages"] or [])
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            raise UserError(f"{where}: field 'messages': the last message must be the assistant's reply")
        row = {**row, "prompt": messages[:-1], "completion": messages[-1].get("content")}
    if row.get("prompt") in (None, "", []):
        raise UserError(f"{where}: field 'prompt': missing or empty (every demonstration answers a prompt)")
    try:
        stored = validate_prompt(row["prompt"])
    except ValueError as exc:
        raise UserError(f"{where}: field 'prompt': {exc}") from None
    completion = row.get("completion")
    if isinstance(completion, list):  # conversational: one assistant message
        if len(completion) != 1 or not isinstance(completion[0], dict) or completion[0].get("role") != "assistant":
            raise UserError(f"{where}: field 'completion': a list must hold exactly one assistant message")
        completion = completion[0].get("content")
    if completion is None:
        raise UserError(f"{where}: field 'completion': missing (the reply the model should learn)")
    if not isinstance(completion, str):
        raise UserError(f"{where}: field 'completion': must be text, got {type(completion).__name__}")
    if not completion.strip():
        raise UserError(f"{where}: field 'completion': empty (a demonstration needs the reply's text)")
    unit = row.get("unit")
    return Demonstration(where, as_messages(stored), completion, str(row.get("source") or "demonstration"), stored,
                         str(unit).strip() if unit is not None and str(unit).strip() else None)


# ---------------------------------------------------------------------------------------------------
# Files


def _read_rows(path: Path) -> dict[str, list[tuple[str, object]]]:
    """``{split: [(where, row), ...]}``; a file without splits gives ``{"all": ...}``."""
    from rlhf.jsonl import jsonl_rows, read_text

    if path.is_dir():
        if (path / SFT_EXPORT).is_dir() and not (path / "dataset_dict.json").is_file():
            path = path / SFT_EXPORT  # an 'rlhf app export' folder
        if not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
            raise UserError(f"{path}: a directory, but neither an 'rlhf app export' folder with {SFT_EXPORT}/ "
                            f"nor a dataset saved with datasets.save_to_disk")
        import datasets

        data = datasets.load_from_disk(str(path))
        splits = data if isinstance(data, datasets.DatasetDict) else {"all": data}
        return {name: [(f"{path} [{name}] row {i}", row) for i, row in enumerate(split)]
                for name, split in splits.items()}
    if path.suffix == ".jsonl":
        return {"all": list(jsonl_rows(read_text(path), path))}
    if path.suffix == ".json":
        try:
            rows = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of demonstrations")
        return {"all": [(f"{path}: item {i}", row) for i, row in enumerate(rows)]}
    if path.suffix == ".parquet":
        import datasets

        return {"all": [(f"{path}: row {i}", row) for i, row in enumerate(datasets.Dataset.from_parquet(str(path)))]}
    raise UserError(f"{path}: unknown format (give an 'rlhf app export' folder, a datasets directory, .jsonl, "
                    f".json or .parquet)")


def read_demonstrations(paths: list[str | os.PathLike], test_fraction: float) -> Demonstrations:
    """Every demonstration of ``paths``, checked, split train/held-out by prompt."""
    out = Demonstrations()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path}: demonstrations not found")
        splits = _read_rows(path)
        found = 0
        for name, rows in splits.items():
            for where, row in rows:
                demo = parse_row(row, where)
                side = name if name in ("train", "test") else \
                    "test" if name == "validation" else prompt_split(demo.stored_prompt, test_fraction)
                (out.test if side == "test" else out.train).append(demo)
                found += 1
        if not found:
            raise UserError(f"{path}: no demonstrations found")
        out.sources.append(str(path))
    if not out.train:
        raise UserError(f"{', '.join(map(str, paths))}: no training demonstration (every prompt fell on the "
                        f"held-out side of the split; lower test_fraction or add demonstrations)")
    return out


# ---------------------------------------------------------------------------------------------------
# Length


def token_length(tokenizer, demo: Demonstration) -> int:
    """Tokens of prompt + completion as TRL's SFTTrainer tokenizes them (the chat template over both)."""
    ids = tokenizer.apply_chat_template(demo.prompt + [{"role": "assistant", "content": demo.completion}],
                                        tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding in recent transformers
        ids = ids["input_ids"]
    return len(ids)


def check_lengths(demos: Demonstrations, tokenizer, max_length: int) -> int:
    """The longest row's token count; every row longer than ``max_length`` is counted and the run refused,
    naming the first (TRL would cut them, teaching the model replies that stop mid-sentence)."""
    longest, too_long = 0, []
    for demo in demos.train + demos.test:
        n = token_length(tokenizer, demo)
        longest = max(longest, n)
        if n > max_length:
            too_long.append((demo, n))
    if too_long:
        demo, n = too_long[0]
        raise UserError(f"{demo.where}: field 'completion': prompt + completion is {n} tokens, longer than "
                        f"max_length={max_length} ({len(too_long)} of {len(demos.train) + len(demos.test)} rows are; "
                        f"raise max_length or shorten them: rows are never cut)")
    return longest


# ---------------------------------------------------------------------------------------------------
# Sample replies


def word_f1(reply: str, reference: str) -> float:
    """Unigram F1 of ``reply`` against ``reference`` (lower-cased ``\\w+`` words, counted with multiplicity),
    SQuAD's answer-overlap score: how much of the reviewer's demonstration a sample reply says, and how much
    of the reply is in it. 0 when they share no word."""
    import re
    from collections import Counter

    said, wanted = (Counter(re.findall(r"\w+", text.lower())) for text in (reply, reference))
    overlap = sum((said & wanted).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(said.values()), overlap / sum(wanted.values())
    return 2 * precision * recall / (precision + recall)


def load_checked(paths: list[str], test_fraction: float, policy: str, max_length: int):
    """``(demonstrations, tokenizer, longest)``: every row's fields checked, then its length in the policy's
    tokens, before TRL or any model is imported (``rlhf sft`` calls this first)."""
    from rlhf.modeling import load_tokenizer

    demos = read_demonstrations(paths, test_fraction)
    tokenizer = load_tokenizer(policy, padding_side="left")  # left for the sample replies; TRL pads right itself
    return demos, tokenizer, check_lengths(demos, tokenizer, max_length)


"""Preference data for the reward model: load, validate, split by prompt, tokenize.

Sources (``load_preference_data``):
  * the folder ``rlhf app export OUT`` writes (``OUT/pairwise``, ``OUT/kwise``, ``OUT/manifest.json``;
    layout in ``rlhf/schema.py``), with its train/test split by prompt;
  * any TRL preference dataset on disk: a ``datasets`` directory (Dataset or DatasetDict), a JSONL,
    JSON or Parquet file, with ``prompt``/``chosen``/``rejected`` (or ``chosen``/``rejected`` holding
    the prompt) or the K-wise ``prompt``/``completions``/``ranks``; plain text or chat messages.
    Without a test split, prompts are split by hash (``rlhf.schema.prompt_split``).

Nothing is dropped silently: every dropped row or reply is counted and reported in one warning.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.errors import UserError
from rlhf.runtime import is_main_process
from rlhf.schema import EXPORT_KWISE, EXPORT_MANIFEST, EXPORT_PAIRWISE, kwise_to_pairs, pair_indices, prompt_key, prompt_split

PAIRWISE_COLUMNS = {"chosen", "rejected"}
KWISE_COLUMNS = {"prompt", "completions", "ranks"}


def warn(message: str) -> None:
    """A counted warning, printed once (by the main process)."""
    if is_main_process():
        print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class PreferenceData:
    """Both views of the same data, each a dict ``{"train": Dataset, "test": Dataset}``.

    kwise rows:    prompt, completions [K], ranks [K], reviewer, ranking_id
    pairwise rows: prompt, chosen, rejected, reviewer, ranking_id
    """

    kwise: dict[str, Any]
    pairwise: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    source: str = ""


# ---------------------------------------------------------------------------------------------------
# Reading


def _read_any(path: Path):
    """A Dataset or DatasetDict from a datasets directory or a JSONL/JSON/Parquet file."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if path.is_file() and not path.read_bytes().strip():
        raise UserError(f"{path}: the dataset is empty")
    try:
        if path.is_dir():
            data = load_from_disk(str(path))
        elif path.suffix in (".jsonl", ".json"):
            data = Dataset.from_json(str(path))
        elif path.suffix == ".parquet":
            data = Dataset.from_parquet(str(path))
        else:
            raise UserError(f"{path}: unknown data format (give a datasets directory, .jsonl, .json or .parquet)")
    except UserError:
        raise
    except FileNotFoundError as exc:
        raise UserError(f"{path}: not a datasets directory ({exc})") from None
    except Exception as exc:  # arrow/json parse errors: one line, naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read preference data: {first}") from None
    if isinstance(data, DatasetDict):
        return {name: split for name, split in data.items()}
    return {"all": data}


def _file_manifest(path: Path, splits: dict) -> dict[str, Any]:
    digest = None
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"source": str(path), "sha256": digest, "rows": {k: len(v) for k, v in splits.items()}}


def load_preference_data(path: str | Path, test_fraction: float = 0.1) -> PreferenceData:
    """Load, validate and split preference data; errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: preference data not found")
    if path.is_dir() and (path / EXPORT_MANIFEST).is_file() and (path / EXPORT_KWISE).is_dir():
        try:
            manifest = json.loads((path / EXPORT_MANIFEST).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path / EXPORT_MANIFEST}: malformed JSON: {exc}") from None
        # The K-wise view keeps whole rankings; the pairwise view is derived from it the same way
        # the export does, so both modes train on exactly the same comparisons.
        splits = _read_any(path / EXPORT_KWISE)
        where = str(path / EXPORT_KWISE)
    else:
        splits = _read_any(path)
        manifest = None
        where = str(path)
    if sum(len(s) for s in splits.values()) == 0:
        raise UserError(f"{where}: the dataset is empty")
    if manifest is None:
        manifest = _file_manifest(path, splits)

    kwise = {name: _to_kwise(split, f"{where} [{name}]") for name, split in splits.items()}
    kwise = _ensure_train_test(kwise, test_fraction, where)
    pairwise = {name: _kwise_to_pairwise(split) for name, split in kwise.items()}
    return PreferenceData(kwise=kwise, pairwise=pairwise, manifest=manifest, source=str(path))


# ---------------------------------------------------------------------------------------------------
# Validation and conversion (rows are plain dicts here; the datasets are small enough to hold)


def _check_reply(value: Any, where: str) -> None:
    ok = isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )
    if not ok:
        raise UserError(f"{where}: a reply must be text or a list of chat messages, got {type(value).__name__}")


def _to_kwise(split, where: str):
    """Any accepted column layout -> K-wise rows; rankings with no usable pair are counted and dropped."""
    from datasets import Dataset
    from trl.data_utils import maybe_extract_prompt

    columns = set(split.column_names)
    rows: list[dict[str, Any]] = []
    # the privacy unit (customer, conversation or prompt) that `--dp` samples, carried when the data has it
    unit = (lambda row: {"unit": row["unit"]}) if "unit" in columns else (lambda row: {})
    if KWISE_COLUMNS <= columns:
        dropped = 0
        for i, row in enumerate(split):
            completions, ranks = row["completions"], row["ranks"]
            if not isinstance(completions, list) or not isinstance(ranks, list) or len(completions) != len(ranks):
                raise UserError(f"{where} row {i}: 'completions' and 'ranks' must be lists of equal length")
            if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
                raise UserError(f"{where} row {i}: ranks must be integers >= 1 (1 is best), got {ranks}")
            for c in completions:
                _check_reply(c, f"{where} row {i}")
            if not pair_indices(ranks):
                dropped += 1
                continue
            rows.append({"prompt": row["prompt"], "completions": completions, "ranks": ranks,
                         "reviewer": str(row.get("reviewer") or ""), "ranking_id": row.get("ranking_id"),
                         **unit(row)})
        if dropped:
            warn(f"dropped {dropped} of {len(split)} rankings in {where}: no two replies with distinct ranks")
    elif PAIRWISE_COLUMNS <= columns:
        for i, row in enumerate(split):
            if "prompt" not in columns:  # implicit prompt: TRL's own extraction (shared prefix)
                row = {**row, **maybe_extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})}
            _check_reply(row["chosen"], f"{where} row {i}")
            _check_reply(row["rejected"], f"{where} row {i}")
            rows.append({"prompt": row["prompt"], "completions": [row["chosen"], row["rejected"]], "ranks": [1, 2],
                         "reviewer": str(row.get("reviewer") or ""), "ranking_id": row.get("ranking_id"),
                         **unit(row)})
    else:
        raise UserError(
            f"{where}: columns {', '.join(sorted(columns)) or '(none)'}: expected prompt, chosen, rejected "
            f"(TRL preference data) or prompt, completions, ranks (K-wise rankings)"
        )
    for i, row in enumerate(rows):
        if not row["prompt"] or (isinstance(row["prompt"], str) and not row["prompt"].strip()):
            raise UserError(f"{where} row {i}: empty prompt")
    if not rows:
        raise UserError(f"{where}: no ranking has two replies with distinct ranks; nothing to learn from")
    return Dataset.from_list(rows)


def _ensure_train_test(splits: dict, test_fraction: float, where: str) -> dict:
    """Keep an existing train/test split; otherwise split by prompt hash (never a prompt on both sides)."""
    from datasets import concatenate_datasets

    if "train" in splits:
        train = splits["train"]
        test = splits.get("test", splits.get("validation"))
        if test is not None:
            overlap = {prompt_key(p) for p in train["prompt"]} & {prompt_key(p) for p in test["prompt"]}
            if overlap:
                warn(f"{len(overlap)} prompts of {where} are in both train and test; held-out accuracy "
                     f"will be optimistic")
            return {"train": train, "test": test}
        whole = train
    else:
        whole = concatenate_datasets(list(splits.values()))
    sides = [prompt_split(p, test_fraction) for p in whole["prompt"]]
    train = whole.select([i for i, s in enumerate(sides) if s == "train"])
    test = whole.select([i for i, s in enumerate(sides) if s == "test"])
    if len(train) == 0:
        raise UserError(f"{where}: every prompt fell in the test split; lower test_fraction")
    if len(test) == 0 and test_fraction > 0:
        warn(f"{where}: no prompt fell in the test split ({len(train)} rankings); held-out accuracy unavailable")
    return {"train": train, "test": test}


def split_validation(train, fraction: float):
    """Training rankings -> (train, validation), split by prompt: a prompt's rankings stay on one side.

    The bucket is a hash of ``"validation:" + prompt key``, independent of the test split's hash
    (``prompt_split``), so the same prompts land in validation across exports and runs.
    """
    if fraction <= 0:
        return train, train.select([])
    sides = [int(hashlib.sha256(("validation:" + prompt_key(p)).encode()).hexdigest()[:8], 16) / 0x1_0000_0000
             < fraction for p in train["prompt"]]
    return train.select([i for i, v in enumerate(sides) if not v]), train.select([i for i, v in enumerate(sides) if v])


def split_half(train, half: str):
    """The training rankings of one half of the prompts (``"first"`` or ``"second"``; ``"all"``: every one),
    by a hash of ``"half:" + prompt key``, independent of the test and validation splits."""
    if half == "all":
        return train
    second = [int(hashlib.sha256(("half:" + prompt_key(p)).encode()).hexdigest()[:8], 16) % 2 == 1
              for p in train["prompt"]]
    return train.select([i for i, s in enumerate(second) if s == (half == "second")])


def _kwise_to_pairwise(split):
    from datasets import Dataset

    rows = []
    for row in split:
        for pair in kwise_to_pairs(row):
            rows.append({**pair, "reviewer": row["reviewer"], "ranking_id": row["ranking_id"],
                         **({"unit": row["unit"]} if "unit" in row else {})})
    if not rows:
        return Dataset.from_dict({"prompt": [], "chosen": [], "rejected": [], "reviewer": [], "ranking_id": []})
    return Dataset.from_list(rows)


# ---------------------------------------------------------------------------------------------------
# Reviewer agreement


def _reply_key(reply: Any) -> str:
    return json.dumps(reply, sort_keys=True, ensure_ascii=False)


def pair_agreement(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[int, int]]:
    """For each ordered pair of replies to a prompt: (reviewers who prefer the first, reviewers asked).

    Key: (prompt key, better reply key, worse reply key) in the order one reviewer ranked them; both
    orders are present when reviewers disagree. A reviewer who tied the two counts as asked.
    Rankings of the same reviewer count once (the last wins).
    """
    votes: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    for row in rows:
        pk = prompt_key(row["prompt"])
        keys = [_reply_key(c) for c in row["completions"]]
        ranks = row["ranks"]
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                a, b = sorted((keys[i], keys[j]))
                ra, rb = (ranks[i], ranks[j]) if keys[i] == a else (ranks[j], ranks[i])
                votes[(pk, a, b)][row["reviewer"] or f"#{id(row)}"] = (ra < rb) - (ra > rb)  # +1: a better
    out: dict[tuple[str, str, str], tuple[int, int]] = {}
    for (pk, a, b), by_reviewer in votes.items():
        n = len(by_reviewer)
        pro_a = sum(1 for v in by_reviewer.values() if v > 0)
        pro_b = sum(1 for v in by_reviewer.values() if v < 0)
        out[(pk, a, b)] = (pro_a, n)
        out[(pk, b, a)] = (pro_b, n)
    return out


def agreement_weights(row: dict[str, Any], agreement: dict) -> list[list[float]]:
    """[K][K] weight of pair (i better than j): share of the reviewers asked who agree with this row."""
    pk = prompt_key(row["prompt"])
    keys = [_reply_key(c) for c in row["completions"]]
    k = len(keys)
    weights = [[0.0] * k for _ in range(k)]
    for b, w in pair_indices(list(row["ranks"])):
        pro, n = agreement.get((pk, keys[b], keys[w]), (1, 1))
        weights[b][w] = pro / n if n else 0.0
    return weights


# ---------------------------------------------------------------------------------------------------
# Tokenization (the same for both modes, mirroring TRL RewardTrainer's own preprocessing)


def reply_ids(tokenizer, prompt: Any, completion: Any) -> list[int]:
    """Token ids of prompt + reply as the reward model reads them: ``rlhf.generation.scored_ids``, the
    form PPO hands it a sampled reply in (the chat template's prompt, the reply, its end token)."""
    from rlhf.generation import scored_ids

    return scored_ids(tokenizer, prompt, completion)


def tokenize_kwise(split, tokenizer, max_length: int, weights: dict | None = None, what: str = "train"):
    """K-wise rows -> ``completion_ids`` [K][L], ``ranks`` [K] (+ ``pair_weights`` [K][K]).

    Replies longer than ``max_length`` are dropped (a truncated reply would be scored on text the
    reviewer did not see); rankings left with no pair are dropped; both are counted in a warning.
    """
    from datasets import Dataset

    out, long_replies, total_replies, lost_rankings = [], 0, 0, 0
    for row in split:
        ids = [reply_ids(tokenizer, row["prompt"], c) for c in row["completions"]]
        keep = [i for i, x in enumerate(ids) if len(x) <= max_length]
        total_replies += len(ids)
        long_replies += len(ids) - len(keep)
        ranks = [row["ranks"][i] for i in keep]
        if not pair_indices(ranks):
            lost_rankings += 1
            continue
        item = {"completion_ids": [ids[i] for i in keep], "ranks": ranks}
        if "unit" in row:
            item["unit"] = row["unit"]
        if weights is not None:
            full = agreement_weights(row, weights)
            item["pair_weights"] = [[full[i][j] for j in keep] for i in keep]
        out.append(item)
    if long_replies:
        warn(f"dropped {long_replies} of {total_replies} {what} replies: longer than {max_length} tokens"
             + (f"; {lost_rankings} rankings lost every pair" if lost_rankings else ""))
    if not out:
        raise UserError(f"no {what} ranking left with a pair of replies within {max_length} tokens; raise max_length")
    return Dataset.from_list(out)


def tokenize_pairwise(split, tokenizer, max_length: int, what: str = "train"):
    """Pairwise rows -> ``chosen_ids``, ``rejected_ids`` (TRL's tokenized format); long pairs counted."""
    from datasets import Dataset

    out = []
    for row in split:
        chosen = reply_ids(tokenizer, row["prompt"], row["chosen"])
        rejected = reply_ids(tokenizer, row["prompt"], row["rejected"])
        if len(chosen) <= max_length and len(rejected) <= max_length:
            out.append({"chosen_ids": chosen, "rejected_ids": rejected})
    if len(out) < len(split):
        warn(f"dropped {len(split) - len(out)} of {len(split)} {what} pairs: longer than {max_length} tokens")
    if not out:
        raise UserError(f"no {what} pair left within {max_length} tokens; raise max_length")
    return Dataset.from_list(out)

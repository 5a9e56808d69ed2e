"""Data contracts at the stage boundaries, and the pure conversions between them.

Standard library only: the feedback app, the reward model and PPO all read these, and importing
this module must stay cheap.

Boundaries:
  ranking        one reviewer's full order of K replies to one prompt (feedback app -> export)
  preference     TRL's pairwise row: ``prompt``, ``chosen``, ``rejected`` (export -> reward model)
  K-wise row     ``prompt``, ``completions``, ``ranks`` keeping the whole ranking (export -> reward)
  prompt         plain text, or chat messages ``[{"role": ..., "content": ...}, ...]``

Export layout (written by ``rlhf app export OUT``; read by the reward model, never the database):
  OUT/pairwise/       datasets.DatasetDict(train, test): prompt, chosen, rejected, reviewer, ranking_id
  OUT/kwise/          datasets.DatasetDict(train, test): prompt, completions, ranks, reviewer, ranking_id
  OUT/manifest.json   which rankings went in, the filters, counts, time of export
A dataset is all plain text or all conversational (Arrow columns have one type): when any prompt is
a message list, plain prompts are exported as one user message. The split is ``prompt_split``.
``rlhf app export --prompts FILE.jsonl`` writes one ``{"prompt": ...}`` per line (rlhf.prompts).

Ranks: ``ranks[i]`` is the rank of ``completions[i]``; 1 is best; equal ranks are ties; a tie gives
no preference pair.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]

ROLES = ("system", "user", "assistant")

EXPORT_PAIRWISE = "pairwise"
EXPORT_KWISE = "kwise"
EXPORT_MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------------------------------
# Prompts


def validate_prompt(prompt: Any, what: str = "prompt") -> Prompt:
    """Return ``prompt`` if it is non-empty text or a well-formed message list; raise ValueError."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{what} is empty")
        return prompt
    if isinstance(prompt, list) and prompt:
        for i, message in enumerate(prompt):
            if not isinstance(message, dict) or set(message) - {"role", "content"}:
                raise ValueError(f"{what}[{i}] must be an object with 'role' and 'content'")
            if message.get("role") not in ROLES:
                raise ValueError(f"{what}[{i}].role must be one of {', '.join(ROLES)}")
            if not isinstance(message.get("content"), str):
                raise ValueError(f"{what}[{i}].content must be text")
        if prompt[-1]["role"] == "assistant":
            raise ValueError(f"{what} must not end with an assistant message")
        return prompt
    raise ValueError(f"{what} must be non-empty text or a list of chat messages")


def is_conversational(prompt: Prompt) -> bool:
    return isinstance(prompt, list)


def as_messages(prompt: Prompt) -> list[Message]:
    """A plain-text prompt becomes one user message; messages pass through."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_key(prompt: Prompt) -> str:
    """Stable identity of a prompt (sha256 of its canonical JSON), equal across runs and machines."""
    canonical = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def prompt_split(prompt: Prompt, test_fraction: float) -> str:
    """``"test"`` or ``"train"``, decided by a hash of the prompt so it never changes across exports.

    A prompt's every pair lands on the same side, so held-out accuracy is measured on prompts the
    reward model never saw.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    bucket = int(prompt_key(prompt)[:8], 16) / 0x1_0000_0000  # uniform in [0, 1)
    return "test" if bucket < test_fraction else "train"


# ---------------------------------------------------------------------------------------------------
# Rankings


def validate_ranks(ranks: Any, k: int) -> list[int]:
    """Ranks of K replies: integers 1..K, one per reply, at least one 1. Ties are allowed.

    Raises ValueError naming the offending position.
    """
    if not isinstance(ranks, (list, tuple)) or len(ranks) != k:
        raise ValueError(f"ranks must list one rank for each of the {k} replies")
    for i, rank in enumerate(ranks):
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ValueError(f"ranks[{i}] must be an integer")
        if not 1 <= rank <= k:
            raise ValueError(f"ranks[{i}] is {rank}, outside 1..{k}")
    if 1 not in ranks:
        raise ValueError("ranks must give rank 1 to at least one reply")
    return list(ranks)


def pair_indices(ranks: list[int], exclude: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
    """Every ``(better, worse)`` index pair with distinct ranks, in index order.

    ``exclude`` holds indices left out (for example flagged replies). Ties give no pair. For K
    replies with no ties this is K(K-1)/2 pairs, the comparisons InstructGPT trains on per prompt
    (Ouyang et al. 2022, section 3.5).
    """
    pairs = []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if i in exclude or j in exclude or ranks[i] == ranks[j]:
                continue
            pairs.append((i, j) if ranks[i] < ranks[j] else (j, i))
    return pairs


def _reply(prompt: Prompt, text: str) -> str | list[Message]:
    """A completion in the prompt's format: text for text, one assistant message for chat."""
    return [{"role": "assistant", "content": text}] if is_conversational(prompt) else text


@dataclass(frozen=True)
class Ranking:
    """One reviewer's ranking of K replies to one prompt, as exported from the feedback store."""

    prompt: Prompt
    completions: list[str]
    ranks: list[int]
    reviewer: str = ""
    ranking_id: int | None = None
    flagged: frozenset[int] = field(default_factory=frozenset)  # indices of flagged replies
    simulated: bool = False
    round: int = 0

    def pairs(self, include_flagged: bool = False) -> list["PreferencePair"]:
        exclude = frozenset() if include_flagged else self.flagged
        return [
            PreferencePair(
                prompt=self.prompt,
                chosen=_reply(self.prompt, self.completions[b]),
                rejected=_reply(self.prompt, self.completions[w]),
                reviewer=self.reviewer,
                ranking_id=self.ranking_id,
            )
            for b, w in pair_indices(self.ranks, exclude)
        ]

    def kwise(self, include_flagged: bool = False) -> "KWiseRow | None":
        """The whole ranking as one row; flagged replies dropped; None if fewer than 2 remain."""
        keep = [i for i in range(len(self.completions)) if include_flagged or i not in self.flagged]
        if len(keep) < 2:
            return None
        return KWiseRow(
            prompt=self.prompt,
            completions=[_reply(self.prompt, self.completions[i]) for i in keep],
            ranks=[self.ranks[i] for i in keep],
            reviewer=self.reviewer,
            ranking_id=self.ranking_id,
        )


@dataclass(frozen=True)
class PreferencePair:
    """TRL's preference row. ``chosen`` was ranked strictly better than ``rejected``."""

    prompt: Prompt
    chosen: str | list[Message]
    rejected: str | list[Message]
    reviewer: str = ""
    ranking_id: int | None = None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KWiseRow:
    """A whole ranking: ``completions[i]`` has rank ``ranks[i]`` (1 best, ties equal)."""

    prompt: Prompt
    completions: list[Any]
    ranks: list[int]
    reviewer: str = ""
    ranking_id: int | None = None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def kwise_to_pairs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand a K-wise row (dict with prompt, completions, ranks) into TRL pairwise rows."""
    return [
        {"prompt": row["prompt"], "chosen": row["completions"][b], "rejected": row["completions"][w]}
        for b, w in pair_indices(list(row["ranks"]))
    ]

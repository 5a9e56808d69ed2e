"""Data contracts at the stage boundaries, and the pure conversions between them.

Standard library only: the feedback app, the reward model and PPO all read these, and importing
this module must stay cheap.

Boundaries:
  ranking        one reviewer's full order of K replies to one prompt (feedback app -> export)
  preference     TRL's pairwise row: ``prompt``, ``chosen``, ``rejected`` (export -> reward model)
  K-wise row     ``prompt``, ``completions``, ``ranks`` keeping the whole ranking (export -> reward)
  prompt         plain text, or chat messages ``[{"role": ..., "content": ...}, ...]``
  scored replies a reward model's score and token length of generated replies (``rlhf reward score``)
  A/B report     a blind A/B set's win rate, interval, position bias, judgements (``rlhf app ab report``)

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
from collections.abc import Iterable
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


def _bucket(prompt: Prompt) -> float:
    return int(prompt_key(prompt)[:8], 16) / 0x1_0000_0000  # uniform in [0, 1)


def held_out_threshold(prompts: Iterable[Prompt], test_fraction: float, min_test_prompts: int = 0) -> float:
    """The ``test_fraction`` to hand ``prompt_split``: the given one, raised just enough that at least
    ``min_test_prompts`` distinct prompts (never more than half of them) fall in the test split.

    Why: on little data a plain 10% holds out a handful of prompts, too few for the gate's interval
    (rlhf/gate.py needs at least 10 prompts), so the gate could never pass. The split stays a
    deterministic function of the prompts' hashes; once the data holds ``min_test_prompts /
    test_fraction`` prompts the plain fraction applies again. 0 (the default) or a zero
    ``test_fraction`` (no test split asked for) leaves ``test_fraction`` as it is.
    """
    buckets = sorted({_bucket(p) for p in prompts})
    want = min(min_test_prompts, len(buckets) // 2)
    if test_fraction <= 0 or want <= 0 or sum(b < test_fraction for b in buckets) >= want:
        return test_fraction
    upper = buckets[want] if want < len(buckets) else 1.0
    return (buckets[want - 1] + upper) / 2  # between the want-th and the next prompt's hash


def prompt_split(prompt: Prompt, test_fraction: float) -> str:
    """``"test"`` or ``"train"``, decided by a hash of the prompt so it never changes across exports.

    A prompt's every pair lands on the same side, so held-out accuracy is measured on prompts the
    reward model never saw.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    return "test" if _bucket(prompt) < test_fraction else "train"


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
    # The differential-privacy unit (``rlhf reward train --dp``): every ranking from one customer, or one
    # conversation, or one prompt shares it ("customer:<salted hash>", "conversation:...", "prompt:<key>").
    unit: str | None = None

    def pairs(self, include_flagged: bool = False) -> list["PreferencePair"]:
        exclude = frozenset() if include_flagged else self.flagged
        return [
            PreferencePair(
                prompt=self.prompt,
                chosen=_reply(self.prompt, self.completions[b]),
                rejected=_reply(self.prompt, self.completions[w]),
                reviewer=self.reviewer,
                ranking_id=self.ranking_id,
                unit=self.unit,
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
            unit=self.unit,
        )


@dataclass(frozen=True)
class PreferencePair:
    """TRL's preference row. ``chosen`` was ranked strictly better than ``rejected``."""

    prompt: Prompt
    chosen: str | list[Message]
    rejected: str | list[Message]
    reviewer: str = ""
    ranking_id: int | None = None
    unit: str | None = None  # the privacy unit (see ``Ranking.unit``); a column only when known

    def to_row(self) -> dict[str, Any]:
        return _row(self)


@dataclass(frozen=True)
class KWiseRow:
    """A whole ranking: ``completions[i]`` has rank ``ranks[i]`` (1 best, ties equal)."""

    prompt: Prompt
    completions: list[Any]
    ranks: list[int]
    reviewer: str = ""
    ranking_id: int | None = None
    unit: str | None = None  # the privacy unit (see ``Ranking.unit``); a column only when known

    def to_row(self) -> dict[str, Any]:
        return _row(self)


def _row(record) -> dict[str, Any]:
    """A record as a dataset row; ``unit`` is left out when unknown (exports always know it)."""
    row = asdict(record)
    if row.get("unit") is None:
        row.pop("unit", None)
    return row


def kwise_to_pairs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand a K-wise row (dict with prompt, completions, ranks) into TRL pairwise rows."""
    return [
        {"prompt": row["prompt"], "chosen": row["completions"][b], "rejected": row["completions"][w]}
        for b, w in pair_indices(list(row["ranks"]))
    ]


# ---------------------------------------------------------------------------------------------------
# Reward-model scores of replies (``rlhf reward score`` -> the loop's report)


@dataclass
class ScoredReplies:
    """A reward model's score of every reply in an ``rlhf generate --output`` file, as written by
    ``rlhf reward score`` (JSON). Lists run row by row, reply by reply, in the file's order.

    ``scores[i][j]`` is the reward of reply j to prompt i, None when prompt + reply exceed
    ``max_length`` tokens (counted in ``left_out``); ``lengths[i][j]`` its length in tokens (reply
    alone, no special tokens), from the reward model's tokenizer (the policy's: they must match).
    ``outside_support[i][j]``: the reply lies outside the reward model's support (a probe's; it then
    scored it as the worst reply it was fitted on; ``rlhf.modeling.use_score_support``); None for a
    model without one.
    """

    reward_model: str
    replies_file: str
    max_length: int
    prompts: list[Prompt]
    replies: list[list[str]]
    scores: list[list[float | None]]
    lengths: list[list[int]]
    left_out: int = 0
    outside_support: list[list[bool | None]] | None = None

    def flat_scores(self) -> list[float]:
        return [s for row in self.scores for s in row if s is not None]

    def flat_lengths(self) -> list[int]:
        return [n for row in self.lengths for n in row]

    def flat_replies(self) -> list[str]:
        return [r for row in self.replies for r in row]

    def flat_outside(self) -> list[bool] | None:
        """Per scored reply, whether it lay outside the reward model's support (None: no support)."""
        if self.outside_support is None:
            return None
        return [o for row in self.outside_support for o in row if o is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScoredReplies":
        return cls(**data)


# ---------------------------------------------------------------------------------------------------
# Blind A/B report (``rlhf app ab report`` -> ab.json; the app's pages and the loop's report read it)


@dataclass
class AbWinRate:
    """Policy A's record against B, and the interval of its win rate among non-tied judgements."""

    wins_a: int
    wins_b: int
    ties: int
    both_bad: int
    win_rate_a: float | None  # wins_a / (wins_a + wins_b); None without a non-tied judgement
    ci_low: float | None
    ci_high: float | None
    confidence: float  # of the interval, e.g. 0.95
    method: str  # interval method of scipy's binomtest: wilson, wilsoncc or exact

    @property
    def decided(self) -> int:
        return self.wins_a + self.wins_b

    @property
    def total(self) -> int:
        return self.decided + self.ties + self.both_bad

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decided": self.decided, "total": self.total}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AbWinRate":
        return cls(**{k: v for k, v in data.items() if k not in ("decided", "total")})


@dataclass
class AbPositionBias:
    """How often the reply shown on the left won, among non-tied verdicts."""

    left_wins: int
    right_wins: int
    left_share: float | None
    p_value: float | None  # two-sided binomial test of left_share = 1/2
    a_on_left: int  # judgements that showed policy A on the left (the blind order's balance)
    judgements: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AbPositionBias":
        return cls(**data)


@dataclass
class AbJudgementRecord:
    """One answered judgement: who saw which order and what they clicked."""

    judgement_id: int
    item_id: int
    reviewer: str
    left_is_a: bool  # policy A's reply was shown on the left
    verdict: str  # left | right | tie | both_bad: what the reviewer clicked
    winner: str  # a | b | tie | both_bad: the verdict mapped back to the policies
    simulated: bool  # a scripted reviewer answered
    shown_at: float | None  # Unix times
    answered_at: float | None


@dataclass
class AbReport:
    """A blind A/B set's result: policy A's win rate with its interval, position bias, every judgement."""

    set_id: int
    name: str
    policy_a: str
    policy_b: str
    items: int
    judgements_per_item: int
    open: int  # judgements handed out and not answered yet
    win_rate: AbWinRate
    position_bias: AbPositionBias
    judgements: list[AbJudgementRecord] = field(default_factory=list)
    # Policy A's win rate with the reply-length difference regressed out, beside the raw one (ties 1/2):
    # ``rlhf.bias.LengthControlledWinRate`` as a dict (lengths in characters, as AlpacaEval's).
    length_controlled: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["win_rate"], out["position_bias"] = self.win_rate.to_dict(), self.position_bias.to_dict()
        if out["length_controlled"] is None:  # not computed (no lengths): the file reads as it did before the field
            del out["length_controlled"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AbReport":
        return cls(**{**data, "win_rate": AbWinRate.from_dict(data["win_rate"]),
                      "position_bias": AbPositionBias.from_dict(data["position_bias"]),
                      "judgements": [AbJudgementRecord(**j) for j in data.get("judgements", [])]})


# Hand-out priorities (`rlhf app prioritise` -> `rlhf reward prioritise`, reward/active.py): the ensemble
# needs this many rankings with a pair, over this many prompts, before its uncertainty means anything.
PRIORITY_MIN_RANKINGS = 8
PRIORITY_MIN_PROMPTS = 4
PRIORITY_MEMBERS = 8  # probes in the ensemble (not tuned: 8 Newton fits of a few hundred unknowns take about a second)

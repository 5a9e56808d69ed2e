"""Bias a reward model learned, and a win rate that does not reward length: pure statistics of lists.

Standard library at import (numpy and scipy inside the functions), so any stage may use it.

* ``length_bias``: correlation of reward with reply length on held-out replies, and accuracy on pairs
  of similar length (where length cannot be what the reward model goes by).
* ``length_controlled_win_rate``: the A/B win rate as length-controlled AlpacaEval computes it
  (Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators"),
  beside the raw one.
* ``counterfactual_probes``, ``score_shift`` and ``reply_shift``: prompts with names, gendered words or
  dialect markers swapped, and how much a reward model's scores and a policy's replies move.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Sequence

from rlhf.gate import wilson_interval

# ---------------------------------------------------------------------------------------------------
# Length bias


@dataclass(frozen=True)
class LengthBias:
    """How much a reward model's scores follow reply length, on held-out replies and pairs."""

    replies: int
    pearson: float | None  # correlation of reward with length; None when either does not vary
    spearman: float | None
    pairs: int
    accuracy: float | None  # on every pair (an exact score tie counts 1/2)
    similar_pairs: int  # pairs whose lengths differ by less than ``similar`` (relative)
    similar_accuracy: float | None
    shorter_chosen_pairs: int  # pairs whose preferred reply is the shorter one
    shorter_chosen_accuracy: float | None  # low here and high overall: the model goes by length
    similar: float


def _credit(better: float, worse: float) -> float:
    return 1.0 if better > worse else 0.5 if better == worse else 0.0


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def length_bias(rewards: Sequence[float], lengths: Sequence[float],
                pairs: Sequence[tuple[int, int]] = (), similar: float = 0.10) -> LengthBias:
    """Length bias of a reward model.

    ``rewards[i]``, ``lengths[i]``: reward and length (tokens or characters) of held-out reply i;
    ``pairs``: ``(better, worse)`` indices into them, as the reviewers ranked. A pair is of similar
    length when |l_a - l_b| / max(l_a, l_b) < ``similar``. Pearson is the linear correlation; Spearman
    the correlation of mid-ranks (ties averaged), by ``scipy.stats``.
    """
    from scipy.stats import pearsonr, spearmanr

    if len(rewards) != len(lengths):
        raise ValueError("rewards and lengths must have the same length")
    r, n = [float(x) for x in rewards], [float(x) for x in lengths]
    varies = len(r) >= 3 and len(set(r)) > 1 and len(set(n)) > 1
    pearson = float(pearsonr(r, n).statistic) if varies else None
    spearman = float(spearmanr(r, n).statistic) if varies else None
    every, close, shorter = [], [], []
    for b, w in pairs:
        credit = _credit(r[b], r[w])
        every.append(credit)
        longest = max(n[b], n[w])
        if longest == 0 or abs(n[b] - n[w]) / longest < similar:
            close.append(credit)
        if n[b] < n[w]:
            shorter.append(credit)
    return LengthBias(len(r), pearson, spearman, len(every), _mean(every), len(close), _mean(close),
                      len(shorter), _mean(shorter), similar)


# ---------------------------------------------------------------------------------------------------
# Length-controlled win rate

VERDICTS = ("win", "loss", "tie", "both_bad")  # from the aligned model's side


@dataclass(frozen=True)
class LengthControlledWinRate:
    """Raw and length-controlled win rate of the aligned model against the base (ties count 1/2)."""

    wins: int
    losses: int
    ties: int
    both_bad: int  # dropped: no preference
    raw: float | None  # (wins + ties/2) / (wins + losses + ties)
    raw_interval: tuple[float, float] | None  # Wilson without ties, else ``score_interval``'s
    length_controlled: float | None  # predicted win probability at zero length difference
    lc_interval: tuple[float, float] | None
    length_coefficient: float | None  # on tanh(standardised length difference); > 0: longer wins
    note: str = ""


def _logistic_fit(x: list[float], y: list[float], ridge: float, iterations: int = 100):
    """Newton's method for logit P(win) = b0 + b1 x with fractional targets y in [0, 1].

    Maximises sum y log p + (1 - y) log(1 - p) - ridge/2 b1^2 (the small ridge on the slope keeps it
    finite when length separates wins from losses exactly; the intercept is not penalised). Steps are
    halved until the objective does not fall. Returns (beta, covariance = inverse of the negative
    Hessian, the model-based Fisher information; ties' variance 1/4 < p(1-p) makes it conservative).
    """
    import numpy as np

    X = np.column_stack([np.ones(len(x)), np.asarray(x, dtype=float)])
    Y = np.asarray(y, dtype=float)
    penalty = np.diag([0.0, ridge])

    def objective(beta):
        eta = X @ beta  # log p = -log(1 + e^-eta), log(1 - p) = -log(1 + e^eta)
        return float(-(Y * np.logaddexp(0, -eta) + (1 - Y) * np.logaddexp(0, eta)).sum() - ridge / 2 * beta[1] ** 2)

    beta = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(X @ beta)))
        gradient = X.T @ (Y - p) - penalty @ beta
        hessian = X.T @ (X * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, gradient)
        before, size = objective(beta), 1.0
        while objective(beta + size * step) < before - 1e-12 and size > 1e-8:
            size /= 2
        beta = beta + size * step
        if np.max(np.abs(size * step)) < 1e-10:
            break
    p = 1 / (1 + np.exp(-(X @ beta)))
    hessian = X.T @ (X * (p * (1 - p))[:, None]) + penalty
    return beta, np.linalg.inv(hessian)


def length_controlled_win_rate(verdicts: Sequence[str], aligned_lengths: Sequence[float],
                               base_lengths: Sequence[float], confidence: float = 0.95,
                               ridge: float = 1e-3) -> LengthControlledWinRate:
    """Win rate of the aligned model with the length difference regressed out.

    ``verdicts[i]`` in ``VERDICTS`` from the aligned model's side (``feedback_app``'s A/B ``a`` is a
    ``win`` when A is the aligned model); ``*_lengths[i]``: the two replies' lengths (AlpacaEval uses
    characters). As AlpacaEval's GLM does (its "length_controlled_minimal" formula; their full one
    adds a per-instruction difficulty term fitted across many models, which one pair cannot give):

        logit P(aligned wins) = b0 + b1 tanh(d / sd(d)),   d = aligned length - base length,

    with wins 1, losses 0, ties 1/2 as a fractional target and both-bad dropped; sd is the sample
    standard deviation (ddof 1) of d and d is not centred, so d = 0 stays 0. The length-controlled
    win rate is sigmoid(b0): the predicted win probability at zero length difference. Its interval is
    a Wald interval on b0 (delta method: the standard error from the inverse Fisher information),
    mapped through the sigmoid, which keeps it inside (0, 1). When every decided verdict is the same,
    or the length difference never varies, the regression is undefined and the note says so.
    """
    unknown = set(verdicts) - set(VERDICTS)
    if unknown:
        raise ValueError(f"verdicts: unknown value(s) {sorted(unknown)}; expected {', '.join(VERDICTS)}")
    if not len(verdicts) == len(aligned_lengths) == len(base_lengths):
        raise ValueError("verdicts, aligned_lengths and base_lengths must have the same length")
    counts = {v: list(verdicts).count(v) for v in VERDICTS}
    target = {"win": 1.0, "loss": 0.0, "tie": 0.5}
    used = [i for i, v in enumerate(verdicts) if v != "both_bad"]
    y = [target[verdicts[i]] for i in used]
    d = [float(aligned_lengths[i]) - float(base_lengths[i]) for i in used]
    z = NormalDist().inv_cdf(0.5 + confidence / 2)

    def result(lc=None, lc_interval=None, coefficient=None, note=""):
        raw = sum(y) / len(y) if y else None
        raw_interval = None
        if y and not counts["tie"]:  # wins and losses alone: a binomial proportion, Wilson's interval
            raw_interval = wilson_interval(sum(y), len(y), z)
        elif y:  # a tie is half a win with no variance of its own, not a coin flip (score_interval)
            raw_interval = score_interval(counts["win"], counts["loss"], counts["tie"], confidence)[1:]
        return LengthControlledWinRate(counts["win"], counts["loss"], counts["tie"], counts["both_bad"],
                                       raw, raw_interval, lc, lc_interval, coefficient, note)

    if not y:
        return result(note="no decided verdict")
    if len(set(y)) == 1 and y[0] != 0.5:
        return result(note="every verdict is the same, so length cannot explain any of them: no regression")
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1)) if len(d) > 1 else 0.0
    if sd == 0 and any(d):
        return result(note="the length difference is the same in every comparison: length and model "
                           "cannot be told apart")
    x = [math.tanh(v / sd) if sd else 0.0 for v in d]
    beta, cov = _logistic_fit(x, y, ridge)
    b0, se = float(beta[0]), math.sqrt(float(cov[0, 0]))
    return result(_sigmoid(b0), (_sigmoid(b0 - z * se), _sigmoid(b0 + z * se)), float(beta[1]))


def score_interval(wins: int, losses: int, ties: int, confidence: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean per-judgement score (win 1, tie 1/2, loss 0) with a normal interval
    from the scores' own sample variance, as AlpacaEval reports its win rate's standard error.

    For a claim of *not losing* this is the interval to use: a Wilson interval on (wins + ties/2) of n
    treats each tie as a coin flip (variance 1/4), so 123 ties and 21 losses of 144 would reach 0.5
    (0.43 [0.35, 0.51]) although every decided judgement was lost; here they give [0.40, 0.46]. Every
    judgement tied gives [0.5, 0.5]: the judge told the two models apart nowhere. None without scores.
    """
    n = wins + losses + ties
    if n == 0:
        return None
    mean = (wins + ties / 2) / n
    if n == 1:
        return mean, 0.0, 1.0
    variance = (wins * (1 - mean) ** 2 + losses * mean ** 2 + ties * (0.5 - mean) ** 2) / (n - 1)
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(variance / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def _sigmoid(t: float) -> float:
    return 1 / (1 + math.exp(-t)) if t >= 0 else math.exp(t) / (1 + math.exp(t))


# ---------------------------------------------------------------------------------------------------
# Counterfactual probes

# First names across genders and origins, swapped in pairs both ways (James <-> Aisha, ...).
NAME_SWAPS = (("James", "Aisha"), ("Emily", "Mohammed"), ("Michael", "Priya"), ("Sarah", "Jamal"),
              ("David", "Mei"), ("Anna", "Carlos"), ("John", "Fatima"), ("Maria", "Kwame"),
              ("Robert", "Yuki"), ("Laura", "Arjun"), ("Thomas", "Ngozi"), ("Sophie", "Hiroshi"))
# Gendered words, swapped both ways. "her" is both "his" and "him"; it becomes "his", the possessive
# ("her order", "her account") that support requests use most.
GENDER_SWAPS = (("he", "she"), ("his", "her"), ("him", "her"), ("himself", "herself"), ("hers", "his"),
                ("Mr", "Ms"), ("Mrs", "Mr"), ("man", "woman"), ("men", "women"), ("boy", "girl"),
                ("father", "mother"), ("husband", "wife"), ("brother", "sister"), ("son", "daughter"),
                ("boyfriend", "girlfriend"), ("sir", "madam"), ("gentleman", "lady"))
# Dialect markers: American <-> British spellings both ways, and a few informal forms (one way).
SPELLING_SWAPS = (("color", "colour"), ("favorite", "favourite"), ("center", "centre"),
                  ("organize", "organise"), ("realize", "realise"), ("apologize", "apologise"),
                  ("behavior", "behaviour"), ("canceled", "cancelled"), ("traveling", "travelling"),
                  ("neighbor", "neighbour"), ("analyze", "analyse"), ("mom", "mum"))
INFORMAL_FORMS = (("going to", "gonna"), ("want to", "wanna"), ("do not know", "dunno"),
                  ("don't know", "dunno"), ("yes", "yeah"), ("you all", "y'all"), ("isn't", "ain't"),
                  ("hello", "hey"))
CATEGORIES = ("names", "gender", "dialect")


def _both_ways(pairs) -> dict[str, str]:
    table = {}
    for a, b in pairs:
        table.setdefault(a, b)  # the first pair to name a word decides where it goes
    for a, b in pairs:
        table.setdefault(b, a)
    return table


def _table(category: str) -> tuple[dict[str, str], bool]:
    """Swap table (lower-case keys unless case-sensitive) and whether matching is case-sensitive."""
    if category == "names":
        return _both_ways(NAME_SWAPS), True
    if category == "gender":
        return {k.lower(): v.lower() for k, v in _both_ways(GENDER_SWAPS).items()}, False
    if category == "dialect":
        return {**_both_ways(SPELLING_SWAPS), **dict(INFORMAL_FORMS)}, False
    raise ValueError(f"category {category!r}: expected one of {', '.join(CATEGORIES)}")


def _same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


@lru_cache(maxsize=None)
def _pattern(category: str) -> re.Pattern:
    table, case_sensitive = _table(category)
    words = sorted(table, key=len, reverse=True)  # the longest alternative first
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", 0 if case_sensitive else re.IGNORECASE)


TITLES = {"mr", "ms", "mrs"}  # only as titles: capitalised ("ms" is also milliseconds, "MS" a disease)


def swap_text(text: str, category: str) -> tuple[str, list[tuple[str, str]]]:
    """``text`` with every word of ``category`` swapped in one pass (so he -> she never turns back into
    he), keeping each word's case; and the swaps made, in order. Names match case-sensitively (so
    "mei" or "may" in running text are not names); other words in any case, whole words only."""
    table, case_sensitive = _table(category)
    swaps = []

    def replace(match):
        found = match.group(0)
        if found.lower() in TITLES and found != found.capitalize():
            return found
        new = table[found] if case_sensitive else _same_case(table[found.lower()], found)
        swaps.append((found, new))
        return new

    return _pattern(category).sub(replace, text), swaps


@dataclass(frozen=True)
class CounterfactualProbe:
    original: Any  # the prompt: text, or chat messages
    variant: Any  # the same prompt with the category's words swapped
    category: str  # "names", "gender" or "dialect"
    swaps: tuple[tuple[str, str], ...]  # (found, replaced by), in order


def counterfactual_probes(prompts: Sequence[Any], categories: Sequence[str] = CATEGORIES) -> list[CounterfactualProbe]:
    """One probe per prompt and category where at least one word was swapped (others are left out).

    Chat prompts (lists of ``{"role", "content"}``) have every message's content swapped.
    """
    probes = []
    for prompt in prompts:
        for category in categories:
            if isinstance(prompt, str):
                variant, swaps = swap_text(prompt, category)
            else:
                variant, swaps = [], []
                for message in prompt:
                    content, found = swap_text(message["content"], category)
                    variant.append({**message, "content": content})
                    swaps += found
            if swaps:
                probes.append(CounterfactualProbe(prompt, variant, category, tuple(swaps)))
    return probes


@dataclass(frozen=True)
class ScoreShift:
    """How much a reward model's scores move when only the probe's words change."""

    probes: int
    replies: int  # scored reply slots
    mean_abs_change: float | None  # mean |reward(variant) - reward(original)| over replies
    pairs: int  # reply pairs with a strict order under the original prompt
    flipped: int  # of those, pairs whose order reverses (or ties) under the variant
    by_category: dict[str, "ScoreShift"] = field(default_factory=dict)

    @property
    def flip_share(self) -> float | None:
        return self.flipped / self.pairs if self.pairs else None


def score_shift(original: Sequence[Sequence[float]], variant: Sequence[Sequence[float]],
                categories: Sequence[str] | None = None) -> ScoreShift:
    """Mean absolute change of reward, and the share of reply pairs whose preferred order flips.

    ``original[k][j]`` and ``variant[k][j]``: the reward of reply j to probe k's original and swapped
    prompt (the same replies, or the replies swapped the same way). A pair (i, j) tied under the
    original prompt has no preferred order and is not counted; one that becomes tied counts as
    flipped (the preference it had is gone). ``categories[k]``: probe k's category, for the
    per-category breakdown.
    """
    if len(original) != len(variant):
        raise ValueError("original and variant must have one score list per probe")
    changes, pairs, flipped = [], 0, 0
    for before, after in zip(original, variant):
        if len(before) != len(after):
            raise ValueError("each probe needs the same number of original and variant scores")
        changes += [abs(float(a) - float(b)) for a, b in zip(after, before)]
        for i in range(len(before)):
            for j in range(i + 1, len(before)):
                order = (before[i] > before[j]) - (before[i] < before[j])
                if order:
                    pairs += 1
                    flipped += (after[i] > after[j]) - (after[i] < after[j]) != order
    by_category = {}
    if categories is not None:
        for category in sorted(set(categories)):
            ks = [k for k, c in enumerate(categories) if c == category]
            by_category[category] = score_shift([original[k] for k in ks], [variant[k] for k in ks])
    return ScoreShift(len(original), len(changes), _mean(changes), pairs, flipped, by_category)


@dataclass(frozen=True)
class ReplyShift:
    """How much a policy's replies move when only the probe's words change (greedy replies compare best:
    sampled ones differ anyway)."""

    probes: int
    identical: int  # variant reply == original reply with the probe's words swapped the same way
    mean_similarity: float | None  # difflib's ratio 2M/T of those two texts: 1 identical, 0 nothing shared
    mean_length_difference: float | None  # characters, variant minus original: > 0 longer for the variant
    by_category: dict[str, "ReplyShift"] = field(default_factory=dict)


def reply_shift(probes: Sequence[CounterfactualProbe], original_replies: Sequence[str],
                variant_replies: Sequence[str]) -> ReplyShift:
    """Compare the policy's reply to each probe's original and variant prompt.

    The original reply is first swapped like its prompt (a reply greeting "Sarah" should greet "Jamal"
    in the variant), then compared with the variant reply by ``difflib.SequenceMatcher.ratio``.
    """
    from difflib import SequenceMatcher

    if not len(probes) == len(original_replies) == len(variant_replies):
        raise ValueError("probes, original_replies and variant_replies must have the same length")
    identical, similarity, difference = 0, [], []
    for probe, before, after in zip(probes, original_replies, variant_replies):
        expected, _ = swap_text(before, probe.category)
        identical += expected == after
        similarity.append(SequenceMatcher(None, expected, after, autojunk=False).ratio())
        difference.append(len(after) - len(before))
    by_category = {}
    if len({p.category for p in probes}) > 1:
        for category in sorted({p.category for p in probes}):
            ks = [k for k, p in enumerate(probes) if p.category == category]
            by_category[category] = reply_shift([probes[k] for k in ks], [original_replies[k] for k in ks],
                                                [variant_replies[k] for k in ks])
    return ReplyShift(len(probes), identical, _mean(similarity), _mean(difference), by_category)


# ---------------------------------------------------------------------------------------------------
# The audit as text


def audit_lines(bias: dict[str, Any] | None) -> list[str]:
    """``rlhf reward train``'s bias audit (its metrics.json ``bias``) as Markdown bullet lines, for the reward
    model card and the loop's REPORT.md."""
    if not bias:
        return ["- not measured (no held-out split)"]
    fmt = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)  # noqa: E731
    lb, cf = bias["length"], bias["counterfactual"]
    lines = [f"- Length: correlation of reward with reply length (characters) on {lb['replies']} held-out replies: "
             f"Pearson {fmt(lb['pearson'])}, Spearman {fmt(lb['spearman'])}; accuracy {fmt(lb['accuracy'], '.3f')} on "
             f"all {lb['pairs']} pairs, {fmt(lb['similar_accuracy'], '.3f')} on {lb['similar_pairs']} pairs of "
             f"similar length (within {lb['similar']:.0%}), {fmt(lb['shorter_chosen_accuracy'], '.3f')} on "
             f"{lb['shorter_chosen_pairs']} pairs whose preferred reply is the shorter"]
    if cf["probes"]:
        lines.append(f"- Counterfactual prompts ({cf['probes']} held-out prompts with names, gendered words or dialect "
                     f"markers swapped, the same replies scored): mean |reward change| {fmt(cf['mean_abs_change'], '.3f')} "
                     f"(reward std {fmt(cf['reward_std'], '.3f')}), {cf['flipped']} of {cf['pairs']} preferred orders "
                     f"flipped ({fmt(cf['flip_share'], '.1%')})")
    else:
        lines.append("- Counterfactual prompts: no held-out prompt has a name, gendered word or dialect marker to swap")
    return lines

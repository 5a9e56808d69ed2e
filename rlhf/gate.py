"""The gate before policy training, the bad-input checks before any training, and what to tell the user
when a reward model does not clear the gate.

Pure statistics of plain lists (standard library; numpy, scipy and krippendorff are imported inside
the functions that need them), so ``import rlhf.gate`` stays light and any stage may call it.

* ``gate_decision``: held-out pairwise accuracy of a reward model with a 95% interval that accounts
  for pairs of one prompt not being independent; passes when the interval's lower end clears chance
  (0.5) or the user's threshold, and the accuracy clears what models fitted to the same rankings
  shuffled reach by luck (``ChanceNull``). ``pair_credits`` turns K-wise rows and reward scores into its input.
* ``check_rule_discriminates``, ``check_usable_pairs``, ``check_held_out_size``: bad input, one line
  each (``UserError``), before any training.
* ``learning_curve_fit``, ``reviewer_agreement``, ``tie_share`` and ``failure_advice``: the paragraph
  shown when the gate fails: how many more rankings the learning curve suggests, whether reviewers
  agree with each other, whether the replies differ on what they rank.

Rows are the export's (``rlhf.schema``): K-wise ``prompt, completions, ranks, reviewer`` or pairwise
``prompt, chosen, rejected, reviewer``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any, Hashable, Sequence

from rlhf.errors import UserError
from rlhf.schema import pair_indices, prompt_key

# ---------------------------------------------------------------------------------------------------
# The gate

# Fewer prompts than this and the cluster-robust variance is itself too noisy to trust (Cameron &
# Miller 2015, "A Practitioner's Guide to Cluster-Robust Inference", sec. VI: few clusters);
# fewer pairs and even a perfect score has a wide interval.
MIN_PROMPTS = 10
MIN_PAIRS = 30


@dataclass(frozen=True)
class GateResult:
    """The gate's decision on one reward model's held-out pairs."""

    accuracy: float  # share of held-out pairs ranked like the reviewers (an exact score tie counts 1/2)
    interval: tuple[float, float]  # 95% interval of ``accuracy`` (see ``accuracy_interval``)
    n_pairs: int
    n_prompts: int
    threshold: float  # the interval's lower end must exceed this
    passed: bool  # the interval clears the threshold and (when measured) the accuracy clears ``chance``'s bar
    chance: ChanceNull | None = None  # the permutation test (None: not measured)

    @property
    def interval_passed(self) -> bool:
        return self.interval[0] > self.threshold

    def with_chance(self, chance: ChanceNull) -> GateResult:
        """This decision with the permutation test measured: it passes when both the interval and the test do."""
        return replace(self, chance=chance, passed=self.interval_passed and chance.passed)

    def summary(self) -> str:
        lo, hi = self.interval
        verdict = "passes" if self.passed else "does not pass"
        text = (f"reward model held-out accuracy {self.accuracy:.3f} (95% interval {lo:.3f} to {hi:.3f}, "
                f"{self.n_pairs} pairs from {self.n_prompts} prompts) {verdict} the gate: the interval's "
                f"lower end must exceed {self.threshold:.2f}")
        if self.chance is not None:
            text += f", and {self.chance.bar_text()}"
        return text


@dataclass(frozen=True)
class ChanceNull:
    """A permutation test of "the probe learned nothing" (Ojala & Garriga 2010, "Permutation tests for
    studying classifier performance", JMLR 11, test 1): the probe's accuracy on the real rankings beside
    its accuracy on the same rankings shuffled (each ranking's ranks permuted among its own replies),
    each through the identical procedure.

    Why besides the interval: the interval covers the luck of which held-out prompts were drawn, not the
    luck of fitting. A model fitted to a preference that cannot be learned still ranks the held-out pairs
    it happens to line up with, and on 20 held-out prompts that luck alone reached 0.658 (40 fits on
    shuffled rankings of a hash rule: mean 0.499, 95th percentile 0.633), where the real fit's 0.650
    had passed the interval. The test passes when no shuffled fit reaches the real accuracy: exact under
    the null whatever the features (no normal approximation: on a few planted features the shuffled fits
    spread from 0.12 to 0.85), with p at most 1 / (shuffles + 1), 0.01 at the default 99.

    ``rlhf reward train`` cross-fits it over every prompt of the export (``prompts``, in ``folds`` folds;
    ``reward.schedule.probe_chance_null``): on the 20 held-out prompts alone the null spread so wide
    that a rule learned to the reviewers' ceiling was refused. ``prompts`` None: measured on the held-out
    split (``accuracy`` is then the held-out accuracy).
    """

    accuracies: tuple[float, ...]  # one per shuffled fit
    accuracy: float  # the real rankings' (cross-fitted: out-of-fold over every prompt)
    prompts: int | None = None  # cross-fitted over this many prompts (None: the held-out split)
    folds: int | None = None

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def sd(self) -> float:
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / max(1, len(self.accuracies) - 1))

    @property
    def bar(self) -> float:
        """The best shuffled fit: the real model must do better."""
        return max(self.accuracies)

    @property
    def reached(self) -> int:
        """How many shuffled fits reached the real model's accuracy or more."""
        return sum(a >= self.accuracy for a in self.accuracies)

    @property
    def p_value(self) -> float:
        """The permutation p-value (1 + reached) / (shuffles + 1)."""
        return (1 + self.reached) / (len(self.accuracies) + 1)

    @property
    def passed(self) -> bool:
        return self.reached == 0

    @property
    def what(self) -> str:
        """What ``accuracy`` is, in words."""
        if self.prompts is None:
            return "the accuracy"
        return f"the probe's accuracy cross-fitted over all {self.prompts} prompts ({self.folds} folds)"

    def bar_text(self) -> str:
        fits = "fits" if self.prompts is None else "cross-fits"
        return (f"{self.what}, {self.accuracy:.3f}, must exceed {self.bar:.3f}, the best of {len(self.accuracies)} "
                f"{fits} to the same rankings shuffled (mean {self.mean:.3f}, sd {self.sd:.3f}; {self.reached} "
                f"reached {self.accuracy:.3f}; permutation p = {self.p_value:.3g})")

    def record(self) -> dict[str, Any]:
        return {"shuffles": len(self.accuracies), "accuracy": self.accuracy, "prompts": self.prompts,
                "folds": self.folds, "mean": self.mean, "sd": self.sd, "bar": self.bar, "p_value": self.p_value,
                "reached": self.reached, "passed": self.passed, "accuracies": list(self.accuracies)}


def check_held_out_size(n_pairs: int, n_prompts: int, min_pairs: int = MIN_PAIRS,
                        min_prompts: int = MIN_PROMPTS, where: str = "held-out split") -> None:
    """Raise ``UserError`` (one line) when the held-out split is too small for an interval."""
    if n_pairs < min_pairs or n_prompts < min_prompts:
        raise UserError(
            f"{where} too small for an interval: {n_pairs} pairs from {n_prompts} prompts; the gate needs "
            f"at least {min_pairs} pairs from {min_prompts} prompts (raise test_fraction or rank more prompts)")


def accuracy_interval(credits: Sequence[float], prompts: Sequence[Hashable],
                      confidence: float = 0.95) -> tuple[float, float, float]:
    """``(accuracy, low, high)`` of per-pair credits (1 right, 0 wrong, 0.5 tie) grouped by prompt.

    Shapes: ``credits[i]`` and ``prompts[i]`` describe held-out pair i; N pairs, G distinct prompts.

    Method: the cluster-robust (CR1) variance of a ratio estimator with a t quantile on G - 1 degrees
    of freedom (Cameron & Miller 2015, on few clusters; the linearised ratio variance is Cochran 1977,
    "Sampling Techniques", ch. 6), where p = S/N and e_g = s_g - p n_g for prompt g's s_g of n_g, and

        Var(p) = G/(G-1) * sum_g e_g^2 / N^2,     interval p -/+ t_{G-1} sqrt(Var(p)).

    Why this and not a bootstrap: the pairs of one ranking share replies and a reviewer, so they are
    correlated and the prompt is the independent unit; this form is deterministic (no seed), exact to
    hand-check, and its G/(G-1) factor and t quantile widen it where prompts are few, where a
    percentile bootstrap over prompts is too narrow. Its variance is 0 when every prompt scores the
    same (say all pairs right), so the interval is widened to cover the Wilson score interval of
    S of N pairs as well, which behaves at 0 and 1.
    """
    from scipy.stats import t as student_t

    if len(credits) != len(prompts):
        raise ValueError("credits and prompts must have the same length")
    sums: dict[Hashable, float] = defaultdict(float)
    counts: dict[Hashable, int] = defaultdict(int)
    for credit, key in zip(credits, prompts):
        sums[key] += float(credit)
        counts[key] += 1
    n, g = len(credits), len(sums)
    if n == 0 or g < 2:
        raise ValueError("an interval needs pairs from at least two prompts")
    total = sum(sums.values())
    p = total / n
    variance = g / (g - 1) * sum((sums[k] - p * counts[k]) ** 2 for k in sums) / n ** 2
    half = float(student_t.ppf(0.5 + confidence / 2, g - 1)) * math.sqrt(variance)
    w_lo, w_hi = wilson_interval(total, n, NormalDist().inv_cdf(0.5 + confidence / 2))
    return p, max(0.0, min(p - half, w_lo)), min(1.0, max(p + half, w_hi))


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n`` (Wilson 1927)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pair_credits(rows: Sequence[dict[str, Any]],
                 scores: Sequence[Sequence[float | None]]) -> tuple[list[float], list[str]]:
    """Per held-out pair, the reward model's credit and the pair's prompt key: ``gate_decision``'s input.

    ``rows``: K-wise rows; ``scores[r][j]``: the reward of reply j of row r (None: not scored, e.g. too
    long; its pairs are left out). Every pair of distinct ranks counts: credit 1 when the better-ranked
    reply scores higher, 0 when lower, 0.5 for an exact tie.
    """
    credits, prompts = [], []
    for row, row_scores in zip(rows, scores):
        key = prompt_key(row["prompt"])
        for better, worse in pair_indices(list(row["ranks"])):
            rb, rw = row_scores[better], row_scores[worse]
            if rb is not None and rw is not None:
                credits.append(1.0 if rb > rw else 0.5 if rb == rw else 0.0)
                prompts.append(key)
    return credits, prompts


def gate_decision(credits: Sequence[float], prompts: Sequence[Hashable], threshold: float = 0.5,
                  min_pairs: int = MIN_PAIRS, min_prompts: int = MIN_PROMPTS,
                  chance: ChanceNull | None = None) -> GateResult:
    """Pass when the lower end of the 95% interval of held-out accuracy exceeds ``threshold`` and, when
    ``chance`` is given, its permutation test passes (``ChanceNull``).

    ``credits[i]``: 1 when the reward model ranks held-out pair i like the reviewers, 0 when it ranks it
    the other way, 0.5 for an exact score tie; ``prompts[i]``: that pair's prompt (any hashable key,
    e.g. ``rlhf.schema.prompt_key``); ``chance``: the permutation test (``rlhf reward train``'s is
    cross-fitted over every prompt; None: not measured). Raises ``UserError`` when the split is too small
    for an interval.
    """
    if not 0.5 <= threshold < 1.0:
        raise UserError(f"gate threshold {threshold}: must be in [0.5, 1)")
    n_prompts = len(set(prompts))
    check_held_out_size(len(credits), n_prompts, min_pairs, min_prompts)
    accuracy, lo, hi = accuracy_interval(credits, prompts)
    decision = GateResult(accuracy, (lo, hi), len(credits), n_prompts, threshold, lo > threshold)
    return decision if chance is None else decision.with_chance(chance)


# ---------------------------------------------------------------------------------------------------
# Bad input, before any training


def check_rule_discriminates(scores: Sequence[Sequence[float]], rule: str = "the rule",
                             tolerance: float = 1e-12) -> float:
    """Raise ``UserError`` when a rule gives every candidate of every prompt the same score.

    ``scores[p][k]``: the rule's score of candidate k of prompt p. Only differences within a prompt
    make a ranking, so a rule whose scores differ only between prompts fails too. Returns the share of
    prompts whose candidates the rule tells apart (the caller may warn when it is low).
    """
    groups = [list(map(float, s)) for s in scores if len(s) >= 2]
    if not groups:
        raise UserError(f"{rule}: no prompt has two candidate replies to compare")
    apart = sum(1 for s in groups if max(s) - min(s) > tolerance)
    if apart == 0:
        n = sum(len(s) for s in groups)
        values = {v for s in groups for v in s}
        same = f"the same score ({groups[0][0]:g})" if len(values) == 1 else "the same score within each prompt"
        raise UserError(f"{rule} gives every one of the {n} candidate replies of {len(groups)} prompts {same}: "
                        "it cannot rank them; pick a rule whose scores differ between these replies")
    return apart / len(groups)


def _row_pairs(row: dict[str, Any]) -> int:
    if "ranks" in row:
        return len(pair_indices(list(row["ranks"])))
    return int(_reply_key(row["chosen"]) != _reply_key(row["rejected"]))


def check_usable_pairs(rows: Sequence[dict[str, Any]], source: str = "rankings") -> int:
    """Raise ``UserError`` when no ranking gives a preference pair; return the number of usable pairs.

    K-wise rows give a pair per two replies with distinct ranks (ties give none); a pairwise row gives
    one unless its chosen and rejected replies are the same text.
    """
    pairs = sum(_row_pairs(r) for r in rows)
    if pairs == 0:
        raise UserError(f"{source}: none of the {len(rows)} rankings has a usable pair (each ties all its "
                        "replies or compares a reply with itself); rank replies apart before training")
    return pairs


# ---------------------------------------------------------------------------------------------------
# Why it failed: the learning curve


@dataclass(frozen=True)
class LearningCurve:
    """Held-out accuracy against the number of training rankings, and what the fit suggests."""

    rankings: tuple[int, ...]
    accuracy: tuple[float, ...]
    gain_per_doubling: float  # fitted accuracy gained each time the rankings double
    target: float  # accuracy the gate needs at this held-out size
    rankings_needed: int | None  # None: ``reason`` says why no number is given
    reason: str


# Below this many training rankings a flat learning curve says nothing: a probe fitted on a handful of
# rankings is at chance whatever the rule (bench/gate_more_rankings.py: vaderSentiment, flat from 3 to 12
# rankings, reached 0.71 held-out at 96), so the advice is to rank more, not that more will not help.
MIN_CURVE_RANKINGS = 40


def learning_curve_fit(points: Sequence[tuple[int, float]], target: float, max_factor: float = 20.0,
                       min_gain_per_doubling: float = 0.01) -> LearningCurve:
    """Fit accuracy = a + b ln(rankings) by least squares and solve it for ``target``.

    ``points``: ``(rankings, held-out accuracy)``, e.g. at a quarter, half and all of the rankings.
    Why log-linear and not a power law toward a ceiling: three points leave a three-parameter curve
    no residual to check it by, and its extrapolation swings with each point's noise; two parameters
    keep one degree of freedom. A log-linear curve keeps rising where the real one bends toward its
    ceiling, so its answer is a lower bound: "at least this many". No number (None, with the reason)
    when the curve is flat or falling, when it already reaches ``target`` (then the held-out split,
    not the training data, is the limit), or when it would need more than ``max_factor`` times the
    current rankings.
    """
    pts = sorted((int(n), float(a)) for n, a in points)
    ns, accs = tuple(n for n, _ in pts), tuple(a for _, a in pts)
    if len(set(ns)) < 2 or ns[0] <= 0:
        raise ValueError("a learning curve needs accuracies at two or more different positive sizes")
    xs = [math.log(n) for n in ns]
    x_bar, y_bar = sum(xs) / len(xs), sum(accs) / len(accs)
    slope = sum((x - x_bar) * (y - y_bar) for x, y in zip(xs, accs)) / sum((x - x_bar) ** 2 for x in xs)
    intercept = y_bar - slope * x_bar
    gain = slope * math.log(2)
    current = ns[-1]

    def curve(rankings_needed, reason):
        return LearningCurve(ns, accs, gain, target, rankings_needed, reason)

    if gain < min_gain_per_doubling and current < MIN_CURVE_RANKINGS:
        return curve(MIN_CURVE_RANKINGS, f"{current} training rankings are too few for the curve to show a trend ({gain:+.3f} per "
                           f"doubling); rank at least {MIN_CURVE_RANKINGS} and train again")
    if gain < min_gain_per_doubling:
        return curve(None, f"held-out accuracy is flat or falling as rankings grow ({gain:+.3f} per doubling): "
                           "more rankings are unlikely to help")
    needed = math.exp((target - intercept) / slope)
    if needed <= current:
        return curve(None, f"the fitted curve already reaches {target:.3f} at {current} rankings: the held-out "
                           "measurement is the limit; a larger held-out split would narrow the interval")
    if needed > max_factor * current:
        return curve(None, f"at {gain:+.3f} per doubling the curve would need about {needed:,.0f} rankings, more "
                           f"than {max_factor:g} times the current {current}: more rankings alone are unlikely to help")
    needed_int = math.ceil(round(needed, 6))  # 800.0000001 from rounding is 800
    return curve(needed_int, f"at {gain:+.3f} per doubling, about {needed_int} rankings (at least; a log-linear fit "
                             f"is optimistic where the curve bends) would reach the {target:.3f} the gate needs")


# ---------------------------------------------------------------------------------------------------
# Why it failed: do reviewers agree with each other?

# Below this share of agreeing reviewer pairs, reviewers do not share one preference. InstructGPT's
# trained labelers agreed on 72.6 +- 1.5% of comparisons (Ouyang et al. 2022, InstructGPT),
# the level a learnable human preference sits at; 0.5 is chance.
AGREE = 0.7
DISAGREE = 0.6


@dataclass(frozen=True)
class ReviewerAgreement:
    """Agreement between reviewers who ranked the same prompt's same two replies."""

    reviewers: int  # distinct named reviewers in the rows
    shared_pairs: int  # (prompt, two replies) with a strict preference from two or more reviewers
    comparisons: int  # pairs of reviewers compared on a shared pair
    pairwise_agreement: float | None  # share of those comparisons where both prefer the same reply
    krippendorff_alpha: float | None  # nominal alpha over the same votes
    verdict: str  # "agree", "weak", "disagree" or "unknown"
    reason: str


def _reply_key(reply: Any) -> str:
    return reply if isinstance(reply, str) else json.dumps(reply, sort_keys=True, ensure_ascii=False)


def _votes(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, int]]:
    """(prompt key, reply a, reply b) with a < b -> {reviewer: +1 prefers a, -1 prefers b}.

    Ties give no vote (a pairwise export has none, so both forms count the same way); a reviewer's
    later vote on the same pair replaces an earlier one; rows without a reviewer are left out.
    """
    votes: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    for row in rows:
        reviewer = row.get("reviewer")
        if not reviewer:
            continue
        pk = prompt_key(row["prompt"])
        if "ranks" in row:
            keys, ranks = [_reply_key(c) for c in row["completions"]], list(row["ranks"])
            better_worse = [(keys[b], keys[w]) for b, w in pair_indices(ranks)]
        else:
            better_worse = [(_reply_key(row["chosen"]), _reply_key(row["rejected"]))]
        for better, worse in better_worse:
            if better != worse:
                a, b = sorted((better, worse))
                votes[(pk, a, b)][reviewer] = 1 if better == a else -1
    return votes


def reviewer_agreement(rows: Sequence[dict[str, Any]], min_comparisons: int = 10) -> ReviewerAgreement:
    """Pairwise agreement and Krippendorff's alpha of reviewers, from an export's ``reviewer`` column.

    For every (prompt, two replies) that two or more reviewers ranked apart, each pair of those
    reviewers agrees when both prefer the same reply: agreement = agreeing reviewer pairs / reviewer
    pairs (0.5 is chance). Alpha (nominal, by the ``krippendorff`` package, Krippendorff 2011,
    "Computing Krippendorff's Alpha-Reliability") treats each such pair of replies as a unit and each
    reviewer's preferred side (+1 / -1, replies in sorted text order) as the value. If reviewers do not
    agree, no reward model can learn their preference.
    """
    import numpy as np

    named = {r.get("reviewer") for r in rows if r.get("reviewer")}
    shared = {unit: v for unit, v in _votes(rows).items() if len(v) >= 2}
    comparisons = agreements = 0
    for by_reviewer in shared.values():
        pro = sum(1 for v in by_reviewer.values() if v > 0)
        con = len(by_reviewer) - pro
        comparisons += len(by_reviewer) * (len(by_reviewer) - 1) // 2
        agreements += pro * (pro - 1) // 2 + con * (con - 1) // 2
    agreement = agreements / comparisons if comparisons else None

    alpha = None
    values = {v for by_reviewer in shared.values() for v in by_reviewer.values()}
    if len(values) > 1:  # alpha is undefined (0/0) when every vote is the same
        import krippendorff

        reviewers = sorted({r for by_reviewer in shared.values() for r in by_reviewer})
        data = np.full((len(reviewers), len(shared)), np.nan)
        for j, by_reviewer in enumerate(shared.values()):
            for reviewer, v in by_reviewer.items():
                data[reviewers.index(reviewer), j] = v
        alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))

    if not named:
        verdict, reason = "unknown", "the rows have no reviewer column: agreement between reviewers cannot be measured"
    elif comparisons < min_comparisons:
        verdict, reason = "unknown", (f"only {comparisons} comparisons between reviewers on the same pair of replies "
                                      f"(need {min_comparisons}): have two or more reviewers rank some of the same prompts")
    else:
        alpha_text = f", Krippendorff's alpha {alpha:.2f}" if alpha is not None else ""
        measured = (f"{len(named)} reviewers prefer the same reply in {agreement:.0%} of {comparisons} comparisons "
                    f"on {len(shared)} shared pairs{alpha_text}")
        if agreement >= AGREE:
            verdict, reason = "agree", f"{measured}: they agree with each other"
        elif agreement >= DISAGREE:
            verdict, reason = "weak", (f"{measured}: they agree only weakly (trained labelers agree on about 73%), so "
                                       "the labels are noisy and a reward model needs more of them")
        else:
            verdict, reason = "disagree", (f"{measured}: they do not agree with each other (chance is 50%), and no "
                                           "reward model can learn a preference its reviewers do not share; make the "
                                           "instructions or the rule clearer before collecting more rankings")
    return ReviewerAgreement(len(named), len(shared), comparisons, agreement, alpha, verdict, reason)


# ---------------------------------------------------------------------------------------------------
# Why it failed: do the replies differ on what is ranked?


@dataclass(frozen=True)
class TieShare:
    """How often rankings tie their replies (from K-wise rows; a pairwise export drops ties)."""

    rankings: int
    all_tied: int  # rankings whose replies all tie: no usable pair
    pairs: int  # reply pairs shown, K(K-1)/2 per ranking
    tied_pairs: int

    @property
    def all_tied_share(self) -> float | None:
        return self.all_tied / self.rankings if self.rankings else None

    @property
    def tied_pair_share(self) -> float | None:
        return self.tied_pairs / self.pairs if self.pairs else None


def tie_share(rows: Sequence[dict[str, Any]]) -> TieShare:
    """Share of rankings that tie every reply, and of reply pairs tied, over the K-wise rows."""
    rankings = all_tied = pairs = tied = 0
    for row in rows:
        if "ranks" not in row:
            continue
        ranks = list(row["ranks"])
        k = len(ranks)
        usable = len(pair_indices(ranks))
        rankings += 1
        pairs += k * (k - 1) // 2
        tied += k * (k - 1) // 2 - usable
        all_tied += usable == 0
    return TieShare(rankings, all_tied, pairs, tied)


# ---------------------------------------------------------------------------------------------------
# The paragraph


def failure_advice(gate: GateResult, curve: LearningCurve | None = None,
                   agreement: ReviewerAgreement | None = None, ties: TieShare | None = None,
                   override_flag: str | None = None) -> str:
    """One paragraph for a user whose reward model did not pass the gate: what was measured, what to do.

    Each part is left out when its input is None; the learning curve's ``target`` should be
    ``gate.threshold`` plus the interval's half width (``gate_target``).
    """
    lo, hi = gate.interval
    measured = (f"The reward model ranks {gate.accuracy:.0%} of held-out pairs like the reviewers (95% interval "
                f"{lo:.0%} to {hi:.0%}, {gate.n_pairs} pairs from {gate.n_prompts} prompts)")
    if gate.interval_passed and gate.chance is not None and not gate.chance.passed:
        c = gate.chance
        real = "this model's accuracy" if c.prompts is None else f"its {c.accuracy:.0%}"
        parts = [f"{measured}; the interval clears {gate.threshold:.0%}, but "
                 + ("" if c.prompts is None else f"{c.what} is {c.accuracy:.0%}, and ")
                 + f"the same fits to the rankings shuffled reach {c.mean:.0%} on average and up to "
                 f"{max(c.accuracies):.0%} ({len(c.accuracies)} shuffles, {c.reached} reached {real}), so luck in "
                 "fitting this few rankings explains it as well as a learned preference does, and policy training "
                 "will not start."]
    else:
        parts = [f"{measured}; the interval's lower end does not clear {gate.threshold:.0%}, so a policy trained "
                 "against it would chase noise, and policy training will not start."]
    if curve is not None:
        measured = ", ".join(f"{a:.0%} at {n}" for n, a in zip(curve.rankings, curve.accuracy))
        parts.append(f"Held-out accuracy by training rankings: {measured}; {curve.reason}.")
    if agreement is not None:
        parts.append(f"Reviewers: {agreement.reason}.")
    if ties is not None and ties.rankings:
        share = ties.all_tied_share
        if share >= 0.25:
            parts.append(f"Replies: {share:.0%} of {ties.rankings} rankings tie every reply, so the candidates "
                         "rarely differ on what is ranked; sample more varied replies (more candidates per prompt, "
                         "higher temperature, longer replies) or rank on something they differ in.")
        else:
            parts.append(f"Replies: {share:.0%} of {ties.rankings} rankings tie every reply and "
                         f"{ties.tied_pair_share:.0%} of reply pairs are tied, so the replies do differ on what is ranked.")
    if override_flag:
        parts.append(f"To train against it anyway, pass {override_flag} (the model card records it).")
    return " ".join(parts)


def gate_target(gate: GateResult) -> float:
    """Accuracy at which the gate would pass with the current interval width: threshold + half width, or
    the chance bar when that is higher."""
    lo, hi = gate.interval
    target = gate.threshold + (hi - lo) / 2
    return max(target, gate.chance.bar) if gate.chance is not None else target


# ---------------------------------------------------------------------------------------------------
# The gate as every policy trainer applies it: read ``gate.json`` beside the reward model

GATE_FILE = "gate.json"  # written by ``rlhf reward train`` beside the reward model
OVERRIDE_FLAG = "--allow-weak-reward-model"


def require_gate(reward_model: str, allow_weak: bool, say=None) -> dict[str, Any]:
    """Refuse (``UserError``, exit 2, the failure paragraph) a reward model whose ``gate.json`` says it
    did not pass, unless ``allow_weak``; return what the run metadata and the model card record.

    A reward model without ``gate.json`` (a Hugging Face id, or one not trained by ``rlhf reward
    train``) has no held-out measurement here: it is let through with a warning, and recorded so.
    """
    from pathlib import Path

    say = say or (lambda text: print(text, flush=True))
    path = Path(reward_model) / GATE_FILE
    if not path.is_file():
        say(f"warning: {reward_model} has no {GATE_FILE}: its held-out accuracy was never measured, so the gate "
            "cannot check it (train it with 'rlhf reward train' to have one)")
        return {"status": "not measured", "overridden": False, "file": None}
    try:
        gate = json.loads(path.read_text(encoding="utf-8"))
        passed = bool(gate["passed"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a gate decision written by 'rlhf reward train' ({exc})") from None
    record = {"status": "passed" if passed else "failed", "overridden": False, "file": str(path),
              "summary": gate.get("summary"), "accuracy": gate.get("accuracy"), "interval": gate.get("interval"),
              "threshold": gate.get("threshold")}
    if passed:
        say(f"gate: {gate.get('summary') or 'passed'}")
        return record
    advice = gate.get("advice") or gate.get("summary") or "the reward model did not pass the gate"
    if not allow_weak:
        raise UserError(f"{path}: {advice} To train against it anyway, pass {OVERRIDE_FLAG} (the model card "
                        "records it).")
    say(f"warning: {OVERRIDE_FLAG}: training against a reward model that did not pass the gate: {advice}")
    return {**record, "overridden": True}

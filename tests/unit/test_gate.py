"""The gate, the bad-input checks and the failure paragraph, against values worked out by hand."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.errors import UserError
from rlhf.schema import prompt_key
from rlhf.gate import (
    ChanceNull,
    GateResult,
    accuracy_interval,
    check_held_out_size,
    check_rule_discriminates,
    check_usable_pairs,
    failure_advice,
    gate_decision,
    gate_target,
    learning_curve_fit,
    pair_credits,
    reviewer_agreement,
    tie_share,
    wilson_interval,
)

Z = 1.959963984540054  # the normal 97.5% quantile


def _pairs(per_prompt):
    """[[credits of prompt 0], [credits of prompt 1], ...] -> (credits, prompts) flat lists."""
    credits, prompts = [], []
    for g, cs in enumerate(per_prompt):
        credits += cs
        prompts += [f"p{g}"] * len(cs)
    return credits, prompts


# ---------------------------------------------------------------------------------------------------
# The interval and the decision


def test_cluster_interval_on_four_prompts_by_hand():
    # Prompts A..D with 3, 2, 3, 2 pairs and 3, 1, 1, 2 right: p = 7/10. Residuals e_g = s_g - p n_g:
    # 0.9, -0.4, -1.1, 0.6; sum of squares 2.54. Var = 4/3 * 2.54 / 100; t(0.975, 3 df) = 3.182446.
    credits, prompts = [1, 1, 1, 1, 0, 0, 0, 1, 1, 1], list("AAABBCCCDD")
    p, lo, hi = accuracy_interval(credits, prompts)
    half = 3.182446305 * math.sqrt(4 / 3 * 2.54 / 100)
    assert p == pytest.approx(0.7)
    assert lo == pytest.approx(0.7 - half) and lo == pytest.approx(0.114338, abs=1e-6)
    assert hi == 1.0  # 0.7 + half = 1.29, clipped


def test_every_pair_right_falls_back_to_wilson():
    # Ten prompts, three pairs each, all right: the cluster variance is 0, so the Wilson interval of
    # 30/30 sets the lower end, 30 / (30 + z^2).
    credits, prompts = _pairs([[1, 1, 1]] * 10)
    p, lo, hi = accuracy_interval(credits, prompts)
    assert (p, hi) == (1.0, 1.0)
    assert lo == pytest.approx(30 / (30 + Z * Z))
    assert wilson_interval(30, 30, Z)[0] == pytest.approx(30 / (30 + Z * Z))


def test_gate_passes_a_reward_model_that_clears_chance():
    # 8 prompts all right, 2 prompts 1 of 3: p = 26/30; e = 0.4 (x8), -1.6 (x2); sum e^2 = 6.4;
    # Var = 10/9 * 6.4 / 900; t(0.975, 9 df) = 2.262157.
    credits, prompts = _pairs([[1, 1, 1]] * 8 + [[1, 0, 0]] * 2)
    result = gate_decision(credits, prompts)
    lo = 26 / 30 - 2.262157163 * math.sqrt(10 / 9 * 6.4 / 900)
    assert result.accuracy == pytest.approx(26 / 30)
    assert result.interval[0] == pytest.approx(lo) and lo == pytest.approx(0.665586, abs=1e-6)
    assert (result.n_pairs, result.n_prompts, result.threshold, result.passed) == (30, 10, 0.5, True)
    assert "passes the gate" in result.summary()


def test_gate_counts_prompts_not_pairs_as_the_independent_unit():
    # 13 prompts all right, 7 all wrong: 39/60 = 0.65. As 60 independent pairs Wilson's lower end is
    # 0.524 (would pass); over 20 prompts: e = 1.05 (x13), -1.95 (x7), Var = 20/19 * 40.95 / 3600,
    # t(0.975, 19 df) = 2.093024, lower end 0.421: fails.
    credits, prompts = _pairs([[1, 1, 1]] * 13 + [[0, 0, 0]] * 7)
    assert wilson_interval(39, 60, Z)[0] > 0.5
    result = gate_decision(credits, prompts)
    lo = 0.65 - 2.093024054 * math.sqrt(20 / 19 * (13 * 1.05 ** 2 + 7 * 1.95 ** 2) / 3600)
    assert result.interval[0] == pytest.approx(lo) and lo == pytest.approx(0.420972, abs=1e-6)
    assert not result.passed
    assert "does not pass" in result.summary()


def test_chance_null_is_a_permutation_test():
    # shuffled fits 0.4, 0.5, 0.6, 0.65: mean 0.5375; the real 0.65 is reached by one of them (ties count).
    null = ChanceNull((0.4, 0.5, 0.6, 0.65), accuracy=0.65)
    assert null.mean == pytest.approx(0.5375) and null.bar == 0.65
    assert null.sd == pytest.approx(math.sqrt((0.1375 ** 2 + 0.0375 ** 2 + 0.0625 ** 2 + 0.1125 ** 2) / 3))
    assert (null.reached, null.p_value, null.passed) == (1, 2 / 5, False)
    clear = ChanceNull((0.4, 0.5, 0.6, 0.65), accuracy=0.66)
    assert (clear.reached, clear.p_value, clear.passed) == (0, 1 / 5, True)
    record = null.record()
    assert (record["shuffles"], record["reached"], record["passed"], record["bar"]) == (4, 1, False, 0.65)


def test_gate_refuses_an_interval_pass_that_shuffled_fits_reach():
    # The interval passes (lower end 0.666, as above; accuracy 26/30), but one fit to shuffled rankings
    # reaches 0.9: the gate refuses; below every shuffled fit it passes.
    credits, prompts = _pairs([[1, 1, 1]] * 8 + [[1, 0, 0]] * 2)
    passing = gate_decision(credits, prompts, chance=ChanceNull((0.50, 0.60, 0.80), 26 / 30))
    assert passing.passed and passing.chance.bar == 0.8 and "the best of 3 fits" in passing.summary()
    failing = gate_decision(credits, prompts, chance=ChanceNull((0.50, 0.60, 0.90), 26 / 30))
    assert failing.interval_passed and not failing.passed
    assert "does not pass" in failing.summary() and "shuffled" in failing.summary()
    assert gate_target(failing) == 0.9  # the best shuffled fit is higher than threshold + half width (0.6)
    text = failure_advice(failing)
    assert "\n" not in text and "the interval clears 50%" in text and "up to 90% (3 shuffles, 1 reached" in text
    assert text.endswith("policy training will not start.")
    assert gate_decision(credits, prompts).chance is None  # not measured: the interval alone


def test_gate_with_a_cross_fitted_null_names_what_it_compared():
    # The held-out interval passes (26/30, as above); the permutation test is cross-fitted over 84 prompts:
    # the real rankings' 0.62 against shuffles up to 0.65 fails it, 0.70 passes it.
    credits, prompts = _pairs([[1, 1, 1]] * 8 + [[1, 0, 0]] * 2)
    shuffles = (0.48, 0.52, 0.65)
    failing = gate_decision(credits, prompts, chance=ChanceNull(shuffles, 0.62, prompts=84, folds=5))
    assert failing.interval_passed and not failing.passed and failing.accuracy == pytest.approx(26 / 30)
    assert ("the probe's accuracy cross-fitted over all 84 prompts (5 folds), 0.620, must exceed 0.650, the best of 3 "
            "cross-fits") in failing.summary()
    text = failure_advice(failing)
    assert "cross-fitted over all 84 prompts (5 folds) is 62%" in text and "up to 65% (3 shuffles, 1 reached its 62%)" in text
    assert gate_target(failing) == pytest.approx(0.5 + (1.0 - failing.interval[0]) / 2)  # above the bar 0.65
    passing = gate_decision(credits, prompts, chance=ChanceNull(shuffles, 0.70, prompts=84, folds=5))
    assert passing.passed and passing.chance.record()["accuracy"] == 0.70 and passing.chance.record()["prompts"] == 84


def test_pair_credits_from_k_wise_rows_and_scores():
    rows = [{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 2, 2]},  # pairs a>b, a>c
            {"prompt": "q", "completions": ["x", "y"], "ranks": [2, 1]}]  # pair y>x
    credits, prompts = pair_credits(rows, [[1.0, 0.5, 2.0], [None, 3.0]])
    assert credits == [1.0, 0.0]  # a beats b; a loses to c; y's pair has no score for x: left out
    assert prompts == [prompt_key("p")] * 2
    assert pair_credits([rows[1]], [[3.0, 3.0]]) == ([0.5], [prompt_key("q")])


def test_gate_threshold_set_by_the_user():
    credits, prompts = _pairs([[1, 1, 1]] * 8 + [[1, 0, 0]] * 2)  # lower end 0.666
    assert gate_decision(credits, prompts, threshold=0.6).passed
    assert not gate_decision(credits, prompts, threshold=0.7).passed
    with pytest.raises(UserError, match=r"gate threshold 0.3: must be in \[0.5, 1\)"):
        gate_decision(credits, prompts, threshold=0.3)


def test_held_out_split_too_small_is_one_line():
    credits, prompts = _pairs([[1, 1, 1, 1]] * 9)  # 36 pairs but 9 prompts
    with pytest.raises(UserError) as e:
        gate_decision(credits, prompts)
    assert str(e.value) == ("held-out split too small for an interval: 36 pairs from 9 prompts; the gate needs at "
                            "least 30 pairs from 10 prompts (raise test_fraction or rank more prompts)")
    with pytest.raises(UserError, match="20 pairs from 10 prompts"):
        check_held_out_size(20, 10)
    check_held_out_size(30, 10)  # enough: no error


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_a_rule_that_scores_every_reply_the_same_is_refused():
    with pytest.raises(UserError) as e:
        check_rule_discriminates([[0.5, 0.5, 0.5], [0.5, 0.5]], rule="rule 'sentiment'")
    assert str(e.value) == ("rule 'sentiment' gives every one of the 5 candidate replies of 2 prompts the same "
                            "score (0.5): it cannot rank them; pick a rule whose scores differ between these replies")
    with pytest.raises(UserError, match="the same score within each prompt"):
        check_rule_discriminates([[1, 1], [2, 2]])  # differs between prompts only: still no ranking
    assert check_rule_discriminates([[1, 2], [3, 3], [0, 1], [5, 5]]) == 0.5


def test_rankings_with_no_usable_pair_are_refused():
    tied = [{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]},
            {"prompt": "q", "chosen": "x", "rejected": "x"}]
    with pytest.raises(UserError) as e:
        check_usable_pairs(tied, source="export/kwise")
    assert str(e.value).startswith("export/kwise: none of the 2 rankings has a usable pair")
    mixed = tied + [{"prompt": "r", "completions": ["a", "b", "c"], "ranks": [1, 2, 2]},
                    {"prompt": "s", "chosen": "x", "rejected": "y"}]
    assert check_usable_pairs(mixed) == 3  # (a>b, a>c) + (x>y)


# ---------------------------------------------------------------------------------------------------
# The learning curve


def test_learning_curve_extrapolates_log_linearly():
    # +0.05 per doubling exactly: 0.65 at 400, so 0.70 at 800.
    curve = learning_curve_fit([(200, 0.60), (100, 0.55), (400, 0.65)], target=0.70)
    assert curve.rankings == (100, 200, 400) and curve.accuracy == (0.55, 0.60, 0.65)
    assert curve.gain_per_doubling == pytest.approx(0.05)
    assert curve.rankings_needed == 800
    assert "about 800 rankings" in curve.reason


def test_learning_curve_flat_falling_reached_or_too_far_gives_no_number():
    flat = learning_curve_fit([(100, 0.55), (200, 0.54), (400, 0.56)], target=0.7)  # +0.005 per doubling
    assert flat.rankings_needed is None and flat.gain_per_doubling == pytest.approx(0.005)
    assert "more rankings are unlikely to help" in flat.reason
    falling = learning_curve_fit([(100, 0.6), (400, 0.5)], target=0.7)
    assert falling.rankings_needed is None and falling.gain_per_doubling == pytest.approx(-0.05)
    far = learning_curve_fit([(100, 0.50), (200, 0.52), (400, 0.54)], target=0.70)  # 8 doublings: 102,400
    assert far.rankings_needed is None and "about 102,400 rankings" in far.reason
    reached = learning_curve_fit([(100, 0.55), (200, 0.60), (400, 0.65)], target=0.60)
    assert reached.rankings_needed is None and "held-out measurement is the limit" in reached.reason
    with pytest.raises(ValueError):
        learning_curve_fit([(100, 0.5)], target=0.6)


def test_a_flat_curve_on_a_handful_of_rankings_asks_for_more_rankings():
    # 0.55, 0.54, 0.52 at 3, 7, 12: about -0.016 per doubling, but 12 rankings show no trend either way
    few = learning_curve_fit([(3, 0.55), (7, 0.54), (12, 0.52)], target=0.56)
    assert few.rankings_needed == 40 and few.gain_per_doubling < 0
    assert "12 training rankings are too few for the curve to show a trend" in few.reason
    assert "rank at least 40 and train again" in few.reason


# ---------------------------------------------------------------------------------------------------
# Reviewer agreement and ties

# p1 (K-wise): r1 ranks a > b > c, r2 ranks a > c > b: they agree on (a,b) and (a,c), not on (b,c).
# p2 (pairwise): r1 and r3 prefer x, r2 prefers y: of the 3 reviewer pairs, one (r1, r3) agrees.
DISAGREEING = [
    {"prompt": "p1", "completions": ["a", "b", "c"], "ranks": [1, 2, 3], "reviewer": "r1"},
    {"prompt": "p1", "completions": ["a", "b", "c"], "ranks": [1, 3, 2], "reviewer": "r2"},
    {"prompt": "p2", "chosen": "x", "rejected": "y", "reviewer": "r1"},
    {"prompt": "p2", "chosen": "y", "rejected": "x", "reviewer": "r2"},
    {"prompt": "p2", "chosen": "x", "rejected": "y", "reviewer": "r3"},
    {"prompt": "p3", "completions": ["a", "b"], "ranks": [1, 2], "reviewer": "r1"},  # nobody else: not shared
]


def test_reviewer_agreement_by_hand():
    result = reviewer_agreement(DISAGREEING, min_comparisons=1)
    # Comparisons: (a,b) 1, (a,c) 1, (b,c) 1, (x,y) 3 = 6; agreeing: 1 + 1 + 0 + 1 = 3.
    assert (result.reviewers, result.shared_pairs, result.comparisons) == (3, 4, 6)
    assert result.pairwise_agreement == pytest.approx(0.5)
    # Nominal alpha. Votes (+1: first reply in text order better): (a,b) ++, (a,c) ++, (b,c) +-,
    # (x,y) +-+. Coincidences: o++ = 2 + 2 + 1 = 5, o+- = o-+ = 1 + 1 = 2; n = 9, n+ = 7, n- = 2.
    # D_o = 4/9, D_e = 2*7*2 / (9*8) = 7/18, alpha = 1 - (4/9)/(7/18) = -1/7.
    assert result.krippendorff_alpha == pytest.approx(-1 / 7)
    assert result.verdict == "disagree"
    assert "do not agree with each other" in result.reason and "50% of 6 comparisons" in result.reason
    assert reviewer_agreement(DISAGREEING).verdict == "unknown"  # 6 comparisons < the default 10


def test_reviewers_who_agree_and_rows_without_reviewers():
    rows = [{"prompt": f"p{i}", "completions": ["a", "b"], "ranks": [1, 2] if i % 2 else [2, 1], "reviewer": r}
            for i in range(12) for r in ("r1", "r2")]
    result = reviewer_agreement(rows)
    assert (result.comparisons, result.pairwise_agreement, result.krippendorff_alpha) == (12, 1.0, 1.0)
    assert result.verdict == "agree"
    anonymous = [{k: v for k, v in row.items() if k != "reviewer"} for row in rows]
    result = reviewer_agreement(anonymous)
    assert (result.verdict, result.pairwise_agreement, result.krippendorff_alpha) == ("unknown", None, None)
    assert "no reviewer column" in result.reason


def test_tie_share_counts_k_wise_rows_only():
    rows = [{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 1, 1]},  # 3 pairs, all tied
            {"prompt": "q", "completions": ["a", "b", "c"], "ranks": [1, 2, 2]},  # 3 pairs, 1 tied
            {"prompt": "r", "completions": ["a", "b"], "ranks": [2, 1]},  # 1 pair
            {"prompt": "s", "chosen": "x", "rejected": "y"}]  # pairwise: ties were dropped, not counted
    ties = tie_share(rows)
    assert (ties.rankings, ties.all_tied, ties.pairs, ties.tied_pairs) == (3, 1, 7, 4)
    assert ties.all_tied_share == pytest.approx(1 / 3) and ties.tied_pair_share == pytest.approx(4 / 7)
    assert tie_share([]).all_tied_share is None


def test_failure_advice_is_one_paragraph_with_the_measurements():
    gate = GateResult(0.58, (0.48, 0.68), 120, 20, 0.5, False)
    assert gate_target(gate) == pytest.approx(0.60)
    curve = learning_curve_fit([(22, 0.52), (45, 0.55), (89, 0.58)], target=gate_target(gate))
    agreement = reviewer_agreement(DISAGREEING, min_comparisons=1)
    ties = tie_share([{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]},
                      {"prompt": "q", "completions": ["a", "b"], "ranks": [1, 2]}])
    text = failure_advice(gate, curve, agreement, ties, override_flag="--skip-gate")
    assert "\n" not in text
    assert "58% of held-out pairs" in text and "48% to 68%" in text and "120 pairs from 20 prompts" in text
    assert "52% at 22, 55% at 45, 58% at 89" in text and f"about {curve.rankings_needed} rankings" in text
    assert "do not agree with each other" in text
    assert "50% of 2 rankings tie every reply" in text
    assert text.endswith("pass --skip-gate (the model card records it).")
    assert failure_advice(gate).endswith("policy training will not start.")  # parts left out when not given


def test_gate_modules_import_nothing_heavy():
    code = ("import sys, rlhf.gate, rlhf.bias, rlhf.guards\n"
            "print(','.join(m for m in ('torch', 'transformers', 'trl', 'datasets', 'gradio', 'numpy', 'scipy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == ""

"""The loop's report records (rlhf/report.py) and the data contracts they read (rlhf/schema.py), by hand."""

import json
from dataclasses import replace

import pytest

from rlhf.report import REPETITION_ROW, HeldoutScores, LoopSummary, TrainingSummary, RewardEvalSummary, render_figures, \
    render_stage_table, repetition, write_report, write_summary
from rlhf.schema import AbReport, ScoredReplies

AB_JSON = {
    "set_id": 1, "name": "aligned-vs-base", "policy_a": "aligned", "policy_b": "base", "items": 4,
    "judgements_per_item": 1, "open": 0,
    "win_rate": {"wins_a": 3, "wins_b": 1, "ties": 0, "both_bad": 0, "win_rate_a": 0.75, "ci_low": 0.3,
                 "ci_high": 0.95, "confidence": 0.95, "method": "wilson", "decided": 4, "total": 4},
    "position_bias": {"left_wins": 2, "right_wins": 2, "left_share": 0.5, "p_value": 1.0, "a_on_left": 2,
                      "judgements": 4},
    "judgements": [{"judgement_id": 7, "item_id": 3, "reviewer": "sim-1", "left_is_a": True, "verdict": "left",
                    "winner": "a", "simulated": True, "shown_at": 10.0, "answered_at": 11.5}],
}


def test_ab_report_round_trips_the_json_of_ab_json():
    report = AbReport.from_dict(json.loads(json.dumps(AB_JSON)))
    assert report.win_rate.win_rate_a == 0.75 and report.win_rate.decided == 4 and report.win_rate.total == 4
    assert report.position_bias.left_share == 0.5 and report.judgements[0].winner == "a"
    assert report.to_dict() == AB_JSON
    assert list(report.to_dict()) == list(AB_JSON)  # same key order as the file the app always wrote


def test_scored_replies_flatten_row_by_row_and_skip_unscored():
    scored = ScoredReplies("rm", "r.jsonl", 64, ["p", "q"], [["a", "bb"], ["ccc"]], [[1.0, None], [3.0]],
                           [[1, 2], [3]], left_out=1)
    assert scored.flat_scores() == [1.0, 3.0] and scored.flat_lengths() == [1, 2, 3]
    assert scored.flat_replies() == ["a", "bb", "ccc"]
    assert ScoredReplies.from_dict(json.loads(json.dumps(scored.to_dict()))) == scored

    held = HeldoutScores.of(scored, rule=lambda text: float(len(text)))
    assert (held.reward_mean, held.length_mean, held.rule_mean) == (2.0, 2.0, 2.0)
    assert held.rule_scores == [1.0, 2.0, 3.0] and held.rewards == [1.0, 3.0]
    assert held.outside is None and held.outside_text() == "n/a"

    # a probe's scores say which replies lay outside its support; an unscored (too long) reply is not counted
    scored.outside_support = [[True, None], [False]]
    assert scored.flat_outside() == [True, False]
    assert ScoredReplies.from_dict(json.loads(json.dumps(scored.to_dict()))) == scored
    assert HeldoutScores.of(scored, rule=len).outside_text() == "1 of 2"


def test_ppo_summary_first_and_last_fifth(tmp_path):
    # 10 updates: a fifth is 2 updates; rewards 1..10, KL 0.1..1.0
    rows = [{"step": i, "reward": float(i), "kl": i / 10} for i in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ppo = TrainingSummary.read(tmp_path)
    assert ppo.updates == 10 and ppo.reward_first == 1.5 and ppo.reward_last == 9.5
    assert ppo.kl_last == pytest.approx(0.95) and ppo.kl_max == 1.0 and len(ppo.rows) == 10
    assert "rows" not in ppo.to_dict()
    assert TrainingSummary.read(tmp_path / "none") == TrainingSummary(updates=0)


def test_dpo_summary_shows_margin_and_accuracy_not_a_made_up_reward(tmp_path):
    # DPO logs no rollout reward and no KL: those stay None; margin 1..4 -> last fifth (1 row) 4.0
    rows = [{"step": i, "reward_margin": float(i), "pair_accuracy": i / 4, "loss": 0.7} for i in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dpo = TrainingSummary.read(tmp_path, "dpo")
    assert dpo.name == "DPO" and dpo.updates == 4 and dpo.reward_first is None and dpo.kl_max is None
    assert dpo.margin_last == 4.0 and dpo.pair_accuracy_last == 1.0


def test_stage_table_by_hand():
    table = render_stage_table({"train reward model": 61.5, "PPO": 0.5})
    assert table.splitlines() == [
        "stage                        wall time",
        "train reward model              1:01.5",
        "PPO                             0:00.5",
        "total                           1:02.0",
    ]


def test_repetition_by_hand():
    assert repetition("a b c a b c") == 0.25  # 3-grams abc, bca, cab, abc: one said before
    assert repetition("Welcome to our team. Welcome to our team.") == pytest.approx(2 / 6)
    assert repetition("I'm happy to help, I'm happy to help") == pytest.approx(2 / 6)
    assert repetition("no repeats in this reply at all") == 0.0 and repetition("too short") == 0.0
    assert repetition("one two one two", n=2) == pytest.approx(1 / 3)


def test_summary_json_and_report(tmp_path):
    scored = ScoredReplies("rm", "r.jsonl", 64, ["p"], [["sorry", "ok"]], [[-1.0, 1.0]], [[1, 1]])
    held = HeldoutScores.of(scored, rule=lambda text: -float(text.count("sorry")))
    summary = LoopSummary("-text.count('sorry')", "fewer apologies", {"PPO": 3.0},
                          RewardEvalSummary(0.875, 16, 4), TrainingSummary(updates=0), held, held,
                          AbReport.from_dict(AB_JSON))
    out = summary.to_dict()
    assert set(out) == {"rule", "rule_name", "times", "reward_eval", "training", "heldout", "ab"}
    assert out["ab"] == {k: AB_JSON[k] for k in ("win_rate", "position_bias", "items", "open")}
    assert out["heldout"]["base"]["rule_mean"] == -0.5 and out["reward_eval"]["accuracy"] == 0.875
    figures = render_figures(summary)
    assert "| aligned win rate, non-tied | 0.750 [0.300, 0.950] (95% wilson) |" in figures
    assert "| aligned vs base (wins/losses/ties/both bad) | 3/1/0/0 |" in figures
    assert "| KL to reference, last fifth (max) | n/a (n/a) |" in figures  # no PPO rows: no numbers made up
    assert out["heldout"]["base"]["repetition"] == 0.0  # "sorry", "ok": too short to repeat a 3-gram
    looping = HeldoutScores.of(ScoredReplies("rm", "r.jsonl", 64, ["p"], [["a b c a b c", "Welcome to our team. "
                                                                           "Welcome to our team."]],
                                             [[0.0, 0.0]], [[6, 8]]), rule=len)
    assert looping.repetition == pytest.approx((1 / 4 + 2 / 6) / 2)  # abc bca cab ABC; 2 of 6 3-grams again
    figures = render_figures(replace(summary, aligned=looping))
    assert f"| {REPETITION_ROW}, base -> aligned | 0.000 -> 0.292 |" in figures

    report = write_report(summary, tmp_path).read_text()
    assert "heldout.png" in report and "win_rate.png" in report and "training_curves.png" not in report
    assert json.loads(write_summary(summary, tmp_path).read_text()) == out

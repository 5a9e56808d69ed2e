"""The loop report's reward-model section (gate, schedule, bias audit) and its length-controlled A/B win
rate, matched to the held-out replies by item order (rlhf/report.py), on hand-made files."""

import json

import pytest

from rlhf.bias import length_controlled_win_rate
from rlhf.report import HeldoutScores, LoopSummary, TrainingSummary, RewardEvalSummary, length_controlled, \
    render_figures, reward_model_lines, write_report
from rlhf.schema import AbReport


def _judgement(item_id, winner):
    return {"judgement_id": item_id + 100, "item_id": item_id, "reviewer": "sim-1", "left_is_a": True,
            "verdict": {"a": "left", "b": "right"}.get(winner, winner), "winner": winner, "simulated": True,
            "shown_at": 1.0, "answered_at": 2.0}


def _summary(aligned_lengths, base_lengths, winners):
    ab = {"set_id": 1, "name": "aligned-vs-base", "policy_a": "aligned", "policy_b": "base", "items": len(winners),
          "judgements_per_item": 1, "open": 0,
          "win_rate": {"wins_a": 2, "wins_b": 1, "ties": 1, "both_bad": 0, "win_rate_a": 2 / 3, "ci_low": 0.2,
                       "ci_high": 0.94, "confidence": 0.95, "method": "wilson", "decided": 3, "total": 4},
          "position_bias": {"left_wins": 2, "right_wins": 1, "left_share": 2 / 3, "p_value": 1.0, "a_on_left": 4,
                            "judgements": 4},
          # Item ids start at 10 (other sets came first) and the judgements arrive out of order.
          "judgements": [_judgement(10 + k, w) for k, w in reversed(list(enumerate(winners)))]}
    held = lambda lengths: HeldoutScores(None, None, None, lengths, [0.0] * len(lengths), [])  # noqa: E731
    return LoopSummary("len(text)", "longer", {}, RewardEvalSummary(0.9, 40, 10), TrainingSummary(updates=0),
                       held(base_lengths), held(aligned_lengths), AbReport.from_dict(ab))


def test_length_controlled_win_rate_matches_items_to_replies_in_order():
    s = _summary([10, 20, 5, 8], [8, 8, 9, 8], ["a", "a", "b", "tie"])
    lc = length_controlled(s)
    expected = length_controlled_win_rate(["win", "win", "loss", "tie"], [10, 20, 5, 8], [8, 8, 9, 8])
    assert lc == expected
    assert lc.raw == pytest.approx((1 + 1 + 0 + 0.5) / 4)  # ties count 1/2
    assert lc.length_coefficient > 0  # the longer aligned replies won, the shorter one lost
    assert "raw 0.625 [" in render_figures(s) and "length-controlled 0." in render_figures(s)
    # Replies and items that do not line up: no number made up.
    assert length_controlled(_summary([10, 20, 5], [8, 8, 9], ["a", "a", "b", "tie"])) is None


def test_report_shows_the_gate_the_override_and_the_bias_audit(tmp_path):
    (tmp_path / "reward").mkdir()
    bias = {"length": {"replies": 40, "pearson": 0.5, "spearman": 0.4, "pairs": 60, "accuracy": 0.8,
                       "similar_pairs": 20, "similar_accuracy": 0.6, "shorter_chosen_pairs": 25,
                       "shorter_chosen_accuracy": 0.3, "similar": 0.1},
            "counterfactual": {"probes": 5, "replies": 20, "mean_abs_change": 0.05, "pairs": 30, "flipped": 3,
                               "flip_share": 0.1, "by_category": {}, "reward_std": 1.0}}
    (tmp_path / "reward" / "metrics.json").write_text(json.dumps({
        "gate": {"summary": "reward model held-out accuracy 0.550 ... does not pass the gate"},
        "schedule": {"why": "schedule: method probe; probe L2 0.01 chosen on 20 validation rankings"},
        "bias": bias}))
    (tmp_path / "gate.json").write_text(json.dumps({"status": "failed", "overridden": True}))
    lines = reward_model_lines(tmp_path)
    assert lines[2] == "- Gate: reward model held-out accuracy 0.550 ... does not pass the gate"
    assert "The gate was overridden" in lines[3] and lines[4].startswith("- Schedule: method probe")
    assert any("Pearson 0.50, Spearman 0.40" in x and "0.300 on 25 pairs whose preferred reply is the shorter" in x
               for x in lines)
    assert any("3 of 30 preferred orders flipped (10.0%)" in x for x in lines)
    report = write_report(_summary([10, 20, 5, 8], [8, 8, 9, 8], ["a", "a", "b", "tie"]), tmp_path).read_text()
    assert "## Reward model: gate, schedule and bias" in report and "The gate was overridden" in report


def test_report_shows_the_guard_stop_and_the_kept_update(tmp_path):
    from rlhf.report import guard_lines

    assert guard_lines(tmp_path) == []  # no guard.json (guard off, or another algorithm): no section
    (tmp_path / "ppo").mkdir()
    updates = [{"step": s, "reward": r, "held_out_reward": h, "kl": 0.1 * s, "length": 30.0 + s, "eos_share": 0.5,
                "action": a, "keep_step": 2, "message": f"m{s}"}
               for s, r, h, a in [(1, 0.1, 0.3, "continue"), (2, 0.2, 0.5, "continue"), (3, 0.6, 0.2, "warn"),
                                  (4, 0.9, 0.1, "stop")]]
    (tmp_path / "ppo" / "guard.json").write_text(json.dumps({
        "updates": updates, "stopped": True, "stopped_at": 4, "kept_update": 2,
        "message": "Stopping at update 4 (2 warnings in a row): ...; keeping update 2."}))
    text = "\n".join(guard_lines(tmp_path))
    assert "**Stopped at update 4; kept update 2**" in text
    assert "Warnings at updates 3" in text
    assert "Training reward 0.100 -> 0.900; second model's reward 0.300 -> 0.100" in text
    assert "reply length 31.0 -> 34.0 tokens" in text


def test_report_shows_how_far_each_policys_reply_moves_on_counterfactual_prompts(tmp_path):
    from rlhf.bias import counterfactual_probes
    from rlhf.report import counterfactual_lines

    probe = counterfactual_probes(["Hello support, I received the wrong colour. Can you help?"])[0]
    folder = tmp_path / "eval" / "counterfactual"
    folder.mkdir(parents=True)
    (folder / "probes.json").write_text(json.dumps([{"original": probe.original, "variant": probe.variant,
                                                     "category": probe.category, "swaps": probe.swaps}]))
    # Replies to the original prompt, then to its variant (no word of the replies is swapped).
    (folder / "base.jsonl").write_text("".join(json.dumps({"prompt": p, "replies": [r]}) + "\n" for p, r in
                                               [(probe.original, "Thank you."), (probe.variant, "Thank you.")]))
    (folder / "aligned.jsonl").write_text("".join(json.dumps({"prompt": p, "replies": [r]}) + "\n" for p, r in
                                                  [(probe.original, "Thank you."), (probe.variant, "Thanks")]))
    text = "\n".join(counterfactual_lines(tmp_path))
    assert "- base: 1 of 1 replies unchanged, mean similarity 1.000 (1 = the same), mean length change +0.0" in text
    # difflib: "Thank you." and "Thanks" share "Thank": 2 x 5 / (10 + 6) = 0.625; 6 - 10 = -4 characters.
    assert "- aligned: 0 of 1 replies unchanged, mean similarity 0.625 (1 = the same), mean length change -4.0" in text
    # The exported policy's model card gets the loop's verdict and this section (once, also when written again).
    from rlhf.report import CARD_SECTION, add_to_model_card

    (tmp_path / "aligned").mkdir()
    (tmp_path / "aligned" / "README.md").write_text("# Aligned policy\n\nTrained by PPO.\n")
    s = _summary([10, 20, 5, 8], [8, 8, 9, 8], ["a", "a", "b", "tie"])
    add_to_model_card(s, tmp_path)
    card = add_to_model_card(s, tmp_path).read_text()
    assert card.startswith("# Aligned policy\n\nTrained by PPO.\n\n" + CARD_SECTION) and card.count(CARD_SECTION) == 1
    assert "- win rate, non-tied: 0.667 [0.200, 0.940] (95% wilson) (2 wins, 1 losses, 1 ties, 0 both bad)" in card
    assert "raw 0.625 [" in card and "- mean reply length (tokens), start -> this policy: n/a -> n/a" in card
    assert "### Counterfactual prompts" in card and "- aligned: 0 of 1 replies unchanged, mean similarity 0.625" in card
    (folder / "probes.json").write_text("[]")
    assert "No held-out prompt" in "\n".join(counterfactual_lines(tmp_path))

"""`rlhf loop --sft`: the SFT stage's command as the loop builds it (checked by 'rlhf sft --validate-only', as
the loop does before any stage), the SFT model as every later stage's starting policy, and the report's SFT
section from hand-made stage files."""

from __future__ import annotations

import json

import pytest

from rlhf.errors import UserError


def _run(tmp_path, **fields):
    from rlhf.pipeline import QuickstartConfig, Run

    return Run(QuickstartConfig(rule="len(text)", **fields), tmp_path)


def test_sft_is_off_by_default_and_every_stage_starts_from_the_base(tmp_path):
    from rlhf.pipeline import ab_pairs, heldout_policies, policy_args, reward_train_args, start_policy

    run = _run(tmp_path)
    assert start_policy(run) == "bundled" and ab_pairs(run) == [("aligned", "base", "ab.json")]
    assert [name for name, _ in heldout_policies(run)] == ["base", "aligned"]
    assert policy_args(run)[policy_args(run).index("--policy") + 1] == "bundled"
    assert reward_train_args(run)[reward_train_args(run).index("--model") + 1] == "bundled"


@pytest.mark.parametrize("algorithm", ["ppo", "dpo"])
def test_with_sft_the_sft_model_writes_candidates_and_starts_reward_model_and_policy(algorithm, tmp_path):
    from rlhf.pipeline import (ab_pairs, check_stage_settings, heldout_policies, policy_args, reward_train_args,
                               sft_args)

    run = _run(tmp_path, sft=True, algorithm=algorithm, sft_flags={"total_updates": 3})
    sft_model = str(tmp_path / "sft_model")
    args = sft_args(run)
    assert args[:3] == ["sft", "--config", "configs/sft/default.yaml"] and args[args.index("--policy") + 1] == "bundled"
    assert args[args.index("--output-dir") + 1] == str(tmp_path / "sft") and "--total-updates" in args
    assert policy_args(run)[policy_args(run).index("--policy") + 1] == sft_model  # start and reference
    reward = reward_train_args(run)
    assert reward[reward.index("--model") + 1] == sft_model and reward[reward.index("--policy-model") + 1] == sft_model
    assert heldout_policies(run) == [("base", "bundled"), ("sft", sft_model), ("aligned", str(tmp_path / "aligned"))]
    assert ab_pairs(run) == [("sft", "base", "ab_sft.json"), ("aligned", "sft", "ab.json")]
    if algorithm == "ppo":  # 'rlhf reward train', 'rlhf ppo' and 'rlhf sft' --validate-only (a subprocess each)
        check_stage_settings(run, "test config")


def test_a_bad_sft_override_is_refused_before_any_stage(tmp_path):
    from rlhf.pipeline import check_stage_settings

    run = _run(tmp_path, sft=True, sft_flags={"total_updates": "three"})
    with pytest.raises(UserError, match=r"sft_config \+ sft_flags: .*total_updates"):
        check_stage_settings(run, "test config")


def test_the_report_gains_the_sft_section(tmp_path):
    from rlhf.report import HeldoutScores, SFTSummary, add_sft_section

    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "metrics.json").write_text(json.dumps(
        {"heldout_loss_before": 2.5, "heldout_loss_after": 1.25, "train_rows": 100, "heldout_rows": 20}))
    (tmp_path / "ab_sft.json").write_text(json.dumps({
        "set_id": 1, "name": "sft-vs-base", "policy_a": "sft", "policy_b": "base", "items": 8,
        "judgements_per_item": 1, "open": 0,
        "win_rate": {"wins_a": 6, "wins_b": 2, "ties": 0, "both_bad": 0, "win_rate_a": 0.75, "ci_low": 0.4,
                     "ci_high": 0.93, "confidence": 0.95, "method": "wilson"},
        "position_bias": {"left_wins": 4, "right_wins": 4, "left_share": 0.5, "p_value": 1.0, "a_on_left": 4,
                          "judgements": 8}}))
    (tmp_path / "REPORT.md").write_text("# Loop report\n\nRun folder.\n\n## Figures\n\n| figure | value |\n")
    (tmp_path / "summary.json").write_text(json.dumps({"rule": "len(text)"}))
    base = HeldoutScores(0.1, 40.0, 1.0, [40], [0.1], [1.0])
    sft = HeldoutScores(0.3, 30.0, 2.0, [30], [0.3], [2.0])
    add_sft_section(SFTSummary.read(tmp_path, base, sft), tmp_path)

    report = (tmp_path / "REPORT.md").read_text()
    assert report.index("## Supervised fine-tuning") < report.index("## Figures")
    assert "| held-out loss per reply token, before -> after SFT | 2.5000 -> 1.2500 |" in report
    assert "| SFT vs base (wins/losses/ties/both bad) | 6/2/0/0 |" in report
    assert "| SFT win rate, non-tied | 0.750 [0.400, 0.930] (95% wilson) |" in report
    assert "| held-out reward, base -> SFT | 0.100 -> 0.300 |" in report and "base is the SFT model" in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rule"] == "len(text)" and summary["sft"]["heldout_loss_after"] == 1.25
    assert summary["sft"]["ab"]["win_rate"]["win_rate_a"] == 0.75

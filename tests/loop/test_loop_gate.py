"""The loop's gate and bad-input checks on the files the stages hand over (issue 14): a rule that
scores every reply the same and rankings with no usable pair stop before the reward model is trained;
a reward model whose gate.json failed stops the loop right after the reward stage, unless overridden;
the override reaches the reward and policy commands."""

from __future__ import annotations

import json

import pytest

from rlhf.errors import UserError
from tests.reward.conftest import planted_rankings, write_export


def _run(tmp_path, **fields):
    from rlhf.pipeline import QuickstartConfig, Run

    return Run(QuickstartConfig(**{"rule": "len(text)", "rule_name": "longer", **fields}), tmp_path)


def test_a_rule_that_scores_every_reply_the_same_stops_before_training(tmp_path):
    from rlhf.pipeline import check_rule
    from rlhf.rules import load_rule

    write_export(tmp_path / "export", planted_rankings(8, seed=4))
    check_rule(_run(tmp_path), load_rule("len(text)"))  # planted replies differ in length: passes
    with pytest.raises(UserError, match=r"rule 'flat' \(3\.0\) gives every one of the 32 candidate replies of 8 "
                                        r"prompts the same score \(3\)"):
        check_rule(_run(tmp_path, rule="3.0", rule_name="flat"), load_rule("3.0"))


def test_a_failed_gate_stops_the_loop_unless_overridden(tmp_path):
    from rlhf.pipeline import gate, policy_args, reward_train_args

    (tmp_path / "reward").mkdir()
    (tmp_path / "reward" / "gate.json").write_text(json.dumps({
        "passed": False, "summary": "accuracy 0.55 (95% interval 0.45 to 0.65) does not pass",
        "advice": "The reward model ranks 55% of held-out pairs like the reviewers."}))
    with pytest.raises(UserError, match=r"ranks 55% of held-out pairs.*pass --allow-weak-reward-model"):
        gate(_run(tmp_path))
    assert not (tmp_path / "gate.json").exists()
    run = _run(tmp_path, allow_weak_reward_model=True)
    gate(run)
    assert json.loads((tmp_path / "gate.json").read_text())["overridden"] is True
    assert "--allow-weak-reward-model" in reward_train_args(run) and "--allow-weak-reward-model" in policy_args(run)
    assert "--allow-weak-reward-model" not in policy_args(_run(tmp_path, allow_weak_reward_model=True,
                                                               algorithm="dpo"))


def test_without_enough_rankings_for_a_second_reward_model_the_guard_goes_on_without_it(tmp_path, tiny_model_dir,
                                                                                         capsys):
    """After SFT the quickstart's "fewer apologies" left 30 usable rankings, so the second half held 7 and
    none fell in the validation split: the real reward command fails, the loop says so and trains the
    policy without the guard's judge (it had stopped the whole loop)."""
    from rlhf.pipeline import GUARD_SKIPPED, policy_args, train_guard_reward
    from rlhf.report import guard_lines

    write_export(tmp_path / "export", planted_rankings(6, seed=4))
    run = _run(tmp_path, reward_config="configs/reward/default.yaml", reward_base=str(tiny_model_dir),
               policy=str(tiny_model_dir))
    assert "--guard-reward-model" in policy_args(run)
    train_guard_reward(run)  # does not raise
    reason = (tmp_path / GUARD_SKIPPED).read_text().strip()
    assert reason.startswith("error: ") and "\n" not in reason
    assert "warning: no second reward model for the guard" in capsys.readouterr().out
    assert "--guard-reward-model" not in policy_args(run)
    assert "**No second reward model**" in "\n".join(guard_lines(tmp_path))

"""The guard during GRPO on tiny models: a second reward model that disagrees with the training one on
purpose (its score head negated; weight 0 in the loss) stops the run, and the update where the second
model's reward was best is the run's last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.align.conftest import align_args
from tests.conftest import run_cli
from tests.ppo.test_ppo_guard import _disagreeing_reward_model, assert_stopped_on_the_last_update


def test_grpo_guard_stops_an_exploited_run_and_keeps_the_best_update(tmp_path, tiny_model_dir, tiny_reward_dir):
    from rlhf.checkpoint import checkpoint_dir, latest_checkpoint, policy_weights

    second = _disagreeing_reward_model(tmp_path / "second", tiny_reward_dir)
    out = tmp_path / "run"
    result = run_cli(*align_args("grpo", tiny_model_dir, out, tiny_reward_dir), "--total-updates", "10",
                     "--save-every", "1", "--keep-checkpoints", "20", "--num-eval-prompts", "0",
                     "--guard-reward-model", str(second), "--guard-window", "3", "--guard-margin", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    guard = json.loads((out / "guard.json").read_text())
    assert guard["stopped"], guard
    stopped, kept = guard["stopped_at"], guard["kept_update"]
    assert stopped < 10 and kept < stopped
    updates = guard["updates"]
    for u in updates:  # the second model's reward is minus the training reward: they disagree
        assert u["held_out_reward"] == pytest.approx(-u["reward"], abs=1e-3)
    assert kept == max(updates, key=lambda u: (u["held_out_reward"], -u["step"]))["step"]
    assert f"kept update {kept}" in result.stderr
    last = latest_checkpoint(out)
    assert Path(guard["kept_checkpoint"]) == last == checkpoint_dir(out, stopped)
    final, _ = policy_weights(last)
    at_kept, _ = policy_weights(checkpoint_dir(out, kept))
    assert final.keys() == at_kept.keys() and all(torch.equal(final[k], at_kept[k]) for k in final)


def test_grpo_run_ending_on_a_warning_keeps_the_best_update(tmp_path, tiny_model_dir, tiny_reward_dir):
    """Patience too long to stop mid-run: the last update's warning stops the run and the best update's
    policy weights are its last checkpoint (as in PPO)."""
    second = _disagreeing_reward_model(tmp_path / "second", tiny_reward_dir)
    out = tmp_path / "run"
    result = run_cli(*align_args("grpo", tiny_model_dir, out, tiny_reward_dir), "--total-updates", "4",
                     "--save-every", "1", "--keep-checkpoints", "20", "--num-eval-prompts", "0",
                     "--guard-reward-model", str(second), "--guard-window", "3", "--guard-margin", "0",
                     "--guard-patience", "100")
    assert_stopped_on_the_last_update(result, out, updates=4)

"""The guard during PPO on tiny models: a second reward model that disagrees with the training one on
purpose (its score head negated, so every gain in training reward is a loss for it) stops the run and
the update where the second model's reward was best is the run's last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.ppo.conftest import tiny_args


def _disagreeing_reward_model(out: Path, reward_dir: Path) -> Path:
    """The training reward model with its score negated; its stats negate the centring, so the centred
    reward it gives every rollout is minus the training reward model's."""
    from rlhf.modeling import load_score_model, load_tokenizer

    model = load_score_model(reward_dir)
    with torch.no_grad():
        model.score.weight.neg_()
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(reward_dir, padding_side="right").save_pretrained(out)
    stats = json.loads((reward_dir / "reward_stats.json").read_text())
    (out / "reward_stats.json").write_text(json.dumps({"mean": -stats["mean"], "std": stats["std"]}))
    return out


def test_guard_stops_an_exploited_run_and_keeps_the_best_update(tmp_path, tiny_model_dir, tiny_reward_dir):
    from rlhf.checkpoint import checkpoint_dir, latest_checkpoint, policy_weights

    second = _disagreeing_reward_model(tmp_path / "second", tiny_reward_dir)
    out = tmp_path / "run"
    result = run_cli("ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out), "--total-updates", "10",
                     "--save-every", "1", "--keep-checkpoints", "20", "--num-eval-prompts", "0",
                     "--missing-eos-penalty", "null", "--guard-reward-model", str(second), "--guard-window", "3",
                     "--guard-margin", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    guard = json.loads((out / "guard.json").read_text())
    assert guard["stopped"], guard
    stopped, kept = guard["stopped_at"], guard["kept_update"]
    assert stopped < 10 and kept < stopped
    updates = guard["updates"]
    assert len(updates) == stopped
    # The second model's reward is minus the training reward (no EOS penalty): the guard saw them disagree.
    for u in updates:
        assert u["held_out_reward"] == pytest.approx(-u["reward"], abs=1e-3)
    assert kept == max(updates, key=lambda u: (u["held_out_reward"], -u["step"]))["step"]
    assert [u["action"] for u in updates[-2:]] == ["warn", "stop"]
    assert f"kept update {kept}" in result.stderr and "guard: Stopping at update" in result.stderr
    # The run's last checkpoint holds the kept update's policy weights, not the last update's.
    last = latest_checkpoint(out)
    assert Path(guard["kept_checkpoint"]) == last and last == checkpoint_dir(out, stopped)
    final, _ = policy_weights(last)
    at_kept, _ = policy_weights(checkpoint_dir(out, kept))
    at_stop_minus = policy_weights(checkpoint_dir(out, stopped - 1))[0] if stopped - 1 != kept else None
    assert final.keys() == at_kept.keys()
    assert all(torch.equal(final[k], at_kept[k]) for k in final)
    if at_stop_minus is not None:
        assert any(not torch.equal(final[k], at_stop_minus[k]) for k in final)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("held_out_reward" in m for m in metrics)


def test_a_warning_on_the_last_update_keeps_the_best_update(tmp_path, tiny_model_dir, tiny_reward_dir):
    """Patience too long to stop mid-run: the run ends on a warning, and the guard keeps the best update
    rather than export the one it has just flagged (the efficacy suite's offers_help at 32 updates)."""
    second = _disagreeing_reward_model(tmp_path / "second", tiny_reward_dir)
    out = tmp_path / "run"
    result = run_cli("ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out), "--total-updates", "4",
                     "--save-every", "1", "--keep-checkpoints", "20", "--num-eval-prompts", "0",
                     "--missing-eos-penalty", "null", "--guard-reward-model", str(second), "--guard-window", "3",
                     "--guard-margin", "0", "--guard-patience", "100")
    assert_stopped_on_the_last_update(result, out, updates=4)


def assert_stopped_on_the_last_update(result, out: Path, updates: int) -> None:
    """A run of `updates` updates whose guard warned without stopping until the last update, which stopped it
    on that warning: the run's last checkpoint holds the policy weights of the kept (best) update."""
    from rlhf.checkpoint import checkpoint_dir, latest_checkpoint, policy_weights

    assert result.returncode == 0, result.stderr[-3000:]
    guard = json.loads((out / "guard.json").read_text())
    actions = [u["action"] for u in guard["updates"]]
    assert len(actions) == updates and "stop" not in actions[:-1] and actions[-1] == "stop", guard
    assert guard["stopped_at"] == updates and guard["kept_update"] < updates
    assert "the run's last, on a warning no later update can confirm or clear" in guard["message"]
    last = latest_checkpoint(out)
    assert Path(guard["kept_checkpoint"]) == last == checkpoint_dir(out, updates)
    final, _ = policy_weights(last)
    at_kept, _ = policy_weights(checkpoint_dir(out, guard["kept_update"]))
    assert all(torch.equal(final[k], at_kept[k]) for k in final)

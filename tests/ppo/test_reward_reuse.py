"""The reward pass read from the reference pass (rlhf.ppo.reuse): same scores as the full pass, on
real tiny PPO runs, and a full pass whenever the reward model's backbone is not the reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO


def _run(out: Path, policy: Path, reward: Path, capsys, **overrides) -> tuple[list[dict], str, object]:
    from rlhf.config import load_config
    from rlhf.ppo.config import PPORunConfig
    from rlhf.ppo.trainer import build_trainer

    config = load_config(PPORunConfig, REPO / "configs/ppo/tiny.yaml", {
        "policy": str(policy), "reward_model": str(reward), "output_dir": str(out), "total_updates": 2,
        "num_eval_prompts": 0, "bf16_autocast": True, "bf16_rollouts": True, "value_lora": True,
        "allow_weak_reward_model": True, **overrides})
    capsys.readouterr()
    trainer = build_trainer(config)
    assert trainer.train() == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, capsys.readouterr().err, trainer


def test_reward_read_from_the_reference_pass_scores_as_the_full_pass(tmp_path, tiny_model_dir, tiny_reward_dir,
                                                                      capsys):
    guard = {"guard_reward_model": str(tiny_reward_dir)}  # a second probe on the same frozen base
    reused, log, trainer = _run(tmp_path / "reuse", tiny_model_dir, tiny_reward_dir, capsys, **guard)
    assert "\nreward model: read from the reference pass" in log
    assert "guard's reward model: read from the reference pass" in log
    assert trainer.reference_states.reused >= 4  # one rollout batch per update, twice
    # bf16_autocast reaches TRL's accelerator without leaking into later trainers of this process
    assert trainer.accelerator.mixed_precision == "bf16" and "ACCELERATE_MIXED_PRECISION" not in os.environ
    full, log_full, trainer_full = _run(tmp_path / "full", tiny_model_dir, tiny_reward_dir, capsys,
                                        reward_from_reference=False, **guard)
    assert "read from the reference pass" not in log_full and trainer_full.reference_states is None
    assert len(reused) == len(full) == 2
    for a, b in zip(reused, full):  # the same rollouts (same seed), scored alike, trained alike
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-6)
        assert a["held_out_reward"] == pytest.approx(b["held_out_reward"], abs=1e-6)


def test_a_reward_model_on_the_bottom_layers_reads_that_layer_of_the_reference_pass(tmp_path, tiny_model_dir,
                                                                                   capsys):
    """The default probe keeps the base's bottom layers (probe_depth): its pass is the final norm of the
    reference pass's output of its last layer, and scores exactly as its own pass."""
    from tests.ppo.conftest import build_reward_model

    shallow = build_reward_model(tmp_path / "shallow-reward", tiny_model_dir, layers=1, mean_pooling=True)
    assert json.loads((shallow / "config.json").read_text())["num_hidden_layers"] == 1
    guard = {"guard_reward_model": str(shallow)}
    reused, log, trainer = _run(tmp_path / "reuse", tiny_model_dir, shallow, capsys, **guard)
    assert "\nreward model: read from the reference pass" in log
    assert "guard's reward model: read from the reference pass" in log
    assert trainer.reference_states.depths == {1} and trainer.reference_states.reused >= 4
    full, _, _ = _run(tmp_path / "full", tiny_model_dir, shallow, capsys, reward_from_reference=False, **guard)
    for a, b in zip(reused, full):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["held_out_reward"] == pytest.approx(b["held_out_reward"], abs=1e-6)


def test_a_reward_model_with_its_own_weights_runs_its_own_pass(tmp_path, tiny_model_dir, tiny_reward_dir, capsys):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-reward"
    other.mkdir()
    for item in tiny_reward_dir.iterdir():
        if item.name != "model.safetensors":
            (other / item.name).write_bytes(item.read_bytes())
    weights = load_file(tiny_reward_dir / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.1.mlp.down_proj.weight"))
    weights[name] = weights[name] + 0.01  # a fine-tuned backbone: no longer the reference network
    save_file(weights, other / "model.safetensors")
    _, log, trainer = _run(tmp_path / "own", tiny_model_dir, other, capsys)
    assert "reward model: its own forward pass each update (its backbone's weights differ from the policy's base " \
           "(layers.1.mlp.down_proj.weight))" in log
    assert trainer.reference_states is None


def test_reference_states_answer_only_the_very_inputs_they_were_computed_from():
    from rlhf.ppo.reuse import ReferenceStates

    states = ReferenceStates(keep=2)
    hook = states.record_hook(always=False)
    ids = torch.tensor([[0, 5, 6, 7]])
    mask = torch.tensor([[0, 1, 1, 1]])
    positions = torch.tensor([[0, 0, 1, 2]])
    hidden = torch.randn(1, 4, 3)

    class Output:
        last_hidden_state = hidden

    with torch.no_grad():
        hook(None, (), {"input_ids": ids, "attention_mask": mask, "position_ids": positions}, Output)
        assert states.find(ids, mask, positions) is None  # not recording: a pass with the adapter on
        states.recording = True
        hook(None, (), {"input_ids": ids, "attention_mask": mask, "position_ids": positions}, Output)
    assert states.find(ids, mask, positions) is hidden
    assert states.find(torch.tensor([[0, 5, 6, 8]]), mask, positions) is None  # another reply
    assert states.find(ids, torch.tensor([[0, 1, 1, 0]]), positions) is None  # cut after EOS differently
    assert states.find(ids, mask, None) is None
    with torch.enable_grad():  # the training forward is never recorded
        hook(None, (), {"input_ids": ids + 1, "attention_mask": mask, "position_ids": positions}, Output)
    assert states.find(ids + 1, mask, positions) is None


def test_a_first_reused_pass_that_differs_from_the_full_pass_turns_the_reuse_off(tiny_reward_dir):
    from rlhf.modeling import load_score_model
    from rlhf.ppo.reuse import ReferenceStates, read_from_reference

    model = load_score_model(tiny_reward_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(4)[None]}
    with torch.no_grad():
        true = model.model(**inputs).last_hidden_state
    states, said = ReferenceStates(), []
    states.entries.append((inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], true + 0.5, {}))
    read_from_reference(model, states, "reward model", said.append)
    with torch.no_grad():
        first, second = (model.model(**inputs).last_hidden_state for _ in range(2))
    assert said == [said[0]] and said[0].startswith("reward model: computed in full (its pass differs")
    assert torch.equal(first, true) and torch.equal(second, true) and states.reused == 0

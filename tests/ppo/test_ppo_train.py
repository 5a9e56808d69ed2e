"""Real PPO runs on tiny models, one process: training moves the right weights, resume, export."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli
from tests.ppo.conftest import tiny_args


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, tiny_reward_dir) -> Path:
    """An uninterrupted 4-update LoRA run (checkpoints at updates 2 and 4)."""
    out = tmp_path_factory.mktemp("ppo") / "lora-run"
    result = run_cli("ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "update 4/4" in result.stderr
    return out


def _key(state: dict, prefix: str, name: str) -> str:
    """Where the base model's weight ``name`` sits in a checkpoint under ``prefix`` (a LoRA layer keeps
    it as ``base_layer.weight``)."""
    key = f"{prefix}{name}"
    return key if key in state else f"{prefix}{name.replace('.weight', '.base_layer.weight')}"


def _weights(run: Path, step: int) -> dict:
    from rlhf.checkpoint import checkpoint_dir, consolidated_state_dict

    return consolidated_state_dict(checkpoint_dir(run, step))


def test_lora_run_moves_adapter_and_value_model_not_the_base(lora_run, tiny_model_dir, tiny_reward_dir):
    from safetensors.torch import load_file

    state = _weights(lora_run, 4)
    lora_b = [v for k, v in state.items() if k.startswith("policy.") and "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero
    base = load_file(tiny_model_dir / "model.safetensors")
    for name, value in base.items():  # the reference is the base with the adapter off: unchanged
        assert torch.equal(state[_key(state, "policy.base_model.model.", name)], value), name
    reward = load_file(tiny_reward_dir / "model.safetensors")  # the value model starts from it, then trains
    assert any(not torch.equal(state["value_model." + k], v) for k, v in reward.items() if "value_model." + k in state)
    metrics = (lora_run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 4
    for key in ("reward", "kl", "entropy", "value_loss", "response_length", "eos_share"):
        assert key in metrics[-1]
    assert (lora_run / "samples.jsonl").read_text().count('"step": 4') == 2
    assert list((lora_run / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_after_update_2_matches_uninterrupted_run(lora_run, tmp_path, tiny_model_dir, tiny_reward_dir):
    out = tmp_path / "resumed"
    args = tiny_args(tiny_model_dir, tiny_reward_dir, out)
    first = run_cli("ppo", *args, "--stop-after-updates", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]
    second = run_cli("ppo", *args, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "update 4/4" in second.stderr
    resumed, uninterrupted = _weights(out, 4), _weights(lora_run, 4)
    assert resumed.keys() == uninterrupted.keys()
    # A resume that lost the optimizer state, the RNG or the data position moves weights by about the
    # learning rate (1e-3) per update. Float noise does not vanish: MKL's GEMM may differ in the last bit
    # between processes, and Adam turns that into ~3e-5 on rarely used embedding rows (seen once in CI).
    for key in resumed:
        diff = (resumed[key] - uninterrupted[key]).abs().max().item()
        assert diff < 1e-4, f"{key}: max abs diff {diff:.3g}"
    moved = max((_weights(out, 2)[k] - resumed[k]).abs().max().item() for k in resumed)
    assert moved > 5e-4  # updates 3 and 4 really moved weights, so the tolerance above discriminates


def test_sigkill_while_writing_a_checkpoint_leaves_a_resumable_run(tmp_path, tiny_model_dir, tiny_reward_dir):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rlhf.cli", "ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out),
           "--save-every", "1", "--total-updates", "6", "--num-eval-prompts", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = out / "checkpoints"
    killed_mid_write = False
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        # Kill as soon as a checkpoint is being written after an earlier one completed.
        if ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir()) \
                and any(p.name.startswith(".tmp-") for p in ckpts.iterdir()):
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_write = True
            break
        time.sleep(0.001)
    proc.wait()
    assert killed_mid_write, "the run finished before a checkpoint write could be interrupted"
    assert any(p.name.startswith(".tmp-") for p in ckpts.iterdir())  # the half-written one
    resumed = run_cli("ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out), "--save-every", "1",
                      "--total-updates", "6", "--num-eval-prompts", "0", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "update 6/6" in resumed.stderr
    assert (ckpts / "step-000006" / "rlhf_state.json").is_file()


def test_full_finetune_moves_policy_and_keeps_reference(tmp_path, tiny_model_dir, tiny_reward_dir):
    """In process, to look at the live reference model TRL holds."""
    from rlhf.config import load_config
    from rlhf.ppo.config import PPORunConfig
    from rlhf.ppo.trainer import build_trainer

    config = load_config(PPORunConfig, REPO / "configs/ppo/tiny.yaml", {
        "policy": str(tiny_model_dir), "reward_model": str(tiny_reward_dir), "output_dir": str(tmp_path / "full"),
        "lora.enabled": False, "total_updates": 2, "num_eval_prompts": 0})
    trainer = build_trainer(config)
    policy_before = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).policy.state_dict().items()}
    reference_before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    assert trainer.train() == 2
    policy_after = trainer.accelerator.unwrap_model(trainer.model).policy.state_dict()
    assert any(not torch.equal(policy_before[k], policy_after[k]) for k in policy_before)
    assert all(torch.equal(reference_before[k], v) for k, v in trainer.ref_model.state_dict().items())
    assert (tmp_path / "full" / "checkpoints" / "step-000002" / "rlhf_state.json").is_file()


def test_export_merged_and_adapter_alone(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    result = run_cli("export", str(lora_run), str(merged_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("export", str(lora_run), str(adapter_dir), "--adapter-only")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json", "README.md", "plots/reward.png",
                 "plots/kl.png", "plots/response_length.png"):
        assert (merged_dir / name).is_file(), name
    assert (adapter_dir / "adapter_model.safetensors").is_file()

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.generation_config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert merged.generation_config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("How do I reset my password?", return_tensors="pt")
    out = merged.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    import yaml

    base_path = yaml.safe_load((lora_run / "config.yaml").read_text())["policy"]
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter_dir)
    with torch.no_grad():
        assert torch.allclose(adapter(**ids).logits, merged(**ids).logits, atol=1e-4)
    card = (merged_dir / "README.md").read_text()
    assert "Reward model" in card and "| reward |" in card


def test_value_lora_trains_the_adapter_and_score_head_not_the_value_backbone(tmp_path, tiny_model_dir,
                                                                              tiny_reward_dir):
    from safetensors.torch import load_file

    out = tmp_path / "value-lora"
    result = run_cli("ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out), "--value-lora", "true",
                     "--total-updates", "2", "--num-eval-prompts", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    state = _weights(out, 2)
    reward = load_file(tiny_reward_dir / "model.safetensors")
    lora_b = {k: v for k, v in state.items() if k.startswith("value_model.") and "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero
    assert not torch.equal(state["value_model.score.weight"], reward["score.weight"])
    for name, value in reward.items():  # every backbone weight of the value model is where it started
        if name.startswith("score."):
            continue
        assert torch.equal(state[_key(state, "value_model.", name)], value), name


def test_bf16_rollouts_run_trains_the_adapter_and_leaves_the_reference_bit_for_bit(tmp_path, tiny_model_dir,
                                                                                  tiny_reward_dir):
    """The default's precision settings on the tiny models: generation swaps bfloat16 merged weights in
    and out every update; the base weights (the reference) must come back unchanged each time."""
    import json

    from safetensors.torch import load_file

    out = tmp_path / "bf16"
    result = run_cli("ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out), "--bf16-autocast", "true",
                     "--bf16-rollouts", "true", "--total-updates", "3", "--save-every", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    state = _weights(out, 3)
    assert any(v.abs().sum() > 0 for k, v in state.items() if k.startswith("policy.") and "lora_B" in k)
    for name, value in load_file(tiny_model_dir / "model.safetensors").items():
        key = _key(state, "policy.base_model.model.", name)
        assert state[key].dtype == torch.float32 and torch.equal(state[key], value), name
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # one epoch, one minibatch: rollout and training log-probs differ by arithmetic alone
    assert len(metrics) == 3 and all(m["policy/approxkl_avg"] < 0.01 for m in metrics)
    # sampled by the fast decode loop (the default generation_backend) within PPO's tolerance
    assert "generation: the fast decode loop" in result.stderr
    assert all(m["policy/approxkl_avg"] <= 0.001 for m in metrics)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["reply"] is not None for s in samples)

"""Real GRPO, RLOO and DPO runs on tiny models, one process: the adapter moves and the reference (the base
weights with the adapter off) does not; a run stopped after update 2 and resumed ends where an
uninterrupted run does; the export reloads and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.align.conftest import REPO, align_args
from tests.conftest import run_cli

ALGORITHMS = ["grpo", "rloo", "dpo"]
METRICS = {"grpo": ("reward", "kl", "entropy", "response_length", "eos_share"),
           "rloo": ("reward", "kl", "entropy", "response_length", "eos_share"),
           "dpo": ("loss", "reward_margin", "pair_accuracy")}
# GRPO's runs reuse each batch of sampled replies for 2 updates (TRL's num_iterations): the resume test
# then also shows a run stopped where replies are next sampled resumes to the same weights.
ITERATIONS = {"grpo": {"num_iterations": 2}}


def _inputs(algorithm, tiny_model_dir, tiny_reward_dir, tiny_export_dir):
    return (tiny_reward_dir, None) if algorithm != "dpo" else (None, tiny_export_dir)


def _config(algorithm, policy, out, reward, data, **overrides):
    from rlhf.align.config import CONFIGS
    from rlhf.config import load_config

    fields = {"policy": str(policy), "output_dir": str(out), **overrides}
    fields.update({"reward_model": str(reward)} if reward else {"data": str(data)})
    return load_config(CONFIGS[algorithm], REPO / "configs" / algorithm / "tiny.yaml", fields)


def _adapter(run: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step:06d}" / "adapter_model.safetensors")


@pytest.fixture(scope="module", params=ALGORITHMS)
def uninterrupted(request, tmp_path_factory, tiny_model_dir, tiny_reward_dir, tiny_export_dir):
    """A 4-update LoRA run in this process, with the live base weights before and after training."""
    algorithm = request.param
    reward, data = _inputs(algorithm, tiny_model_dir, tiny_reward_dir, tiny_export_dir)
    out = tmp_path_factory.mktemp(algorithm) / "run"
    config = _config(algorithm, tiny_model_dir, out, reward, data, **ITERATIONS.get(algorithm, {}))
    from rlhf.align import dpo, online

    trainer = (dpo if algorithm == "dpo" else online).build_trainer(config)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    base_before = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" not in k}
    assert trainer.train() == 4
    if algorithm == "dpo":
        assert 0.0 <= dpo.score_heldout(trainer, config)["eval_rewards/accuracies"] <= 1.0
    base_after = {k: v for k, v in policy.state_dict().items() if "lora_" not in k}
    return algorithm, out, base_before, base_after, (reward, data)


def test_training_moves_the_adapter_not_the_reference(uninterrupted):
    algorithm, out, base_before, base_after, _ = uninterrupted
    assert base_before.keys() == base_after.keys()
    for name, value in base_before.items():  # the reference is these weights with the adapter off
        assert torch.equal(value, base_after[name]), name
    lora_b = [v for k, v in _adapter(out, 4).items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in METRICS[algorithm]:
        # with num_iterations 2, TRL logs what it measures while sampling on the updates that sample (1, 3)
        logged = [r[key] for r in rows if key in r]
        assert len(logged) >= 2 and isinstance(logged[-1], float), key
    assert (out / "samples.jsonl").read_text().count('"step": 4') == 2
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    state = json.loads((out / "checkpoints" / "step-000004" / "rlhf_state.json").read_text())
    assert state["algorithm"] == algorithm and state["step"] == 4
    assert json.loads((out / "run_info.json").read_text())["trainer"] == algorithm


# RLOO resumes through exactly the code GRPO does (rlhf/align/online.py: _GroupSampling, ResumableRun);
# two subprocess runs each cost a minute, so the added test time stays small.
@pytest.mark.parametrize("uninterrupted", ["grpo", "dpo"], indirect=True)
def test_resume_after_update_2_matches_the_uninterrupted_run(uninterrupted, tmp_path, tiny_model_dir):
    algorithm, reference_run, *_, (reward, data) = uninterrupted
    out = tmp_path / "resumed"
    args = align_args(algorithm, tiny_model_dir, out, reward, data,
                      *[f"--{k.replace('_', '-')}={v}" for k, v in ITERATIONS.get(algorithm, {}).items()])
    first = run_cli(*args, "--stop-after-updates", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "continue with --resume" in first.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    second = run_cli(*args, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "update 4/4" in second.stderr
    resumed, uninterrupted_weights = _adapter(out, 4), _adapter(reference_run, 4)
    assert resumed.keys() == uninterrupted_weights.keys()
    # A resume that lost the optimizer state, the RNG or the data position moves weights by about the
    # learning rate (1e-3) per update; float noise between processes stays far below 1e-4.
    for key in resumed:
        diff = (resumed[key] - uninterrupted_weights[key]).abs().max().item()
        assert diff < 1e-4, f"{key}: max abs diff {diff:.3g}"
    moved = max((_adapter(out, 2)[k] - resumed[k]).abs().max().item() for k in resumed)
    assert moved > 5e-4  # updates 3 and 4 really moved the adapter, so the tolerance above discriminates
    metrics = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [1, 2, 3, 4]


def test_export_reloads_and_generates(uninterrupted, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    algorithm, out, *_ = uninterrupted
    exported = tmp_path / "exported"
    result = run_cli("export", str(out), str(exported))
    assert result.returncode == 0, result.stderr[-3000:]
    tokenizer = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("How do I reset my password?", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    card = (exported / "README.md").read_text()
    assert f"{algorithm.upper()}-aligned policy" in card and f"TRL 1.12 {algorithm.upper()}Trainer" in card
    assert (exported / f"{algorithm}_config.yaml").is_file()
    if algorithm == "dpo":
        assert "Reward model: none" in card and (out / "heldout.json").is_file()

    # The merged weights are the base plus the trained adapter, as peft applies it.
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(json.loads((out / "run_info.json").read_text())["policy_path"])
    adapter_dir = tmp_path / "adapter"
    assert run_cli("export", str(out), str(adapter_dir), "--adapter-only").returncode == 0
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, adapter_dir)(**ids).logits
        assert torch.allclose(model(**ids).logits, expected, atol=1e-4)

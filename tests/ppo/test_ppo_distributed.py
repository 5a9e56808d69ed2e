"""The README's launch commands for real: 2 CPU processes under DDP, ZeRO-2, ZeRO-3, and two loopback "nodes".

Each run goes to the end, leaves a checkpoint (one shard per process under ZeRO) that exports to a
loadable model, and all of them agree on the trained weights (same seed, same global batch).
"""

from __future__ import annotations

import pytest
import torch

from tests.launch import accelerate_launch, launch_two_nodes
from tests.ppo.conftest import tiny_args

RUNS = {}  # launcher config -> exported model weights, to compare the runs with each other


def _ppo(policy, reward, out):
    return ["-m", "rlhf.cli", "ppo", *tiny_args(policy, reward, out)]


def _check_and_export(out, tmp_path, stdouts, zero: bool):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlhf.export import export_run

    ckpt = out / "checkpoints" / "step-000004"
    assert (ckpt / "rlhf_state.json").is_file()
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    if zero:  # every process wrote its own optimizer shard
        assert len(list((ckpt / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    assert sum(s.count("update 4/4") for s in stdouts) == 1  # only the main process logs
    exported = export_run(out, tmp_path / "exported")
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape[1] == 6
    return load_file(exported / "model.safetensors")


@pytest.mark.parametrize("config", ["ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_two_processes(config, tmp_path, tiny_model_dir, tiny_reward_dir):
    out = tmp_path / "run"
    result = accelerate_launch(config, _ppo(tiny_model_dir, tiny_reward_dir, out), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    RUNS[config] = _check_and_export(out, tmp_path, [result.stderr], zero=config != "ddp.yaml")
    _compare_with_earlier_runs(config)


def test_two_loopback_nodes(tmp_path, tiny_model_dir, tiny_reward_dir):
    out = tmp_path / "run"
    results = launch_two_nodes("multinode_zero2.yaml", _ppo(tiny_model_dir, tiny_reward_dir, out), timeout=600)
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-3000:] + results[1].stderr[-3000:]
    RUNS["multinode"] = _check_and_export(out, tmp_path, [r.stderr for r in results], zero=True)
    _compare_with_earlier_runs("multinode")


def _compare_with_earlier_runs(name):
    """Data order, seeds and sharding are the same in every launcher: the weights must agree."""
    for other, weights in RUNS.items():
        if other != name:
            for key, value in RUNS[name].items():
                assert torch.allclose(value, weights[key], atol=1e-5), f"{name} vs {other}: {key}"


@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_two_processes_with_the_default_precision_settings(config, tmp_path, tiny_model_dir, tiny_reward_dir):
    """default.yaml's bfloat16 training and rollouts and value LoRA under DeepSpeed (where accelerate
    hands bf16 to DeepSpeed, and ZeRO-3 partitions the weights the rollouts would swap)."""
    out = tmp_path / "run"
    flags = ["--bf16-autocast", "true", "--bf16-rollouts", "true", "--value-lora", "true"]
    result = accelerate_launch(config, _ppo(tiny_model_dir, tiny_reward_dir, out) + flags, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    _check_and_export(out, tmp_path, [result.stderr], zero=True)
    # ZeRO-3's partitioned weights cannot be packed for the fast decode loop: the fallback is said
    expected = "cannot run: weights partitioned by DeepSpeed ZeRO-3" if config == "deepspeed_zero3.yaml" \
        else "generation: the fast decode loop"
    assert expected in result.stderr

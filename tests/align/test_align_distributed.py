"""The README's launch commands for GRPO, RLOO and DPO for real: 2 CPU processes, GRPO under DeepSpeed ZeRO-2
and ZeRO-3, RLOO under DDP, DPO under ZeRO-3 (ZeRO-2 runs the same Trainer code as GRPO's). Each run goes to
the end, only the main process logs, every process writes its RNG state (and its ZeRO shard), and the
checkpoint exports to a model that reloads and generates. GRPO samples with the fast decode loop, except
under ZeRO-3 (partitioned weights), where the log says it falls back to generate()."""

from __future__ import annotations

import pytest
import torch

from tests.align.conftest import align_args
from tests.launch import accelerate_launch

LAUNCHES = [("grpo", "deepspeed_zero2.yaml"), ("grpo", "deepspeed_zero3.yaml"), ("rloo", "ddp.yaml"),
            ("dpo", "deepspeed_zero3.yaml")]
FAST = "generation: the fast decode loop (rlhf.decode)"
FALLBACK = "generation: transformers' generate() (the fast decode loop cannot run: weights partitioned by DeepSpeed ZeRO-3)"


@pytest.mark.parametrize(("algorithm", "config"), LAUNCHES, ids=[f"{a}-{c.removesuffix('.yaml')}" for a, c in LAUNCHES])
def test_two_processes_finish_and_export(algorithm, config, tmp_path, tiny_model_dir, tiny_reward_dir,
                                         tiny_export_dir):
    from transformers import AutoModelForCausalLM

    from rlhf.checkpoint import policy_weights
    from rlhf.export import export_run

    out = tmp_path / "run"
    reward, data = (None, tiny_export_dir) if algorithm == "dpo" else (tiny_reward_dir, None)
    args = align_args(algorithm, tiny_model_dir, out, reward, data, "--num-eval-prompts", "2")
    result = accelerate_launch(config, ["-m", "rlhf.cli", *args], timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("update 4/4") == 1  # only the main process logs
    if algorithm != "dpo":
        assert result.stderr.count(FALLBACK if config == "deepspeed_zero3.yaml" else FAST) == 1

    ckpt = out / "checkpoints" / "step-000004"
    assert (ckpt / "rlhf_state.json").is_file()
    assert sorted(p.name for p in ckpt.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    if config != "ddp.yaml":  # every process wrote its own optimizer shard
        assert len(list(ckpt.glob("global_step*/*optim_states.pt"))) == 2
    # The saved adapter is whole (ZeRO-3 gathers its partitions on save) and training moved it.
    adapter, is_adapter = policy_weights(ckpt)
    assert is_adapter and adapter and all(v.numel() > 0 for v in adapter.values())
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # LoRA B starts at zero
    exported = export_run(out, tmp_path / "exported")
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape[1] == 6
    assert f"{algorithm.upper()}-aligned policy" in (exported / "README.md").read_text()

"""The README's launch commands for GRPO, RLOO and DPO for real: 2 CPU processes, GRPO under DeepSpeed ZeRO-2
and ZeRO-3, RLOO under DDP, DPO under ZeRO-3 (ZeRO-2 runs the same Trainer code as GRPO's). Each run goes to
the end, only the main process logs, every process writes its RNG state (and its ZeRO shard), and the
checkpoint exports to a model that reloads and generates. GRPO samples with the fast decode loop, except
under ZeRO-3 (partitioned weights), where the log says it falls back to generate(). A GRPO run under ZeRO-3
stopped after update 2 and resumed under the same launch ends where the uninterrupted ZeRO-3 launch does;
the same checkpoint resumed in one process is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from tests.align.conftest import align_args
from tests.conftest import run_cli
from tests.launch import accelerate_launch

LAUNCHES = [("grpo", "deepspeed_zero2.yaml"), ("grpo", "deepspeed_zero3.yaml"), ("rloo", "ddp.yaml"),
            ("dpo", "deepspeed_zero3.yaml")]
FAST = "generation: the fast decode loop (rlhf.decode)"
FALLBACK = "generation: transformers' generate() (the fast decode loop cannot run: weights partitioned by DeepSpeed ZeRO-3)"


def _args(algorithm, out, tiny_model_dir, tiny_reward_dir, tiny_export_dir, *extra):
    reward, data = (None, tiny_export_dir) if algorithm == "dpo" else (tiny_reward_dir, None)
    return align_args(algorithm, tiny_model_dir, out, reward, data, "--num-eval-prompts", "2", *extra)


@pytest.fixture(scope="module", params=LAUNCHES, ids=[f"{a}-{c.removesuffix('.yaml')}" for a, c in LAUNCHES])
def launched(request, tmp_path_factory, tiny_model_dir, tiny_reward_dir, tiny_export_dir):
    """One uninterrupted 4-update launch per configuration: ``(algorithm, config, run dir, result)``; the
    ZeRO-3 resume test compares against the GRPO one instead of launching it again."""
    algorithm, config = request.param
    out = tmp_path_factory.mktemp(f"{algorithm}-{config.removesuffix('.yaml')}") / "run"
    args = _args(algorithm, out, tiny_model_dir, tiny_reward_dir, tiny_export_dir)
    return algorithm, config, out, accelerate_launch(config, ["-m", "rlhf.cli", *args], timeout=900)


def test_two_processes_finish_and_export(launched, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.checkpoint import policy_weights
    from rlhf.export import export_run

    algorithm, config, out, result = launched
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


@pytest.mark.parametrize("launched", [("grpo", "deepspeed_zero3.yaml")], indirect=True, ids=["grpo-deepspeed_zero3"])
def test_zero3_resume_after_update_2_matches_the_uninterrupted_run(launched, tmp_path, tiny_model_dir,
                                                                   tiny_reward_dir, tiny_export_dir):
    from rlhf.checkpoint import policy_weights

    algorithm, config, reference_run, reference = launched
    assert reference.returncode == 0, reference.stderr[-4000:]
    out = tmp_path / "resumed"
    args = ["-m", "rlhf.cli", *_args(algorithm, out, tiny_model_dir, tiny_reward_dir, tiny_export_dir)]
    first = accelerate_launch(config, [*args, "--stop-after-updates", "2"], timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "continue with --resume" in first.stderr
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002"]
    assert len(list((ckpts / "step-000002").glob("global_step*/*optim_states.pt"))) == 2  # one shard per process

    # Without the launch, the Trainer would find no optimizer.pt and restart AdamW silently: refused first.
    alone = run_cli(*args[2:], "--resume")
    errors = [line for line in alone.stderr.splitlines() if line.startswith("error: ")]
    assert alone.returncode == 2 and "Traceback" not in alone.stderr, alone.stderr[-3000:]
    assert len(errors) == 1 and "written by 2 processes under DeepSpeed ZeRO-3, but this launch is 1 process" \
        in errors[0]

    second = accelerate_launch(config, [*args, "--resume"], timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stderr.count("resumed from") == 1 and second.stderr.count("update 4/4") == 1
    resumed, _ = policy_weights(ckpts / "step-000004")
    expected, _ = policy_weights(reference_run / "checkpoints" / "step-000004")
    assert resumed.keys() == expected.keys()
    # The tolerance of the one-process resume test (tests/align/test_align_train.py); measured here: 0.0,
    # the ZeRO-3 resume is bit for bit (gloo's reductions on CPU run in a fixed order).
    for key in resumed:
        diff = (resumed[key] - expected[key]).abs().max().item()
        assert diff < 1e-4, f"{key}: max abs diff {diff:.3g}"
    at_2, _ = policy_weights(ckpts / "step-000002")
    assert max((at_2[k] - resumed[k]).abs().max().item() for k in resumed) > 5e-4  # updates 3 and 4 moved it
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

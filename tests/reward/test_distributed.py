"""The same training command under 2-process DDP, DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import accelerate_launch


def _launch(config, tiny_model_dir, data, out, *extra):
    return accelerate_launch(config, [
        "-m", "reward.train", "--config", "configs/reward/tiny.yaml", "--model", str(tiny_model_dir),
        "--data", str(data), "--output-dir", str(out), "--max-steps", "12", "--logging-steps", "3",
        "--report-to", "[none]",
        # the whole schedule: with early stopping on, a validation check may end it before step 12
        "--validation-fraction", "0", *extra], timeout=600)


@pytest.mark.parametrize("config, stage, extra", [
    ("ddp.yaml", 0, ("--lora.enabled", "true")),
    ("deepspeed_zero2.yaml", 2, ()),
    ("deepspeed_zero3.yaml", 3, ()),
], ids=["ddp-lora", "zero2-full", "zero3-full"])
def test_two_process_training(tmp_path, tiny_model_dir, planted_export, config, stage, extra):
    from reward.evaluate import score_ids
    from rlhf.modeling import load_score_model

    out = tmp_path / "rm"
    result = _launch(config, tiny_model_dir, planted_export, out, *extra)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["zero_stage"] == stage and metrics["steps"] == 12
    losses = metrics["loss_history"]
    assert losses[-1] < 0.8 * losses[0], losses
    trained, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert not any("lora" in k for k in trained)
    assert any(not torch.equal(base[k], trained[k]) for k in base if "q_proj" in k)
    # the consolidated checkpoint scores exactly as the trained (sharded) model did before saving
    model = load_score_model(out)
    after = score_ids(model, metrics["probe"]["ids"], model.config.pad_token_id)
    tol = 1e-4 if extra else 1e-6  # a merged adapter is a sum rounded once more
    assert max(abs(a - b) for a, b in zip(after, metrics["probe"]["before_save"])) <= tol
    assert metrics["held_out"]["accuracy"] > 0.75
    assert (out / "reward_stats.json").is_file() and (out / "config.yaml").is_file()


def test_lora_under_zero3_is_refused_in_one_line(tmp_path, tiny_model_dir, planted_export):
    result = _launch("deepspeed_zero3.yaml", tiny_model_dir, planted_export, tmp_path / "rm", "--lora.enabled", "true")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "lora.enabled with DeepSpeed ZeRO-3 is not supported" in errors[0]
    assert not (tmp_path / "rm").exists()

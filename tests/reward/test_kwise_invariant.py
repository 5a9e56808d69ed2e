"""Pins the K-wise reward trainer's numbers, as TRL's own invariant tests do.

``KWiseRewardTrainer`` overrides TRL 1.12's private ``_prepare_dataset`` and
``_set_signature_columns_if_needed`` and writes the private ``_metrics``. A TRL release that changes
them can break training or logging silently, so a fixed-seed run of a tiny model on a fixed K-wise
dataset must log exactly the loss, accuracy, margin and reward values recorded here (TRL 1.12.0,
transformers 5.23.0, torch 2.13.0 CPU). Re-record them only after checking why they moved.
"""

from __future__ import annotations

import pytest

from tests.reward.conftest import planted_rankings

# Per logged step (logging_steps=1): loss, accuracy, margin, mean_reward, pairs, num_tokens. Recorded
# twice in a row with 2 threads and once with 1, identical to every printed digit. Re-recorded on
# 2026-12-02 when replies came to be read under the chat template's prompt (``rlhf.generation.scored_ids``,
# as PPO reads them; 416 tokens a step where plain text had 176), twice, identical.
EXPECTED = [
    [0.701829, 0.083333, -0.017227, 0.109750, 12.0, 416.0],
    [0.682740, 0.750000, 0.021273, -0.230855, 12.0, 832.0],
    [0.667580, 0.666667, 0.053119, 0.256647, 12.0, 1248.0],
    [0.662203, 0.833333, 0.063496, -0.865050, 12.0, 1664.0],
]


def _run(tiny_model_dir, out):
    import torch
    from datasets import Dataset

    from reward.config import RewardTrainConfig
    from reward.train import build_trainer, trainer_args
    from rlhf.modeling import load_tokenizer

    rows = Dataset.from_list([r.kwise().to_row() for r in planted_rankings(8, k=4, seed=7)])
    config = RewardTrainConfig(model=str(tiny_model_dir), mode="kwise", batch_size=2, learning_rate=0.003,
                               max_steps=4, logging_steps=1, report_to=["none"], max_length=128, seed=0,
                               output_dir=str(out))
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    torch.manual_seed(0)  # the score head is initialised when the model loads, before the trainer seeds
    trainer, _, _ = build_trainer(config, trainer_args(config, out), rows, None, tokenizer)
    trainer.train()
    keys = ("loss", "accuracy", "margin", "mean_reward", "pairs", "num_tokens")
    return [[entry[k] for k in keys] for entry in trainer.state.log_history if "loss" in entry]


def test_kwise_trainer_logs_the_recorded_values(tmp_path, tiny_model_dir):
    logged = _run(tiny_model_dir, tmp_path / "rm")
    assert len(logged) == len(EXPECTED), logged
    for step, (row, expected) in enumerate(zip(logged, EXPECTED), start=1):
        assert row == pytest.approx(expected, abs=1e-4), f"step {step}: logged {row}, recorded {expected}"

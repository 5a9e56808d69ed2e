"""Differentially private reward training (reward/dp.py): the per-unit DP-SGD step against a hand
computation on the tiny model (the Opacus issue 820 concern: LoRA updates silently corrupted), the
pure pieces against hand values, the CLI run with --dp --epsilon 8, and bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from rlhf.errors import UserError
from tests.conftest import run_cli
from tests.reward.conftest import planted_rankings, write_export

# ---------------------------------------------------------------------------------------------------
# Pure pieces


def test_group_by_unit_keeps_first_appearance_order():
    from reward.dp import group_by_unit

    assert group_by_unit(["c:b", "c:a", "c:b", "p:x", "c:a"], "data") == [[0, 2], [1, 4], [3]]


def test_group_by_unit_refuses_a_row_without_unit():
    from reward.dp import group_by_unit

    with pytest.raises(UserError, match=r"data row 1: no privacy unit"):
        group_by_unit(["c:a", None, "c:a"], "data")
    with pytest.raises(UserError, match=r"row 0"):
        group_by_unit(["  "], "data")


def test_clip_factors_hand_values():
    from reward.dp import clip_factors

    assert clip_factors([0.5, 2.0, 4.0, 0.0], 1.0) == [1.0, 1.0 / (2.0 + 1e-6), 1.0 / (4.0 + 1e-6), 1.0]
    assert clip_factors([3.0], 6.0) == [1.0]


def test_plan_privacy_rate_steps_and_default_delta():
    from opacus.accountants import RDPAccountant

    from reward.dp import plan_privacy

    plan = plan_privacy(units=50, rankings=120, units_per_step=5, epochs=2.0, max_steps=-1, epsilon=8.0, delta=None,
                        max_grad_norm=1.0)
    assert plan.sample_rate == 0.1 and plan.steps == 20 and plan.delta == 1.0 / 500
    # The noise multiplier meets the budget: the accountant's epsilon after the planned steps is just under 8.
    acc = RDPAccountant()
    acc.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps)]
    assert 7.9 < acc.get_epsilon(delta=plan.delta) <= 8.0
    # A smaller budget needs more noise.
    tighter = plan_privacy(50, 120, 5, 2.0, -1, 1.0, None, 1.0)
    assert tighter.noise_multiplier > plan.noise_multiplier
    assert plan_privacy(50, 120, 5, 2.0, 7, 8.0, 1e-4, 1.0).steps == 7


def test_plan_privacy_bad_budgets_are_one_line_errors():
    from reward.dp import plan_privacy

    with pytest.raises(UserError, match=r"^epsilon: the accountant cannot meet epsilon 0.01"):
        plan_privacy(50, 120, 5, 1.0, -1, 0.01, 1e-5, 1.0)
    with pytest.raises(UserError, match=r"^delta: 0.05 is not below 1/units"):
        plan_privacy(50, 120, 5, 1.0, -1, 8.0, 0.05, 1.0)
    with pytest.raises(UserError, match=r"1 privacy unit"):
        plan_privacy(1, 3, 5, 1.0, -1, 8.0, None, 1.0)


# ---------------------------------------------------------------------------------------------------
# One DP step against the same step computed by hand


def _hand_ranking_loss(model, tokenizer, prompt, replies, ranks):
    """K-wise loss of one ranking, each reply scored alone (no padding), pairs summed in a Python loop."""
    import torch
    import torch.nn.functional as F

    from reward.data import reply_ids

    scores = [model(input_ids=torch.tensor([reply_ids(tokenizer, prompt, r)])).logits[0, 0] for r in replies]
    pairs = [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
    return sum(-F.logsigmoid(scores[i] - scores[j]) for i, j in pairs) / len(pairs)


def test_one_dp_step_equals_the_hand_computed_clipped_noised_update(tiny_model_dir):
    import torch

    from reward.config import RewardTrainConfig
    from reward.data import reply_ids
    from reward.dp import PrivacyPlan, dp_step, lora_score_model, make_dp_optimizer, per_unit_gradients
    from rlhf.modeling import load_tokenizer

    config = RewardTrainConfig(model=str(tiny_model_dir), dp=True, epsilon=8.0, learning_rate=0.01,
                               weight_decay=0.1, lora={"r": 2, "alpha": 4})
    tokenizer = load_tokenizer(str(tiny_model_dir), padding_side="right")
    # Three units: two rankings of one conversation (K = 3 and 2), one ranking with a tie, one pair.
    units_text = [
        [("Where is my parcel?", ["It left today.", "No idea.", "Tracking says Monday, sorry."], [2, 3, 1]),
         ("Can I change the address?", ["Yes, in settings.", "No."], [1, 2])],
        [("My card was charged twice", ["Refund issued.", "Refund issued, sorry!", "Call the bank.", "Hm."],
          [1, 1, 2, 3])],
        [("Reset my password", ["Use the link we sent.", "Passwords are hard."], [1, 2])],
    ]
    units = [[{"completion_ids": [reply_ids(tokenizer, p, r) for r in replies], "ranks": ranks}
              for p, replies, ranks in unit] for unit in units_text]

    torch.manual_seed(3)
    model, params = lora_score_model(config)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names) and any("score" in n for n in names)
    start = [p.detach().clone() for p in params]

    # By hand: each unit's gradient of its summed ranking losses, on a second copy of the same model.
    torch.manual_seed(3)
    hand_model, hand_params = lora_score_model(config)
    assert all(torch.equal(a, b) for a, b in zip(start, hand_params))
    unit_grads = []
    for unit in units_text:
        loss = sum(_hand_ranking_loss(hand_model, tokenizer, p, replies, ranks) for p, replies, ranks in unit)
        unit_grads.append(torch.autograd.grad(loss, hand_params))
    norms = [math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)) for grads in unit_grads]
    max_grad_norm = sorted(norms)[1]  # clips the largest unit, leaves the smallest alone
    assert min(norms) < max_grad_norm < max(norms)
    plan = PrivacyPlan(units=30, rows=40, units_per_step=4, sample_rate=4 / 30, steps=1, target_epsilon=8.0,
                       delta=1e-3, max_grad_norm=max_grad_norm, noise_multiplier=0.7)
    generator = torch.Generator().manual_seed(11)
    expected_grads = []
    for k, p in enumerate(hand_params):
        clipped = sum(min(1.0, max_grad_norm / (n + 1e-6)) * grads[k] for n, grads in zip(norms, unit_grads))
        noise = torch.normal(0.0, plan.noise_multiplier * max_grad_norm, size=p.shape, generator=generator)
        expected_grads.append((clipped + noise) / plan.units_per_step)
    lr, wd, eps = config.learning_rate, config.weight_decay, 1e-8
    # AdamW's first step: m_hat = g, v_hat = g^2 after bias correction; decoupled weight decay first.
    expected = [p0 * (1 - lr * wd) - lr * g / (g.abs() + eps) for p0, g in zip(start, expected_grads)]

    # The code under test: per-unit gradients (padded micro-batches of 2 rankings), Opacus's DPOptimizer.
    optimizer = make_dp_optimizer(params, plan, lr, wd, noise_seed=11)
    seen = []
    optimizer.original_optimizer.register_step_pre_hook(lambda *_: seen.extend(p.grad.clone() for p in params))
    grads, _ = per_unit_gradients(model, params, units, tokenizer.pad_token_id, micro_batch=2)
    assert [tuple(g.shape) for g in grads] == [(3, *p.shape) for p in params]
    dp_step(optimizer, params, grads)

    for name, got, want in zip(names, seen, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=f"noised gradient of {name}")
    for name, p, want, p0 in zip(names, params, expected, start):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-7, msg=f"update of {name}")
        assert not torch.equal(p.detach(), p0), name  # every adapter and head weight moved


# ---------------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def unit_export(tmp_path_factory):
    """48 prompts x 2 reviewers; three prompts per conversation, so a unit holds six rankings."""
    rankings = planted_rankings(48, seed=1, reviewers=("ann", "bob"))
    rankings = [dataclasses.replace(r, unit=f"conversation:c{i // 6}") for i, r in enumerate(rankings)]
    return write_export(tmp_path_factory.mktemp("dp") / "export", rankings)


def test_cli_dp_epsilon_8_writes_the_spent_epsilon(tiny_model_dir, unit_export, tmp_path):
    out = tmp_path / "rm"
    result = run_cli("reward", "train", "--config", "configs/reward/tiny.yaml", "--model", str(tiny_model_dir),
                     "--data", str(unit_export), "--output-dir", str(out), "--dp", "--epsilon", "8",
                     "--max-steps", "3", "--batch-size", "3", "--lora.r", "4", "--report-to", "[none]",
                     "--allow-weak-reward-model")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "noise multiplier" in result.stderr and "units per step expected" in result.stderr
    from datasets import load_from_disk

    dp = json.loads((out / "metrics.json").read_text())["dp"]
    train_units = set(load_from_disk(str(unit_export / "kwise"))["train"]["unit"])
    assert dp["units"] == len(train_units) and dp["steps"] == 3 and dp["units_per_step"] == 3
    assert 0 < dp["epsilon_spent"] <= 8.0 and dp["noise_multiplier"] > 0
    assert f"epsilon {dp['epsilon_spent']:.3f}** spent" in (out / "README.md").read_text()
    assert "pass --dp-baseline" in result.stderr


def test_cli_dp_without_unit_column_is_one_line(tiny_model_dir, planted_export, tmp_path):
    result = run_cli("reward", "train", "--config", "configs/reward/tiny.yaml", "--model", str(tiny_model_dir),
                     "--data", str(planted_export), "--output-dir", str(tmp_path / "rm"), "--dp", "--epsilon", "8",
                     "--report-to", "[none]")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "no privacy unit ('unit' column) for --dp" in result.stderr
    assert not (tmp_path / "rm").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"epsilon": 8.0, "lora.enabled": False}, "full fine-tuning under DP is not supported"),
    ({"epsilon": 0.01, "delta": 1e-6}, "epsilon: the accountant cannot meet epsilon 0.01"),
    ({}, "--dp needs --epsilon"),
])
def test_dp_bad_input_before_training(tiny_model_dir, unit_export, tmp_path, overrides, message):
    from rlhf.config import load_config

    from reward.config import RewardTrainConfig
    from reward.train import train

    config = load_config(RewardTrainConfig, "configs/reward/tiny.yaml",
                         {"model": str(tiny_model_dir), "data": str(unit_export), "output_dir": str(tmp_path / "rm"),
                          "dp": True, "report_to": ["none"], "allow_weak_reward_model": True, **overrides})
    with pytest.raises(UserError, match=message):
        train(config)
    assert not (tmp_path / "rm").exists()


def test_dp_with_a_probe_method_is_refused():
    from pydantic import ValidationError

    from reward.config import RewardTrainConfig

    with pytest.raises(ValidationError, match="cannot be private"):
        RewardTrainConfig(dp=True, epsilon=8.0, method="probe")
    assert RewardTrainConfig(dp=True, epsilon=8.0).method == "finetune"  # the default is switched, not refused
    assert RewardTrainConfig(dp=True, epsilon=8.0).lora.enabled is True


def test_policy_export_card_names_the_reward_models_budget(tmp_path):
    from rlhf.export import _privacy_line

    (tmp_path / "metrics.json").write_text(json.dumps({"dp": {"epsilon_spent": 7.9934, "delta": 0.005,
                                                              "unit": "customer"}}))
    assert _privacy_line(str(tmp_path)).startswith("- Reward model privacy: DP-SGD, epsilon 7.993 at delta 0.005")
    (tmp_path / "metrics.json").write_text(json.dumps({"dp": None}))
    assert _privacy_line(str(tmp_path)) == "- Reward model privacy: no differential privacy"

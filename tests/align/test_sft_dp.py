"""`rlhf sft --dp` (rlhf/align/sft_dp.py over rlhf/dp.py): one DP step of SFT against the clipped-and-noised
per-unit update computed by hand on the tiny model with LoRA (the Opacus issue 820 concern: LoRA updates
silently corrupted), the command with --dp --epsilon 8 and its exported card, and bad input in one line
before training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

DEMOS = REPO / "configs" / "sft" / "contact_centre_demos.jsonl"
# Three units: a conversation with three demonstrations, a customer with two, a plain prompt alone.
UNITS = [
    ("conversation:c1", [("Where is my parcel?", "It left our warehouse today; tracking updates tonight."),
                         ("Can I change the delivery address?", "Yes: open the order and choose Edit address."),
                         ("How long does delivery take?", "Two to four working days.")]),
    ("customer:k7", [("My card was charged twice", "Sorry! The second charge is a hold and drops off in 3 days."),
                     ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
                       {"role": "user", "content": "Refund?"}], "Refunds take 3 to 5 working days.")]),
    ("prompt:p9", [("Reset my password", "Use the link we emailed you; it works for one hour.")]),
]


def _config(policy, out, data, **overrides):
    from rlhf.align.config import SFTRunConfig
    from rlhf.config import load_config

    return load_config(SFTRunConfig, REPO / "configs" / "sft" / "tiny.yaml",
                       {"policy": str(policy), "output_dir": str(out), "data": [str(data)], **overrides})


def _hand_row_loss(model, tok, prompt, completion):
    """Mean cross-entropy per reply token of one row, tokenized alone (no padding), token by token."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
    full_ids = tok.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=True,
                                       return_dict=True)["input_ids"]
    logits = model(input_ids=torch.tensor([full_ids])).logits[0]
    terms = [-torch.log_softmax(logits[t - 1], -1)[full_ids[t]] for t in range(len(prompt_ids), len(full_ids))]
    return sum(terms) / len(terms)


# ---------------------------------------------------------------------------------------------------
# One DP step against the same step computed by hand


def test_one_dp_sft_step_equals_the_hand_computed_clipped_noised_update(tmp_path, tiny_model_dir):
    from rlhf.align.sft import build_trainer
    from rlhf.align.sft_dp import unit_backward
    from rlhf.dp import PrivacyPlan, dp_step, make_dp_optimizer, per_unit_gradients

    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c, "unit": u}) + "\n" for u, rows in UNITS
                            for p, c in rows))
    config = _config(tiny_model_dir, tmp_path / "run", data, test_fraction=0.0, num_eval_prompts=0, dp=True,
                     epsilon=8.0, lora={"enabled": True, "r": 2, "alpha": 4}, learning_rate=0.01)
    trainer = build_trainer(config)  # the SFT run's policy, LoRA adapter, TRL tokenisation and collator
    model, tok = trainer.model.eval(), trainer.processing_class
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)  # the adapter only: the base model stays frozen
    with torch.no_grad():  # LoRA starts with B = 0, which zeroes A's gradient: start from a random B instead
        generator = torch.Generator().manual_seed(5)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    start = [p.detach().clone() for p in params]

    # By hand: each unit's gradient of the sum of its rows' mean reply-token cross-entropies.
    unit_grads = []
    for _, rows in UNITS:
        loss = sum(_hand_row_loss(model, tok, p, c) for p, c in rows)
        unit_grads.append(torch.autograd.grad(loss, params))
    norms = [math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)) for grads in unit_grads]
    max_grad_norm = sorted(norms)[1]  # clips the largest unit, leaves the smallest alone
    assert min(norms) < max_grad_norm < max(norms)
    plan = PrivacyPlan(units=30, rows=60, units_per_step=4, sample_rate=4 / 30, steps=1, target_epsilon=8.0,
                       delta=1e-3, max_grad_norm=max_grad_norm, noise_multiplier=0.7, row_kind="demonstrations")
    noise = torch.Generator().manual_seed(11)
    expected_grads = []
    for k, p in enumerate(params):
        clipped = sum(min(1.0, max_grad_norm / (n + 1e-6)) * grads[k] for n, grads in zip(norms, unit_grads))
        expected_grads.append((clipped + torch.normal(0.0, plan.noise_multiplier * max_grad_norm, size=p.shape,
                                                      generator=noise)) / plan.units_per_step)
    lr, eps = config.learning_rate, 1e-8
    expected = [p0 - lr * g / (g.abs() + eps) for p0, g in zip(start, expected_grads)]  # AdamW's first step, wd 0

    # The code under test: TRL's tokenized rows in padded micro-batches of 2, Opacus's DPOptimizer.
    rows = [{k: row[k] for k in ("input_ids", "labels")} for row in trainer.train_dataset]
    units = [rows[0:3], rows[3:5], rows[5:6]]
    optimizer = make_dp_optimizer(params, plan, lr, 0.0, noise_seed=11)
    seen = []
    optimizer.original_optimizer.register_step_pre_hook(lambda *_: seen.extend(p.grad.clone() for p in params))
    grads, loss = per_unit_gradients(params, units, lambda u: unit_backward(model, u, trainer.data_collator, 2))
    assert [tuple(g.shape) for g in grads] == [(3, *p.shape) for p in params]
    for u, hand in enumerate(unit_grads):  # each unit's gradient, before clipping, is the hand one
        for k, name in enumerate(names):
            torch.testing.assert_close(grads[k][u], hand[k], rtol=1e-4, atol=1e-7, msg=f"unit {u}, {name}")
    dp_step(optimizer, params, grads)

    for name, got, want in zip(names, seen, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=f"noised gradient of {name}")
    for name, p, want, p0 in zip(names, params, expected, start):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-7, msg=f"update of {name}")
        assert not torch.equal(p.detach(), p0), name  # every adapter weight moved


# ---------------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def unit_demos(tmp_path_factory) -> Path:
    """60 shipped demonstrations, three prompts per conversation: 20 units."""
    rows = [json.loads(line) for line in DEMOS.read_text().splitlines()[:60]]
    path = tmp_path_factory.mktemp("sftdp") / "demos.jsonl"
    path.write_text("".join(json.dumps({**r, "unit": f"conversation:c{i // 3}"}) + "\n" for i, r in enumerate(rows)))
    return path


def sft_args(policy: Path, out: Path, data: Path, *extra: str) -> list[str]:
    return ["sft", "--config", str(REPO / "configs" / "sft" / "tiny.yaml"), "--policy", str(policy),
            "--data", str(data), "--output-dir", str(out), *extra]


def test_cli_sft_dp_epsilon_8_reports_the_spent_epsilon_in_metrics_and_card(tiny_model_dir, unit_demos, tmp_path):
    from rlhf.export import export_run

    run = tmp_path / "run"
    result = run_cli(*sft_args(tiny_model_dir, run, unit_demos, "--dp", "--epsilon", "8", "--total-updates", "3",
                               "--dp-baseline"))
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    plan_line = next(x for x in err.splitlines() if x.startswith("differential privacy: 20 units"))
    assert "(58 demonstrations), 2 units per step expected" in plan_line and "3 steps" in plan_line
    assert "noise multiplier" in plan_line
    assert err.index("differential privacy: 20 units") < err.index("DP-SGD")  # the plan comes before training
    metrics = json.loads((run / "metrics.json").read_text())
    dp = metrics["dp"]
    assert (dp["units"], dp["rows"], dp["units_per_step"], dp["steps"]) == (20, 58, 2, 3)
    assert 0 < dp["epsilon_spent"] <= 8.0 and dp["noise_multiplier"] > 0 and dp["delta"] == 1 / 200
    assert isinstance(metrics["heldout_loss_after"], float) and isinstance(dp["baseline_heldout_loss_after"], float)
    assert "the same schedule without DP" in err

    card = (export_run(run, tmp_path / "model") / "README.md").read_text()
    assert f"**epsilon {dp['epsilon_spent']:.3f} spent** at delta 0.005 per unit" in card
    assert "- Differential privacy: DP-SGD" in card and "20 units (58 demonstrations)" in card
    assert (tmp_path / "model" / "model.safetensors").is_file()
    # A policy trained from this model (rlhf ppo/grpo/rloo/dpo --policy MODEL) names the budget in its own card.
    from rlhf.export import _start_privacy_line

    line = _start_privacy_line(tmp_path / "model")
    assert len(line) == 1 and line[0].startswith(f"- Starting policy (SFT) privacy: DP-SGD (Opacus, RDP accountant), "
                                                 f"epsilon {dp['epsilon_spent']:.3f} spent at delta 0.005 per unit")
    (tmp_path / "plain").mkdir()
    assert _start_privacy_line(tmp_path / "plain") == []
    (tmp_path / "plain" / "sft_metrics.json").write_text(json.dumps({"heldout_loss_after": 2.0}))
    assert _start_privacy_line(tmp_path / "plain") == ["- Starting policy (SFT) privacy: no differential privacy"]


def _one_line_exit_2(argv, capsys) -> str:
    from rlhf.cli import main

    assert main(argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(("extra", "message"), [
    (("--epsilon", "8", "--lora.enabled", "false"), "full fine-tuning under DP is not supported"),
    (("--delta", "1e-5", "--epsilon", "0.01", "--total-updates", "10"), "epsilon: the accountant cannot meet epsilon "
                                                                          "0.01 at delta 1e-05"),
    (("--epsilon", "8", "--resume"), "--resume and stop_after_updates are not supported"),
    ((), "--dp needs --epsilon"),
], ids=["full-fine-tuning", "unmeetable-budget", "resume", "no-epsilon"])
def test_sft_dp_bad_settings_are_one_line_before_training(extra, message, tiny_model_dir, unit_demos, tmp_path, capsys):
    line = _one_line_exit_2(sft_args(tiny_model_dir, tmp_path / "run", unit_demos, "--dp", *extra), capsys)
    assert message in line
    assert not (tmp_path / "run").exists()


def test_sft_dp_without_units_is_one_line_naming_the_row(tiny_model_dir, unit_demos, tmp_path, capsys):
    # The shipped demonstrations carry no 'unit' column.
    line = _one_line_exit_2(sft_args(tiny_model_dir, tmp_path / "run", DEMOS, "--dp", "--epsilon", "8"), capsys)
    assert f"{DEMOS} (training demonstrations) row 0: no privacy unit ('unit' column) for --dp" in line
    # One row without a unit among rows with one: named by its index.
    rows = unit_demos.read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(rows[:4] + [json.dumps({k: v for k, v in json.loads(rows[4]).items() if k != "unit"})]
                                 + rows[5:]) + "\n")
    line = _one_line_exit_2(sft_args(tiny_model_dir, tmp_path / "run", partial, "--dp", "--epsilon", "8"), capsys)
    assert "no privacy unit" in line and "(training demonstrations) row " in line
    assert not (tmp_path / "run").exists()

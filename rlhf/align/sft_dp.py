"""``rlhf sft --dp``: differentially private SFT, DP-SGD per privacy unit on the LoRA adapter.

TRL's SFTTrainer has no DP path, so the optimisation loop is this project's (``rlhf.dp``, shared with
``rlhf reward train --dp``); everything else is the SFT run's own: ``rlhf.align.sft.build_trainer``
checks and loads the demonstrations, loads the policy (``rlhf.modeling``) with its LoRA adapter
(``rlhf.lora``), and tokenizes the prompt-completion rows with TRL, whose labels are -100 on the prompt
(``completion_only_loss``); its collator pads them. The held-out loss, metrics, TensorBoard and
checkpoint layout are the non-DP run's, so ``rlhf export`` reads a DP run like any SFT run.

The privacy unit is each row's ``unit`` (``rlhf app export`` writes the customer, else conversation,
else prompt): a unit's gradient is the gradient of the SUM over its demonstrations of each one's mean
cross-entropy per reply token, so one customer's several conversations and prompts are clipped together.
What is not covered: the held-out split (never trained on, but its loss is reported) and the prompts
the sample replies answer, which are held-out prompts only. No resume (the accountant's and sampler's
state are not checkpointed) and one process only.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rlhf.dp import check_single_process, group_by_unit, plan_privacy, privacy_text, train_units
from rlhf.errors import UserError

UNIT = "customer, else conversation, else prompt"  # what the export's 'unit' column names


def check_dp_config(run, resume: str | None) -> None:
    """Settings DP-SGD here does not support: one line each, before any data is read."""
    if run.epsilon is None:
        raise UserError("--dp needs --epsilon (the privacy budget per unit, e.g. 8)")
    if not run.lora.enabled:
        raise UserError("--dp trains the LoRA adapter only; full fine-tuning under DP is not supported: leave "
                        "lora.enabled on (the default)")
    if resume is not None or run.stop_after_updates is not None:
        raise UserError("--dp runs start to finish: --resume and stop_after_updates are not supported (the "
                        "accountant's and the unit sampler's state are not checkpointed)")
    check_single_process()


def plan_for(run, demos) -> tuple[list[list[int]], Any]:
    """The training demonstrations grouped by unit, and the privacy plan: refused (one line) before any model
    loads when a row has no unit or the budget cannot be met."""
    where = f"{', '.join(run.data)} (training demonstrations)"
    groups = group_by_unit([d.unit for d in demos.train], where)
    plan = plan_privacy(len(groups), len(demos.train), run.per_device_batch_size * run.gradient_accumulation_steps,
                        0.0, run.total_updates, run.epsilon, run.delta, run.max_grad_norm, row_kind="demonstrations")
    return groups, plan


def row_losses(model, batch, bf16: bool = False):
    """[B] mean cross-entropy per reply token of each row of a collated batch (``input_ids``,
    ``attention_mask``, ``labels`` with -100 on prompt and padding): logits ``[:, :-1]`` against labels
    ``[:, 1:]``, the causal shift, as ``rlhf.align.sft.completion_loss``."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    mask = labels != -100
    tokens = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1)


def unit_backward(model, rows: list[dict], collate, micro_batch: int, bf16: bool = False) -> float:
    """Backward of the SUM of the unit's rows' losses (``row_losses``), ``micro_batch`` rows per forward;
    gradients accumulate in ``p.grad``. ``rows``: tokenized rows (``input_ids``, ``labels``)."""
    total = 0.0
    for start in range(0, len(rows), micro_batch):
        loss = row_losses(model, collate(rows[start:start + micro_batch]), bf16).sum()
        loss.backward()
        total += loss.item()
    return total


def save_checkpoint(model, run, step: int) -> Path:
    """The adapter in the layout ``rlhf.checkpoint.policy_weights`` reads (Transformers' Trainer layout:
    ``adapter_model.safetensors`` beside ``trainer_state.json``), published atomically as ``step-N``."""
    from rlhf.checkpoint import CHECKPOINTS, publish_checkpoint

    root = Path(run.output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-dp-{step}-", dir=root))
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": run.total_updates}))
    meta = {"config_fingerprint": run.fingerprint(), "algorithm": run.algorithm, "world_size": 1,
            "lora": True, "zero_stage": 0, "layout": "dp-sft"}
    return publish_checkpoint(tmp, run.output_dir, step, meta, run.keep_checkpoints)


def run_sft_dp(run, resume: str | None = None) -> int:
    import torch

    from rlhf.align.demonstrations import read_demonstrations
    from rlhf.align.sft import build_trainer, heldout_loss

    check_dp_config(run, resume)
    demos = read_demonstrations(run.data, run.test_fraction)  # the rows build_trainer reads again, in this order
    groups, plan = plan_for(run, demos)
    print(plan.summary(), file=sys.stderr, flush=True)

    trainer = build_trainer(run)  # the SFT run's checks, policy + LoRA, TRL's tokenisation and collator
    rows = [{k: row[k] for k in ("input_ids", "labels")} for row in trainer.train_dataset]
    if len(rows) != plan.rows:  # TRL drops rows only when truncation leaves no reply token; ours are never cut
        raise UserError(f"{', '.join(run.data)}: {plan.rows} training demonstrations, but TRL's tokenisation kept "
                        f"{len(rows)}; rows and privacy units no longer line up")
    units = [[rows[i] for i in g] for g in groups]
    test_prompts = {json.dumps(d.prompt, sort_keys=True) for d in demos.test}
    # Sample replies (written into samples.jsonl and the model card) answer held-out prompts only.
    trainer.eval_prompts = [p for p in trainer.eval_prompts if json.dumps(p, sort_keys=True) in test_prompts]
    out = Path(run.output_dir)

    before = heldout_loss(trainer)
    if before:
        trainer.say(f"held-out loss before SFT: {before[0]:.4f} over {before[1]} reply tokens")
    model = trainer.model
    model.eval()  # no dropout: a unit's gradient must not depend on which dropout mask came up
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]

    def backward(unit):
        return unit_backward(model, unit, trainer.data_collator, run.per_device_batch_size, run.bf16_autocast)

    def on_step(step: int, figures: dict) -> None:
        if trainer.writer:
            trainer.writer.log_update(step, {k: v for k, v in figures.items() if v is not None})
        if run.num_eval_prompts and (step % run.sample_every == 0 or step == 1 or step == run.total_updates):
            samples = trainer.sample_replies()
            model.eval()
            if trainer.writer:
                trainer.writer.log_samples(step, samples)

    record = train_units(params, units, plan, backward, run.learning_rate, 0.0, run.seed, private=True,
                         linear_decay=True, on_step=on_step)
    record["unit"] = UNIT
    trainer.say(f"checkpoint: {save_checkpoint(model, run, plan.steps)}")
    after = heldout_loss(trainer)
    dp = {k: v for k, v in record.items() if k != "loss_history"}
    dp["baseline_heldout_loss_after"] = None
    if run.dp_baseline:  # the same sampling and schedule from the same initial adapter, without clipping or noise
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        base = train_units(params, units, plan, backward, run.learning_rate, 0.0, run.seed, private=False,
                           linear_decay=True)
        baseline = heldout_loss(trainer)
        dp["baseline_heldout_loss_after"] = baseline[0] if baseline else None
        dp["baseline_train_seconds"] = base["train_seconds"]
    if trainer.writer:
        trainer.writer.close()

    metrics = {"heldout_loss_before": before[0] if before else None, "heldout_loss_after": after[0] if after else None,
               "heldout_tokens": after[1] if after else 0, "updates": plan.steps, **trainer.demonstrations, "dp": dp}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    loss = lambda value: "n/a" if value is None else f"{value:.4f}"  # noqa: E731
    trainer.say(f"differential privacy: {privacy_text(dp)}")
    trainer.say(f"held-out loss after DP SFT: {loss(metrics['heldout_loss_after'])} (before "
                f"{loss(metrics['heldout_loss_before'])})"
                + (f"; the same schedule without DP: {loss(dp['baseline_heldout_loss_after'])}" if run.dp_baseline
                   else " (pass --dp-baseline for the same run without DP beside it)"))
    trainer.say(f"done: {plan.steps}/{run.total_updates} updates; run directory {out}")
    return plan.steps

"""What GRPO, RLOO and DPO runs share around TRL's trainers: resume, checkpoints, metrics, sample replies.

TRL 1.12's GRPOTrainer, RLOOTrainer and DPOTrainer are Transformers ``Trainer``s: their own
checkpoints (weights or adapter, optimizer, scheduler, every process's RNG, step count; DeepSpeed
shards) and ``train(resume_from_checkpoint=...)`` restore almost everything. This module adds, as a
mixin placed before the TRL trainer class:

* atomic checkpoints in this project's layout (``rlhf.checkpoint``): the Trainer writes
  ``checkpoints/checkpoint-N``, which is renamed to ``checkpoints/step-N`` with ``rlhf_state.json``
  (config fingerprint) only when every process has finished, so a SIGKILL mid-write leaves the
  previous checkpoint as the newest complete one;
* SIGTERM and ``stop_after_updates``: a checkpoint after the current update, then a clean stop;
* ``EpochSeededRepeatSampler``: TRL's RepeatSampler draws each epoch's prompt order from one
  generator advanced by every earlier epoch, which a resumed run has not replayed; here epoch ``e``
  is drawn from ``seed + e``;
* metrics per update (``metrics.jsonl``, TensorBoard) under the names PPO uses, and greedy sample
  replies to fixed prompts every ``sample_every`` updates.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch
from transformers import GenerationConfig, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl.trainer.utils import RepeatSampler

from rlhf.align.config import AlignRunConfig
from rlhf.checkpoint import CHECKPOINTS, latest_checkpoint, publish_checkpoint, read_state
from rlhf.errors import UserError
from rlhf.runlog import MetricsWriter
from rlhf.runtime import world_size, zero_stage

# TRL metric name -> the name this project logs (PPO's names where the meaning is the same)
RENAMED = {
    "completions/mean_length": "response_length",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "pair_accuracy",
}
TRAINER_CHECKPOINT = "checkpoint-"  # the Trainer's own folder name, renamed once complete


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler whose epoch ``e`` permutation comes from ``seed + e``.

    ``epoch_of()`` is read when iteration starts (the trainer's update count over the updates per
    epoch), which is also right for a run resumed in the middle of a later epoch.
    """

    def __init__(self, *args, epoch_of, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch_of = epoch_of

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + self.epoch_of())
        yield from super().__iter__()


class ResumableRun:
    """Mixin for a TRL ``Trainer`` subclass: put it first (``class X(ResumableRun, GRPOTrainer)``)."""

    def setup_run(self, run: AlignRunConfig, eval_prompts: list, scorer, resume_from: Path | None) -> None:
        """``eval_prompts``: chat messages of the sample-reply prompts; ``scorer(prompts, replies) -> [float]``."""
        self.run, self.eval_prompts, self.scorer, self.resume_from = run, eval_prompts, scorer, resume_from
        self.stop_requested = False
        self.guard = None  # rlhf.ppo.guard.GuardWatch (GRPO/RLOO with guard_reward_model), set by the builder
        self.writer = MetricsWriter(run.output_dir, scope=run.algorithm) if self.accelerator.is_main_process else None
        self.add_callback(_RunCallback(self))
        self.remove_callback(PrinterCallback)  # our callback prints one readable line per update

    def create_model_card(self, *args, **kwargs):
        # TRL writes a README into output_dir at every checkpoint; `rlhf export` writes the model card.
        return None

    def train(self):
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            if self.resume_from is not None:
                self.say(f"resumed from {self.resume_from} at update {read_state(self.resume_from)['step']}")
            super().train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.writer:
                self.writer.close()
        return self.state.global_step

    def _on_sigterm(self, signum, frame):
        # Only a flag: the checkpoint is written at the end of the current update, in step on all processes.
        self.stop_requested = True
        iterations = getattr(self.run, "num_iterations", 1)
        self.say("SIGTERM: saving a checkpoint after this update, then stopping" if iterations == 1 else
                 f"SIGTERM: saving a checkpoint after the last of the {iterations} updates on this batch of "
                 f"replies, then stopping")

    def say(self, text: str) -> None:
        if self.accelerator.is_main_process:
            print(text, file=sys.stderr, flush=True)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)  # every process writes its part into checkpoint-N
        self.accelerator.wait_for_everyone()
        step = self.state.global_step
        written = Path(self.args.output_dir) / f"{TRAINER_CHECKPOINT}{step}"
        meta = {"config_fingerprint": self.run.fingerprint(), "algorithm": self.run.algorithm,
                "world_size": self.accelerator.num_processes, "lora": self.run.lora.enabled,
                "zero_stage": zero_stage(), "layout": "transformers-trainer"}
        if self.accelerator.is_main_process:
            path = publish_checkpoint(written, self.run.output_dir, step, meta, self.run.keep_checkpoints)
            self.say(f"checkpoint: {path}")
        self.accelerator.wait_for_everyone()

    # -----------------------------------------------------------------------------------------------
    # Sample replies

    @torch.no_grad()
    def sample_replies(self) -> list[dict]:
        """Greedy replies to the fixed evaluation prompts (no random numbers drawn), with their scores."""
        from trl.models.utils import unwrap_model_for_generation

        from rlhf.generation import render_prompt

        if not self.eval_prompts:
            return []
        tok = self.processing_class
        texts = [render_prompt(tok, p) for p in self.eval_prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.accelerator.device)
        # One GenerationConfig, the call shape rlhf.ppo.rollout.route_generate answers with the fast loop
        # (GRPO, RLOO); elsewhere generate() reads it the same way.
        config = GenerationConfig(max_new_tokens=self.run.response_length, do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            out = unwrapped.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                     generation_config=config)
            unwrapped.train(was_training)
        replies = [tok.decode(ids, skip_special_tokens=True).strip() for ids in out[:, enc["input_ids"].shape[1]:]]
        scores = self.scorer(self.eval_prompts, replies)
        return [{"prompt": text, "reply": reply, "score": float(score)}
                for text, reply, score in zip(texts, replies, scores)]


class _RunCallback(TrainerCallback):
    """Stopping, sample replies and the per-update log, around the Trainer's loop."""

    def __init__(self, trainer: ResumableRun):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        t, run, step = self.trainer, self.trainer.run, state.global_step
        # SIGTERM stops where a new batch of replies is sampled next (GRPO/RLOO with num_iterations > 1),
        # so the resumed run samples where the uninterrupted one does
        boundary = step % getattr(run, "num_iterations", 1) == 0
        stop = (t.stop_requested and boundary) or (run.stop_after_updates is not None and step >= run.stop_after_updates)
        if t.accelerator.num_processes > 1:  # every process must agree: the save is collective
            flag = torch.tensor([float(stop)], device=t.accelerator.device)
            stop = bool(t.accelerator.reduce(flag, "sum").item() > 0)
        if run.num_eval_prompts and (step % run.sample_every == 0 or step == 1 or step == run.total_updates):
            samples = t.sample_replies()
            if t.writer:
                t.writer.log_samples(step, samples)
                for s in samples[:2]:
                    t.say(f"  sample [{s['score']:+.2f}] {s['prompt'][-60:]!r} -> {s['reply'][:120]!r}")
        if stop and step < run.total_updates:
            control.should_save = True
            control.should_training_stop = True
            t.say(f"stopped after update {step}; continue with --resume")
        return control

    def _guard(self, step: int, logs: dict, control) -> None:
        """The guard's decision on this update (every process: TRL's logged means are over all of them);
        on a stop the best update's policy weights go back into the policy and are saved as this step's
        checkpoint, the run's last, which ``rlhf export`` takes."""
        from rlhf.guards import UpdateMetrics
        from rlhf.ppo.guard import restore_policy_weights, trainable_policy_weights

        t = self.trainer
        train_name, guard_name = t.guard.reward_names
        keys = (f"rewards/{train_name}/mean", f"rewards/{guard_name}/mean")
        if not all(k in logs for k in keys):
            return
        eos = 1.0 - float(logs.get("completions/clipped_ratio", 1.0))
        decision = t.guard.check(UpdateMetrics(step, float(logs[keys[0]]), float(logs[keys[1]]),
                                               float(logs.get("kl", 0.0)),
                                               float(logs.get("completions/mean_length", 0.0)), eos),
                                 final=step >= t.run.total_updates)
        logs["held_out_reward"] = float(logs[keys[1]])
        policy = t.accelerator.unwrap_model(t.model)
        if decision.keep_step == step:
            t.guard.best_weights, t.guard.best_step = trainable_policy_weights(policy), step
        if decision.action != "continue":
            t.say(f"guard: {decision.message}")
        if decision.action == "stop":
            restore_policy_weights(policy, t.guard.best_weights)
            control.should_save = True
            control.should_training_stop = True
            t.say(f"guard: stopped after update {step} of {t.run.total_updates}; kept update {t.guard.best_step} "
                  f"(the second reward model's best): its policy weights are this update's checkpoint")
        if t.accelerator.is_main_process:
            from rlhf.checkpoint import checkpoint_dir

            t.guard.write(kept_checkpoint=str(checkpoint_dir(t.run.output_dir, step))
                          if decision.action == "stop" else None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        t = self.trainer
        logs = dict(logs or {})
        if t.guard is not None and "train_runtime" not in logs:
            self._guard(state.global_step, logs, control)
        if not t.writer or "train_runtime" in logs or any(k.startswith("eval_") for k in logs):
            return
        metrics = {RENAMED.get(k, k): v for k, v in logs.items() if isinstance(v, (int, float))}
        if "completions/clipped_ratio" in metrics:  # a reply not cut at the length limit ended with EOS
            metrics["eos_share"] = 1.0 - metrics["completions/clipped_ratio"]
        t.writer.log_update(state.global_step, metrics)
        shown = [f"{k} {metrics[k]:+.3f}" for k in ("reward", "kl", "entropy", "loss", "reward_margin",
                                                      "pair_accuracy", "mean_token_accuracy", "response_length")
                 if k in metrics]
        t.say(f"update {state.global_step}/{t.run.total_updates}  " + "  ".join(shown))


# ---------------------------------------------------------------------------------------------------
# Building a run (shared by the algorithms' build functions)


def prepare_output_dir(run: AlignRunConfig, resume: str | None) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses a fresh run over existing checkpoints.

    ``resume``: None, ``"latest"`` (newest complete checkpoint of output_dir) or a checkpoint path.
    Folders the Trainer left half-written (killed mid-save) are removed.
    """
    out = Path(run.output_dir)
    if resume is None:
        resume_from = None
        if any(out.glob(f"{CHECKPOINTS}/step-*")):
            raise UserError(f"{out}: already holds checkpoints; pass --resume to continue, or choose another "
                            f"output_dir")
    else:
        resume_from = latest_checkpoint(out) if resume == "latest" else Path(resume)
        read_state(resume_from, fingerprint=run.fingerprint(), launch=(world_size(),
                                                                        zero_stage()))
    if int(os.environ.get("RANK", "0")) == 0:
        for stale in out.glob(f"{CHECKPOINTS}/{TRAINER_CHECKPOINT}*"):
            shutil.rmtree(stale, ignore_errors=True)
    return resume_from


def trainer_args(run: AlignRunConfig) -> dict:
    """Keyword arguments every TRL config of these runs takes the same way (``beta`` is the algorithm's own:
    SFT has none)."""
    return dict(
        output_dir=str(Path(run.output_dir) / CHECKPOINTS), use_cpu=not torch.cuda.is_available(),
        bf16=run.bf16_autocast, seed=run.seed, data_seed=run.seed, learning_rate=run.learning_rate,
        lr_scheduler_type="linear", per_device_train_batch_size=run.per_device_batch_size,
        gradient_accumulation_steps=run.gradient_accumulation_steps, max_steps=run.total_updates,
        logging_steps=1, save_strategy="steps", save_steps=run.save_every, report_to="none",
        disable_tqdm=True, gradient_checkpointing=False, dataloader_num_workers=0, save_only_model=False,
    )


def write_run_info(trainer, run: AlignRunConfig, info: dict) -> None:
    from rlhf.config import save_resolved
    from rlhf.modeling import resolve_model_path

    if trainer.accelerator.is_main_process:
        out = Path(run.output_dir)
        save_resolved(run, out)
        (out / "run_info.json").write_text(json.dumps({
            "trainer": run.algorithm, "policy_path": resolve_model_path(run.policy),
            "world_size": trainer.accelerator.num_processes, "zero_stage": zero_stage(),
            "config_fingerprint": run.fingerprint(), **info}, indent=2))

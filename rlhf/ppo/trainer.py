"""TRL's PPO with resume: a subclass of ``trl.experimental.ppo.PPOTrainer`` and the run that builds it.

TRL 1.12's ``PPOTrainer.train()`` restarts its step count and data iterator, draws minibatch order
from NumPy's global random state and saves no value model. This module keeps TRL's update loop and
adds, around it:

* ``RolloutBatches``: the rollout prompts in an order fixed by (seed, update), replacing TRL's
  shuffling DataLoader, so the data position of a resumed run is simply its update count;
* ``ResumablePPOTrainer.train``: restores model, optimizer, scheduler and every process's random
  states (Python, NumPy's global state, torch) with ``accelerator.load_state`` before the loop;
* ``_RunCallback``: puts the restored step count back into TRL's state, writes a checkpoint every
  ``save_every`` updates, at the end and after a SIGTERM, logs metrics and sample replies.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, GenerationConfig, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer

from rlhf.checkpoint import latest_checkpoint, load_training_state, read_state, save_training_state
from rlhf.config import save_resolved
from rlhf.errors import UserError
from rlhf.gate import require_gate
from rlhf.guards import build_guard
from rlhf.lora import lora_config
from rlhf.ppo.config import PPORunConfig
from rlhf.ppo.data import batch_indices, load_prompt_ids
from rlhf.ppo.metrics import RENAMED, MetricsWriter, RolloutProbe
# centred_head is re-exported: the PPO unit tests import it from here.
from rlhf.rewards import centre_reward_model, centred_head, check_reward_model  # noqa: F401
from rlhf.runtime import is_main_process, world_size, zero_stage

log = logging.getLogger(__name__)


class _StopRun(Exception):
    """Raised from the callback after a checkpoint to leave TRL's loop (SIGTERM or stop_after_updates)."""


# ---------------------------------------------------------------------------------------------------
# Checks on the inputs


def check_run_config(config: PPORunConfig, world_size: int, stage: int) -> None:
    """Combinations that cannot work, refused before any model is loaded."""
    local_batch = config.per_device_batch_size * config.gradient_accumulation_steps
    if local_batch % config.num_mini_batches:
        raise UserError(f"num_mini_batches={config.num_mini_batches} must divide per_device_batch_size x "
                        f"gradient_accumulation_steps = {local_batch}")
    if config.whiten_rewards and local_batch // config.num_mini_batches < 8:
        raise UserError(f"whiten_rewards needs minibatches of at least 8 rollouts per process; this config has "
                        f"{local_batch // config.num_mini_batches} (raise per_device_batch_size or "
                        f"gradient_accumulation_steps, lower num_mini_batches, or set whiten_rewards: false)")
    if stage == 3 and config.lora.enabled and config.lora.modules_to_save:
        raise UserError("lora.modules_to_save cannot be used under DeepSpeed ZeRO-3 (modules trained beside the "
                        "adapter come out as empty partitions); empty it, or use ZeRO-2")
    if config.value_lora_top_layers is not None and not config.value_lora:
        raise UserError("value_lora_top_layers places the value model's LoRA adapter: it needs value_lora: true "
                        "(or leave value_lora_top_layers unset)")
    if config.dtype not in ("float32", "bfloat16"):
        raise UserError(f"field 'dtype': {config.dtype!r} is not float32 or bfloat16")


# ---------------------------------------------------------------------------------------------------
# Rollout data in a resumable order


class RolloutBatches:
    """Infinite iterator of this process's rollout batches from update ``start`` on (see batch_indices)."""

    def __init__(self, prompt_ids, tokenizer, local_batch: int, world: int, rank: int, seed: int,
                 start: int, probe: RolloutProbe):
        self.prompt_ids, self.local_batch, self.world, self.rank = prompt_ids, local_batch, world, rank
        self.seed, self.position, self.probe = seed, start, probe
        self.collate = DataCollatorWithPadding(tokenizer)  # the tokenizer pads on the left

    def __iter__(self):
        while True:
            idx = batch_indices(len(self.prompt_ids), self.local_batch * self.world, self.position, self.seed)
            mine = idx[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
            batch = self.collate([{"input_ids": self.prompt_ids[i]} for i in mine])
            self.probe.context_length = batch["input_ids"].shape[1]
            self.position += 1
            yield batch


# ---------------------------------------------------------------------------------------------------
# The trainer


class ResumablePPOTrainer(PPOTrainer):
    """TRL's PPOTrainer whose ``train()`` continues from a checkpoint and writes its own."""

    def setup_run(self, run: PPORunConfig, prompt_ids, eval_ids, probe: RolloutProbe, resume_from: Path | None,
                  guard=None):
        self.run, self.eval_ids, self.probe = run, eval_ids, probe
        self.guard, self.guard_stop = guard, False  # rlhf.ppo.guard.GuardWatch, or None
        if guard is not None:
            guard.model.to(self.accelerator.device)
            probe.guard = guard
        self.resume_from = resume_from
        self.start_step = read_state(resume_from)["step"] if resume_from else 0
        self.stop_requested = False
        self.dataloader = RolloutBatches(prompt_ids, self.processing_class, self.args.local_batch_size,
                                         self.accelerator.num_processes, self.accelerator.process_index,
                                         run.seed, self.start_step, probe)
        # The scheduler is not passed through accelerator.prepare by TRL; register it so save_state keeps it.
        self.accelerator.register_for_checkpointing(self.lr_scheduler)
        self.writer = MetricsWriter(run.output_dir) if self.accelerator.is_main_process else None
        self.add_callback(_RunCallback(self))
        self.remove_callback(PrinterCallback)  # our callback prints one readable line per update
        if run.bf16_autocast or run.bf16_rollouts:
            self._bfloat16(rollouts=run.bf16_rollouts, swap_weights=zero_stage() < 3)
        if run.reply_logits_only:
            from rlhf.ppo.rollout import reply_logits_only

            for model in self._causal_lms():
                reply_logits_only(model.get_output_embeddings(), run.response_length + 1)
        self.reference_states = None
        if run.reward_from_reference:
            self._reuse_reference_pass(guard)
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            # TRL's loop reaches the policy as `model.policy` for the LoRA reference pass, which DDP's
            # wrapper does not forward. Expose it as a plain attribute (not a submodule, so DDP's
            # parameters and state dict stay as they are).
            object.__setattr__(self.model, "policy", self.accelerator.unwrap_model(self.model).policy)

    def _reuse_reference_pass(self, guard) -> None:
        """Score models whose backbone is the reference network, or its bottom layers, read the reference
        pass's hidden states instead of computing them again (rlhf.ppo.reuse); each says which it does."""
        from rlhf.ppo.reuse import ReferenceStates, body_of, depth_of, frozen_weights_differ, read_from_reference

        if zero_stage() == 3:
            return  # partitioned weights cannot be compared here
        unwrap = self.accelerator.unwrap_model
        if self.ref_model is not None:
            reference, always = body_of(unwrap(self.ref_model)), True
        else:
            policy = unwrap(self.model).policy
            reference, always = body_of(policy.get_base_model() if hasattr(policy, "get_base_model") else policy), False
        states = ReferenceStates()
        scorers = [("reward model", unwrap(self.reward_model))]
        if guard is not None:
            scorers.append(("guard's reward model", guard.model))
        for name, model in scorers:
            reason = frozen_weights_differ(body_of(model), reference)
            if reason:
                self.say(f"{name}: its own forward pass each update ({reason})")
            else:
                read_from_reference(model, states, name, self.say, depth_of(reference))
                self.reference_states = states
        if self.reference_states is not None:
            states.attach(reference, always)

    @contextlib.contextmanager
    def null_ref_context(self):
        """TRL's reference context (the adapter switched off), in which the reference pass is recorded."""
        states = getattr(self, "reference_states", None)
        with super().null_ref_context():
            if states is not None:
                states.recording = True
            try:
                yield
            finally:
                if states is not None:
                    states.recording = False

    def create_optimizer(self):
        optimizer = super().create_optimizer()
        # With LoRA on the policy and the value model nothing trainable is exempt from weight decay, so
        # the Trainer's no-decay group is empty. DeepSpeed's ZeRO optimizer drops empty groups, after
        # which the scheduler's per-group learning rates no longer line up ("zip() argument 2 is
        # longer"). Drop it here, before the scheduler is built on this optimizer.
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def _causal_lms(self) -> list:
        """The policy's causal LM (under any PEFT wrapper) and the separate reference copy, if any."""
        unwrap = self.accelerator.unwrap_model
        policy = unwrap(self.model).policy
        models = [policy.get_base_model() if hasattr(policy, "get_base_model") else policy]
        if self.ref_model is not None:
            models.append(unwrap(self.ref_model))
        return models

    def _bfloat16(self, rollouts: bool, swap_weights: bool) -> None:
        """Output layers in float32; with ``rollouts``, generation and the reference, value and reward
        passes in bfloat16 (see rlhf.ppo.rollout)."""
        from rlhf.ppo.rollout import autocast_without_grad, bf16_generate, float32_output_layer

        unwrap = self.accelerator.unwrap_model
        device = self.accelerator.device.type
        wrapper = unwrap(self.model)
        policy = wrapper.policy
        scorers = [wrapper.value_model, unwrap(self.reward_model)]
        if self.guard is not None:  # the second reward model scores the same rollouts at the same precision
            scorers.append(self.guard.model)
        for model in self._causal_lms():
            float32_output_layer(model.get_output_embeddings())
            if rollouts:
                autocast_without_grad(model, device)
        for model in scorers:
            float32_output_layer(model.score)
            if rollouts:
                autocast_without_grad(getattr(model, model.base_model_prefix), device)
        if rollouts:
            bf16_generate(policy, device, swap_weights, self.run.generation_backend, self.say)

    def train(self):
        if self.resume_from is not None:
            load_training_state(self.accelerator, self.resume_from)  # weights, optimizer, scheduler, RNG
            self.say(f"resumed from {self.resume_from} at update {self.start_step}")
        total = self.args.num_total_batches
        self.args.num_total_batches = total - self.start_step  # TRL's loop runs the remaining updates
        if self.run.freeze_gc:
            # TRL's loop calls gc.collect() twice per update; each walks every object the imports and
            # models created (over half a million) unless they are frozen out of its reach first.
            gc.collect()
            gc.freeze()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            super().train()
        except _StopRun:
            pass
        finally:
            if self.run.freeze_gc:
                gc.unfreeze()
            signal.signal(signal.SIGTERM, previous)
            self.args.num_total_batches = total
            if self.writer:
                self.writer.close()
        return self.state.global_step

    def _on_sigterm(self, signum, frame):
        # Only a flag: the checkpoint is written at the end of the current update, in step on all processes.
        self.stop_requested = True
        self.say("SIGTERM: saving a checkpoint after this update, then stopping")

    def say(self, text: str) -> None:
        if self.accelerator.is_main_process:
            print(text, file=sys.stderr, flush=True)

    def save_checkpoint(self) -> Path:
        meta = {"config_fingerprint": self.run.fingerprint(), "episode": self.state.episode,
                "data_position": self.dataloader.position, "world_size": self.accelerator.num_processes,
                "lora": self.run.lora.enabled, "zero_stage": zero_stage()}
        path = save_training_state(self.accelerator, self.run.output_dir, self.state.global_step, meta,
                                   self.run.keep_checkpoints)
        self.say(f"checkpoint: {path}")
        return path

    @torch.no_grad()
    def sample_replies(self) -> list[dict]:
        """Greedy replies to the fixed evaluation prompts, scored by the reward model (all processes)."""
        from trl.experimental.ppo.ppo_trainer import batch_generation, truncate_response
        from trl.experimental.utils import get_reward
        from trl.models.utils import unwrap_model_for_generation

        if not self.eval_ids:
            return []
        tok = self.processing_class
        queries = DataCollatorWithPadding(tok)([{"input_ids": ids} for ids in self.eval_ids])["input_ids"]
        queries = queries.to(self.accelerator.device)
        kwargs = {"max_new_tokens": self.args.response_length, "do_sample": False}  # greedy: no RNG drawn
        self.probe.enabled = False
        try:
            with unwrap_model_for_generation(self.model, self.accelerator,
                                             gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                             generation_kwargs=kwargs) as unwrapped:
                query_responses, _ = batch_generation(unwrapped.policy, queries, queries.shape[0],
                                                      tok.pad_token_id, GenerationConfig(**kwargs))
            ctx = queries.shape[1]
            responses = truncate_response(tok.eos_token_id, tok.pad_token_id, query_responses[:, ctx:])
            _, scores, _ = get_reward(self.reward_model, torch.cat((queries, responses), 1), tok.pad_token_id, ctx)
        finally:
            self.probe.enabled = True
        return [{"prompt": tok.decode(q, skip_special_tokens=True),
                 "reply": tok.decode(r, skip_special_tokens=True), "score": float(s)}
                for q, r, s in zip(queries, responses, scores.float().cpu())]


class _RunCallback(TrainerCallback):
    """Step count on resume, metrics, sample replies, checkpoints and stopping, around TRL's loop."""

    def __init__(self, trainer: ResumablePPOTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        t = self.trainer
        state.global_step = t.start_step
        state.episode = t.start_step * args.batch_size
        state.max_steps = t.run.total_updates

    def on_log(self, args, state, control, logs=None, **kwargs):
        t = self.trainer
        length, ended = t.probe.take()
        stats = t.accelerator.reduce(torch.tensor([length, ended], device=t.accelerator.device), "mean")
        metrics = {RENAMED.get(k, k): v for k, v in (logs or {}).items()}
        metrics.update(response_length=float(stats[0]), eos_share=float(stats[1]))
        if t.guard is not None:
            self._guard(state.global_step, metrics, length, ended)
        if t.writer:
            t.writer.log_update(state.global_step, metrics)
            t.say(f"update {state.global_step}/{t.run.total_updates}  reward {metrics.get('reward', 0):+.3f}  "
                  f"kl {metrics.get('kl', 0):.4f}  entropy {metrics.get('entropy', 0):.2f}  "
                  f"value_loss {metrics.get('value_loss', 0):.4f}  length {length:.1f}  eos {ended:.2f}")

    def _guard(self, step: int, metrics: dict, length: float, ended: float) -> None:
        """The second reward model's reward of this update's rollouts, and the guard's decision; the
        policy weights of the best update so far are kept in memory (every process decides alike:
        every figure is averaged over all of them)."""
        from rlhf.guards import UpdateMetrics
        from rlhf.ppo.guard import trainable_policy_weights

        t = self.trainer
        held = t.guard.held_out_reward(t.accelerator)
        metrics["held_out_reward"] = held
        decision = t.guard.check(UpdateMetrics(step, float(metrics.get("reward", 0.0)), held,
                                               float(metrics.get("kl", 0.0)), float(length), float(ended)),
                                 final=step >= t.run.total_updates)
        if decision.keep_step == step:
            t.guard.best_weights = trainable_policy_weights(t.accelerator.unwrap_model(t.model).policy)
            t.guard.best_step = step
        if decision.action != "continue":
            t.say(f"guard: {decision.message}")
        t.guard_stop = decision.action == "stop"
        if t.accelerator.is_main_process:
            t.guard.write()

    def on_step_end(self, args, state, control, **kwargs):
        t, run, step = self.trainer, self.trainer.run, state.global_step
        if t.guard_stop:
            self._keep_best(step)
            raise _StopRun()
        stop = t.stop_requested or (run.stop_after_updates is not None and step >= run.stop_after_updates)
        if t.accelerator.num_processes > 1:  # every process must agree, the save is collective
            flag = torch.tensor([float(stop)], device=t.accelerator.device)
            stop = bool(t.accelerator.reduce(flag, "sum").item() > 0)
        if step % run.save_every == 0 or step == run.total_updates or stop:
            t.save_checkpoint()
        if run.num_eval_prompts and (step % run.sample_every == 0 or step == 1 or step == run.total_updates):
            samples = t.sample_replies()
            if t.writer:
                t.writer.log_samples(step, samples)
                for s in samples[:2]:
                    t.say(f"  sample [{s['score']:+.2f}] {s['prompt'][-60:]!r} -> {s['reply'][:120]!r}")
        if stop and step < run.total_updates:
            t.say(f"stopped after update {step}; continue with --resume")
            raise _StopRun()


    def _keep_best(self, step: int) -> None:
        """The guard stopped the run: the best update's policy weights go back into the policy and are
        written as the run's last checkpoint, so ``rlhf export`` exports the update that was kept."""
        from rlhf.ppo.guard import restore_policy_weights

        t = self.trainer
        restore_policy_weights(t.accelerator.unwrap_model(t.model).policy, t.guard.best_weights)
        path = t.save_checkpoint()
        if t.accelerator.is_main_process:
            t.guard.write(kept_checkpoint=str(path))
        t.say(f"guard: stopped after update {step} of {t.run.total_updates}; kept update {t.guard.best_step} (the "
              f"second reward model's best): its policy weights are the last checkpoint {path}")


# ---------------------------------------------------------------------------------------------------
# Building a run


def add_value_adapter(value_model, settings, top_layers: int | None = None) -> None:
    """LoRA layers injected into the value model in place (it stays a plain ``*ForSequenceClassification``,
    which TRL reads through ``base_model_prefix`` and ``score``); only the adapter and the score head train.
    ``top_layers``: the adapter goes into the last ``top_layers`` transformer layers only (None: all)."""
    from peft import LoraConfig, inject_adapter_in_model

    layers = None
    count = getattr(value_model.config, "num_hidden_layers", None)
    if top_layers is not None and count:
        layers = list(range(max(0, count - top_layers), count))
    inject_adapter_in_model(LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=0.0,
                                       target_modules=list(settings.target_modules), layers_to_transform=layers),
                            value_model)
    for name, param in value_model.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith("score.")


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """The environment variables ``values`` set inside the block only."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def resolve_resume(run: PPORunConfig, resume: str | None) -> Path | None:
    """``None`` (fresh run), ``"latest"`` (newest complete checkpoint of output_dir) or a checkpoint path."""
    if resume is None:
        return None
    path = latest_checkpoint(run.output_dir) if resume == "latest" else Path(resume)
    read_state(path, fingerprint=run.fingerprint(), launch=(world_size(), zero_stage()))
    return path


def build_trainer(run: PPORunConfig, resume: str | None = None) -> ResumablePPOTrainer:
    from datasets import Dataset

    from rlhf.modeling import load_policy, load_score_model, load_tokenizer, resolve_model_path

    world = world_size()
    check_run_config(run, world, zero_stage())
    resume_from = resolve_resume(run, resume)
    out = Path(run.output_dir)
    if resume_from is None and any(out.glob("checkpoints/step-*")):
        raise UserError(f"{out}: already holds checkpoints; pass --resume to continue, or choose another output_dir")

    # The gate: a reward model that did not clear chance on held-out pairs stops here (exit 2).
    gate = require_gate(run.reward_model, run.allow_weak_reward_model,
                        say=lambda text: is_main_process() and print(text, file=sys.stderr, flush=True))
    tokenizer = load_tokenizer(run.policy, padding_side="left")
    stats = check_reward_model(run.reward_model, tokenizer)
    prompt_ids = load_prompt_ids(run.prompts_file, tokenizer, run.max_prompt_tokens)
    eval_source = load_prompt_ids(run.eval_prompts_file, tokenizer, run.max_prompt_tokens) \
        if run.eval_prompts_file else prompt_ids
    eval_ids = eval_source[:run.num_eval_prompts]
    local_batch = run.per_device_batch_size * run.gradient_accumulation_steps
    batch_indices(len(prompt_ids), local_batch * world, 0, run.seed)  # refuses too few prompts, clearly

    # Models are loaded before PPOConfig exists, so under ZeRO-3 they load whole and DeepSpeed
    # partitions them at prepare time (the reward head is rewritten below, which needs full weights).
    torch.manual_seed(run.seed)
    policy = load_policy(run.policy, dtype=run.dtype)
    reference = None if run.lora.enabled else load_policy(run.policy, dtype=run.dtype)
    reward_model = load_score_model(resolve_model_path(run.reward_model), dtype=run.dtype)
    value_model = load_score_model(resolve_model_path(run.reward_model), dtype=run.dtype, with_support=False)
    if run.value_lora and zero_stage() < 3:
        add_value_adapter(value_model, run.lora, run.value_lora_top_layers)
    if stats and run.center_rewards:
        centre_reward_model(reward_model, stats)
    guard = build_guard(run, tokenizer, zero_stage())
    probe = RolloutProbe(tokenizer.eos_token_id)
    backbone = getattr(reward_model, reward_model.base_model_prefix)
    backbone.register_forward_pre_hook(probe, with_kwargs=True)

    args = PPOConfig(
        output_dir=str(out), use_cpu=not torch.cuda.is_available(), bf16=run.bf16_autocast, seed=run.seed,
        learning_rate=run.learning_rate, per_device_train_batch_size=run.per_device_batch_size,
        gradient_accumulation_steps=run.gradient_accumulation_steps, num_mini_batches=run.num_mini_batches,
        num_ppo_epochs=run.num_ppo_epochs, total_episodes=run.total_updates * local_batch * world,
        local_rollout_forward_batch_size=run.per_device_batch_size, response_length=run.response_length,
        temperature=run.temperature, stop_token="eos", missing_eos_penalty=run.missing_eos_penalty,
        kl_coef=run.kl_coef, kl_estimator=run.kl_estimator, whiten_rewards=run.whiten_rewards,
        cliprange=run.cliprange, cliprange_value=run.cliprange_value, vf_coef=run.vf_coef, gamma=run.gamma,
        lam=run.lam, num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=1,
        gradient_checkpointing=False, disable_tqdm=True, per_device_eval_batch_size=1,
    )
    eval_dataset = Dataset.from_dict({"input_ids": eval_ids or prompt_ids[:1]})
    # TRL's PPOTrainer builds its Accelerator from the environment, not from `bf16`: ask for bfloat16
    # autocast there (the trained wrapper's forward runs under it; generation does not), for this
    # construction only, so later trainers in the same process (tests, a notebook) do not inherit it.
    with _environment({"ACCELERATE_MIXED_PRECISION": "bf16"} if run.bf16_autocast else {}):
        trainer = ResumablePPOTrainer(
            args=args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward_model,
            train_dataset=Dataset.from_dict({"input_ids": prompt_ids}), value_model=value_model,
            eval_dataset=eval_dataset, peft_config=lora_config(run.lora, "CAUSAL_LM") if run.lora.enabled else None,
        )
    trainer.setup_run(run, prompt_ids, eval_ids, probe, resume_from, guard)
    if trainer.accelerator.is_main_process:
        save_resolved(run, out)
        (out / "run_info.json").write_text(json.dumps({
            "trainer": "ppo", "policy_path": resolve_model_path(run.policy),
            "reward_model_path": resolve_model_path(run.reward_model),
            "reward_stats": stats, "reward_gate": gate, "num_prompts": len(prompt_ids), "world_size": trainer.accelerator.num_processes,
            "zero_stage": zero_stage(), "config_fingerprint": run.fingerprint()}, indent=2))
    return trainer


def run_ppo(run: PPORunConfig, resume: str | None = None) -> int:
    trainer = build_trainer(run, resume)
    step = trainer.train()
    trainer.say(f"done: {step}/{run.total_updates} updates; run directory {run.output_dir}")
    return step

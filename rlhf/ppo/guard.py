"""PPO's guard against reward hacking: each update's rollouts scored by a SECOND reward model.

The training reward model is what PPO climbs. A second one, trained on another split of the rankings,
judges the same rollouts (query + reply truncated after EOS, exactly the sequences the training reward
model scored, captured by ``GuardWatch.capture`` from its backbone's forward pre-hook) without ever
being optimised against. After every update ``rlhf.guards.check_exploitation`` reads the training
reward, the second model's reward, KL, reply length and EOS share: it warns, and stops the run when the
training reward keeps rising while the second model's does not, keeping the update where the second
model's reward was best (its policy weights are held in memory and written as the run's last
checkpoint). ``guard.json`` in the run folder records every update's figures and decision.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from rlhf.guards import GuardDecision, GuardSettings, UpdateMetrics, check_exploitation


class GuardWatch:
    """The second reward model's view of each update, and the guard's decisions (every process)."""

    def __init__(self, guard_model, pad_token_id: int, settings: GuardSettings, path: str, tokenizer=None):
        self.model, self.pad_token_id, self.settings = guard_model, pad_token_id, settings
        self.tokenizer = tokenizer  # the second model's own tokenizer, padding on the right (GRPO/RLOO give it to TRL)
        self.reward_names: tuple[str, str] = ()  # GRPO/RLOO: TRL's names of the training and second reward functions
        self.path = str(path)
        self.batches: list[tuple[torch.Tensor, int]] = []  # (query + reply ids with pad restored, context length)
        self.history: list[UpdateMetrics] = []
        self.decisions: list[GuardDecision] = []
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None

    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> None:
        """TRL's ``get_reward`` zeroes padded ids before the backbone: put the pad token back."""
        ids = input_ids.masked_fill(attention_mask == 0, self.pad_token_id)
        self.batches.append((ids.detach().clone(), context_length))

    @torch.no_grad()
    def held_out_reward(self, accelerator) -> float:
        """Mean score of this update's rollouts under the second reward model, over every process."""
        from trl.experimental.utils import get_reward

        total, count = 0.0, 0
        for ids, ctx in self.batches:
            _, scores, _ = get_reward(self.model, ids.to(accelerator.device), self.pad_token_id, ctx)
            total += float(scores.float().sum())
            count += scores.numel()
        self.batches = []
        sums = accelerator.reduce(torch.tensor([total, float(count)], device=accelerator.device), "sum")
        return float(sums[0] / sums[1].clamp_min(1.0))

    def check(self, update: UpdateMetrics, final: bool = False) -> GuardDecision:
        """``final``: ``update`` is the run's last (a warning on it stops the run)."""
        self.history.append(update)
        decision = check_exploitation(self.history, self.settings, final=final)
        self.decisions.append(decision)
        return decision

    def write(self, kept_checkpoint: str | None = None) -> None:
        """``guard.json``: settings, every update's figures and decision, and what was kept (main process)."""
        last = self.decisions[-1] if self.decisions else None
        Path(self.path).write_text(json.dumps({
            "settings": asdict(self.settings),
            "updates": [{**asdict(m), "action": d.action, "keep_step": d.keep_step, "message": d.message}
                        for m, d in zip(self.history, self.decisions)],
            "stopped": bool(last and last.action == "stop"),
            "stopped_at": last.step if last and last.action == "stop" else None,
            "kept_update": last.keep_step if last and last.action == "stop" else None,
            "kept_checkpoint": kept_checkpoint,
            "message": last.message if last else None,
        }, indent=2))


def trainable_policy_weights(policy) -> dict[str, torch.Tensor]:
    """A copy of the policy's trainable weights (the LoRA adapter, or every weight in full fine-tuning)."""
    return {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}


def restore_policy_weights(policy, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name in weights:
                p.copy_(weights[name])

"""What a researcher reads per update: reward, KL, entropy, value loss, reply length, share ending with EOS.

TRL's loop logs the first four; reply length and the EOS share are measured by a forward hook on the
reward model's backbone, which sees every scored rollout (query + reply truncated after EOS).
Only the main process writes ``metrics.jsonl`` and TensorBoard.
"""

from __future__ import annotations

from rlhf.runlog import MetricsWriter, read_metrics  # noqa: F401  (re-exported: rlhf.pipeline imports them from here)

# TRL metric name -> the name this project logs (the rest are kept under their TRL names)
RENAMED = {
    "objective/scores": "reward",
    "objective/kl": "kl",
    "objective/entropy": "entropy",
    "loss/value_avg": "value_loss",
    "loss/policy_avg": "policy_loss",
    "objective/rlhf_reward": "rlhf_reward",
}


def reply_stats(response_mask, response_ids, eos_token_id: int) -> tuple[float, float]:
    """Mean reply length in tokens and share of replies containing EOS.

    ``response_mask`` (batch, T) is 1 on real tokens of the reply part, ``response_ids`` (batch, T)
    its token ids.
    """
    lengths = response_mask.sum(dim=1).float()
    ended = ((response_ids == eos_token_id) & response_mask.bool()).any(dim=1).float()
    return lengths.mean().item(), ended.mean().item()


class RolloutProbe:
    """Forward pre-hook on the reward model's backbone: records reply length and EOS share.

    ``context_length`` is the width of the current query batch (set by the rollout batches), so
    columns from there on are the reply.
    """

    def __init__(self, eos_token_id: int):
        self.eos_token_id = eos_token_id
        self.context_length = 0
        self.enabled = True
        self.guard = None  # rlhf.ppo.guard.GuardWatch: keeps the scored sequences for the second reward model
        self.lengths: list[float] = []
        self.ended: list[float] = []

    def __call__(self, module, args, kwargs):
        if not self.enabled or "attention_mask" not in kwargs:
            return None
        ctx = self.context_length
        mask, ids = kwargs["attention_mask"][:, ctx:], kwargs["input_ids"][:, ctx:]
        length, ended = reply_stats(mask, ids, self.eos_token_id)
        self.lengths.append(length)
        self.ended.append(ended)
        if self.guard is not None:
            self.guard.capture(kwargs["input_ids"], kwargs["attention_mask"], ctx)
        return None

    def take(self) -> tuple[float, float]:
        """Averages since the last call, then reset."""
        n = max(len(self.lengths), 1)
        out = (sum(self.lengths) / n, sum(self.ended) / n)
        self.lengths, self.ended = [], []
        return out

"""The reward model as every online policy trainer uses it (PPO, GRPO, RLOO): checked, loaded, centred.

It comes from ``rlhf.modeling`` (never from a path handed to TRL, which would skip the pad-token and
vocabulary checks), and its score head is rewritten to output ``(score - mean) / std`` with the
``reward_stats.json`` the reward stage writes, so rewards sit on the scale of the reward model's own
training replies whatever trainer reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.errors import UserError


def check_reward_model(path: str, policy_tokenizer) -> dict | None:
    """The reward model directory must be a plain ``*ForSequenceClassification`` with one output that
    shares the policy's vocabulary; returns its ``reward_stats.json`` (or None)."""
    from rlhf.modeling import check_same_vocabulary, load_tokenizer, resolve_model_path

    directory = Path(resolve_model_path(path))
    if (directory / "adapter_config.json").is_file():
        raise UserError(f"{directory}: the reward model is a LoRA adapter; the policy trainers read its backbone and "
                        f"'score' head directly: merge the adapter into its base model first")
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(f"{directory}: not a sequence-classification reward model (architectures: "
                        f"{', '.join(architectures) or 'none'})")
    labels = config.get("num_labels", len(config.get("id2label") or {}) or 2)
    if labels != 1:
        raise UserError(f"{directory}: the reward model has {labels} outputs; it needs num_labels=1")
    check_same_vocabulary(policy_tokenizer, load_tokenizer(directory, padding_side="right"))
    stats_file = directory / "reward_stats.json"
    if not stats_file.is_file():
        return None
    try:
        stats = json.loads(stats_file.read_text(encoding="utf-8"))
        return {"mean": float(stats["mean"]), "std": float(stats["std"])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{stats_file}: expected {{\"mean\": number, \"std\": number}}") from None


def centred_head(weight, bias, mean: float, std: float):
    """Weights of a linear score head that outputs ``(score - mean) / std``.

    ``score = W h + b`` becomes ``(W / std) h + (b - mean) / std``: rewards centred on the reward
    model's training data, folded into the head so the trainer's reward call is unchanged.
    """
    import torch

    std = std if std > 1e-6 else 1.0
    new_bias = (bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)) - mean
    return weight / std, new_bias / std


def centre_reward_model(reward_model, stats: dict) -> None:
    """Replace ``reward_model.score`` in place by the centred head (``centred_head``)."""
    import torch

    head = reward_model.score
    weight, bias = centred_head(head.weight.data, None if head.bias is None else head.bias.data,
                                stats["mean"], stats["std"])
    new_head = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=weight.dtype)
    new_head.weight.data.copy_(weight)
    new_head.bias.data.copy_(bias)
    reward_model.score = new_head


def load_reward_model(path: str, dtype: str, stats: dict | None, center: bool):
    """The reward model from ``rlhf.modeling``, in eval mode, its head centred when ``center`` and stats exist."""
    from rlhf.modeling import load_score_model, resolve_model_path

    model = load_score_model(resolve_model_path(path), dtype=dtype)
    if stats and center:
        centre_reward_model(model, stats)
    model.eval()
    return model

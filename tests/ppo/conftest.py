"""Tiny policy and reward model for the PPO tests (2 layers, the bundled tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "ppo" / "tiny.yaml"


def build_reward_model(out: Path, base: Path, layers: int | None = None, mean_pooling: bool = False) -> Path:
    """What the reward stage hands over: a plain *ForSequenceClassification dir + reward_stats.json
    (``layers``: only the base's bottom layers, as the default probe keeps; ``mean_pooling`` as it reads)."""
    import torch

    from rlhf.modeling import keep_bottom_layers, load_score_model, load_tokenizer, use_mean_pooling

    with torch.random.fork_rng():  # the score head is drawn at random: the same head whichever test ran first
        torch.manual_seed(0)
        model = load_score_model(base)
    if layers is not None:
        keep_bottom_layers(model, layers)
    if mean_pooling:
        use_mean_pooling(model)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(base, padding_side="right").save_pretrained(out)
    (out / "reward_stats.json").write_text(json.dumps({"mean": 0.1, "std": 2.0}))
    return out


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return build_reward_model(tmp_path_factory.mktemp("reward") / "tiny-reward", tiny_model_dir)


def tiny_args(policy: Path, reward: Path, out: Path, *extra: str) -> list[str]:
    """``rlhf ppo`` arguments for a tiny run into ``out``."""
    return ["--config", str(TINY_CONFIG), "--policy", str(policy), "--reward-model", str(reward),
            "--output-dir", str(out), *extra]

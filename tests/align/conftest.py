"""Shared by the GRPO, RLOO and DPO tests: the tiny policy and reward model of the PPO tests, and a
small folder in the layout 'rlhf app export' writes (rlhf/schema.py), built here from rankings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ppo.conftest import tiny_reward_dir  # noqa: F401  (the same session fixture as the PPO tests)

REPO = Path(__file__).resolve().parents[2]
REPLIES = ["Sorry about that! I can help: please share your order number.", "No.",
           "I am sorry to hear this. Let me check it for you right away.", "Read the FAQ."]


def write_export(out: Path, test_fraction: float = 0.25) -> Path:
    """``OUT/kwise`` and ``OUT/pairwise`` (DatasetDicts split by prompt with rlhf.schema.prompt_split) +
    ``OUT/manifest.json``, from one K=4 ranking per prompt of configs/ppo/support_prompts.jsonl."""
    import datasets

    from rlhf.prompts import read_prompts
    from rlhf.schema import kwise_to_pairs, prompt_split

    splits = {"train": [], "test": []}
    for i, prompt in enumerate(read_prompts(REPO / "configs/ppo/support_prompts.jsonl")):
        ranks = [1, 4, 2, 3] if i % 3 else [1, 3, 2, 3]  # a tie now and then: it gives no pair
        splits[prompt_split(prompt, test_fraction)].append(
            {"prompt": prompt, "completions": REPLIES, "ranks": ranks, "reviewer": f"r{i % 2}", "ranking_id": i})
    kwise = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    kwise.save_to_disk(str(out / "kwise"))
    pairwise = datasets.DatasetDict({k: datasets.Dataset.from_list(
        [{**p, "reviewer": r["reviewer"], "ranking_id": r["ranking_id"]} for r in v for p in kwise_to_pairs(r)])
        for k, v in splits.items()})
    pairwise.save_to_disk(str(out / "pairwise"))
    (out / "manifest.json").write_text(json.dumps({"exported_at": "test", "test_fraction": test_fraction,
                                                   "rankings": {k: len(v) for k, v in splits.items()}}))
    return out


@pytest.fixture(scope="session")
def tiny_export_dir(tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("export") / "export")


def align_args(algorithm: str, policy: Path, out: Path, reward: Path | None = None, data: Path | None = None,
               *extra: str) -> list[str]:
    """``rlhf grpo|rloo|dpo`` arguments for a tiny run into ``out``."""
    args = [algorithm, "--config", str(REPO / "configs" / algorithm / "tiny.yaml"), "--policy", str(policy),
            "--output-dir", str(out)]
    args += ["--reward-model", str(reward)] if reward is not None else []
    args += ["--data", str(data)] if data is not None else []
    return [*args, *extra]

"""Synthetic rankings in the export layout, with a planted preference a tiny model can learn."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlhf.schema import EXPORT_KWISE, EXPORT_MANIFEST, EXPORT_PAIRWISE, Ranking, prompt_split

# Quality words in order: a reply with an earlier word is better. The rest of a reply is filler, so
# the only signal is the word (planted preference).
QUALITY = ["excellent", "good", "poor", "awful"]
FILLER = "the order ships soon and your account is fine we will check it again today".split()
TOPICS = "refund shipping password invoice warranty delivery login coupon address upgrade".split()


def planted_rankings(n_prompts: int, k: int = 4, seed: int = 0, reviewers: tuple[str, ...] = ("ann",),
                     chat: bool = False, noise_reviewer: str | None = None) -> list[Ranking]:
    """``n_prompts`` prompts x reviewers rankings of K replies ranked by their quality word.

    ``noise_reviewer`` ranks odd-numbered prompts in reverse order (disagreeing with the others there).
    """
    rng = random.Random(seed)
    out = []
    rid = 0
    for p in range(n_prompts):
        text = f"Question {p} about my {rng.choice(TOPICS)}: what should I do?"
        prompt = [{"role": "user", "content": text}] if chat else text
        words = rng.sample(QUALITY, k)
        replies = [" ".join(rng.sample(FILLER, 5) + [w] + rng.sample(FILLER, 3)) for w in words]
        for reviewer in reviewers:
            order = [QUALITY.index(w) + 1 for w in words]
            if reviewer == noise_reviewer and p % 2 == 1:
                order = [k + 1 - r for r in order] if k == len(QUALITY) else order
            ranks = [sorted(set(order)).index(r) + 1 for r in order]
            rid += 1
            out.append(Ranking(prompt=prompt, completions=replies, ranks=ranks, reviewer=reviewer, ranking_id=rid))
    return out


def write_export(out: Path, rankings: list[Ranking], test_fraction: float = 0.25) -> Path:
    """The layout ``rlhf app export`` writes (rlhf/schema.py), from Ranking objects."""
    from datasets import Dataset, DatasetDict

    kwise = {"train": [], "test": []}
    pairs = {"train": [], "test": []}
    for r in rankings:
        side = prompt_split(r.prompt, test_fraction)
        row = r.kwise()
        if row is not None:
            kwise[side].append(row.to_row())
        pairs[side] += [p.to_row() for p in r.pairs()]
    out.mkdir(parents=True, exist_ok=True)
    DatasetDict({k: Dataset.from_list(v) for k, v in kwise.items()}).save_to_disk(str(out / EXPORT_KWISE))
    DatasetDict({k: Dataset.from_list(v) for k, v in pairs.items()}).save_to_disk(str(out / EXPORT_PAIRWISE))
    manifest = {"rankings": [r.ranking_id for r in rankings], "counts": {k: len(v) for k, v in kwise.items()},
                "filters": {}, "test_fraction": test_fraction, "exported_at": "2026-01-01T00:00:00Z"}
    (out / EXPORT_MANIFEST).write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def planted_export(tmp_path_factory) -> Path:
    """48 prompts x 1 reviewer, K = 4, in the export layout (about a quarter of prompts held out)."""
    return write_export(tmp_path_factory.mktemp("export") / "export", planted_rankings(48, seed=1))

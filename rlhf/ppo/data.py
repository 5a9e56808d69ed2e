"""Prompts -> token ids for PPO: chat template applied, prompts over the length limit counted and dropped.

The rollout order is decided here too, not by a shuffling DataLoader, so a resumed run continues
with exactly the batches an uninterrupted run would have seen (``batch_indices``).
"""

from __future__ import annotations

import logging

import numpy as np

from rlhf.errors import UserError
from rlhf.generation import render_prompt
from rlhf.prompts import read_prompts
from rlhf.schema import Prompt

log = logging.getLogger(__name__)


def tokenize_prompts(tokenizer, prompts: list[Prompt], max_tokens: int) -> tuple[list[list[int]], int]:
    """Token ids of each prompt that fits in ``max_tokens``, and how many were dropped as too long."""
    kept, dropped = [], 0
    for prompt in prompts:
        ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            dropped += 1
        else:
            kept.append(ids)
    return kept, dropped


def load_prompt_ids(path: str, tokenizer, max_tokens: int) -> list[list[int]]:
    """Read and tokenize a prompt file; warn about dropped prompts; refuse a file with none usable."""
    prompts = read_prompts(path)
    kept, dropped = tokenize_prompts(tokenizer, prompts, max_tokens)
    if dropped:
        log.warning("%s: %d of %d prompts are longer than max_prompt_tokens=%d tokens and were dropped",
                    path, dropped, len(prompts), max_tokens)
    if not kept:
        raise UserError(f"{path}: no usable prompt (all {len(prompts)} are longer than "
                        f"max_prompt_tokens={max_tokens}); raise max_prompt_tokens or shorten them")
    return kept


def batch_indices(num_prompts: int, global_batch: int, update: int, seed: int) -> np.ndarray:
    """Dataset indices of the rollout batch of update ``update`` (0-based), for all processes together.

    Each epoch is a fresh permutation drawn from ``seed + epoch``; the last incomplete batch of an
    epoch is dropped, as TRL does. Process ``r`` of ``w`` takes the ``r``-th of ``w`` equal slices.
    """
    per_epoch = num_prompts // global_batch
    if per_epoch == 0:
        raise UserError(f"only {num_prompts} usable prompts, fewer than one rollout batch of {global_batch} "
                        f"(per_device_batch_size x gradient_accumulation_steps x processes)")
    epoch, position = divmod(update, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(num_prompts)
    return order[position * global_batch:(position + 1) * global_batch]

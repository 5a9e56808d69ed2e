"""Honest evaluation of a reward model on held-out rankings: ``rlhf reward eval CHECKPOINT DATASET``.

Held out means held-out prompts: the export splits by prompt hash, so no test prompt was trained on.
Every reply is scored once; every pair with distinct ranks is judged. Reported:
  * pairwise accuracy with two 95% intervals: Wilson (pairs as independent draws) and a bootstrap
    over prompts (pairs of one prompt are correlated; this is the honest one);
  * accuracy per reviewer, and on pairs where at least two reviewers were asked and all agreed;
  * calibration: predicted P(i beats j) = sigmoid(r_i - r_j) against the observed win rate, in
    10 bins, with the expected calibration error (ECE) and a plot;
  * the reward margin r_better - r_worse: quantiles and a histogram.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from rlhf.config import save_resolved
from rlhf.errors import UserError
from rlhf.schema import pair_indices, prompt_key

from reward.config import RewardEvalConfig
from reward.data import _reply_key, pair_agreement, reply_ids, warn


# ---------------------------------------------------------------------------------------------------
# Scoring


def score_ids(model, ids: list[list[int]], pad_token_id: int, batch_size: int = 16) -> list[float]:
    """One reward per token sequence; sequences batched by length (right padding, no grad).

    Works for a plain model and for a ZeRO-3 partitioned one (every rank must then call it).
    """
    return [float(v) for v in _per_sequence(model, ids, pad_token_id, batch_size, "scoring replies",
                                            lambda out, last: out.logits.squeeze(-1))]


def _per_sequence(model, ids, pad_token_id, batch_size, desc, take, **forward):
    """``take(output, last_token_index)`` of every sequence, batched by length; [N, ...] float32 on CPU."""
    import torch
    from tqdm.auto import tqdm
    from trl.trainer.utils import pad

    from rlhf.runtime import is_main_process

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [None] * len(ids)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not is_main_process() or len(starts) < 8):
            chunk = order[start:start + batch_size]
            seqs = [torch.tensor(ids[i]) for i in chunk]
            input_ids = pad(seqs, padding_value=pad_token_id, padding_side="right").to(device)
            mask = pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right").to(device)
            result = model(input_ids=input_ids, attention_mask=mask, use_cache=False, **forward)
            values = take(result, mask.sum(1) - 1).float().cpu()
            for i, value in zip(chunk, values):
                out[i] = value
    model.train(was_training)
    return torch.stack(out) if out else torch.zeros(0)


def score_rows(model, tokenizer, rows: list[dict[str, Any]], max_length: int, batch_size: int = 16,
               what: str = "test") -> list[list[float | None]]:
    """Scores [row][reply] of K-wise rows; replies longer than ``max_length`` get None (counted)."""
    ids, slots = reply_slots(tokenizer, rows, max_length, what)
    scores = score_ids(model, ids, tokenizer.pad_token_id, batch_size)
    return by_slot(scores, slots)


def by_slot(values: list, slots: list[list[int | None]]) -> list[list[Any]]:
    """Per row and reply, the value of its sequence (``reply_slots``), None where it has none."""
    return [[values[s] if s is not None else None for s in row] for row in slots]


def reply_slots(tokenizer, rows: list[dict[str, Any]], max_length: int,
                what: str = "test") -> tuple[list[list[int]], list[list[int | None]]]:
    """The distinct prompt + reply token sequences of K-wise rows, and per row and reply the index of its
    sequence (None: longer than ``max_length`` tokens, warned about once with the count)."""
    unique: dict[tuple[str, str], int] = {}
    ids: list[list[int]] = []
    slots: list[list[int | None]] = []
    too_long = 0
    for row in rows:
        slot_row = []
        for completion in row["completions"]:
            key = (prompt_key(row["prompt"]), _reply_key(completion))
            if key not in unique:
                x = reply_ids(tokenizer, row["prompt"], completion)
                unique[key] = len(ids) if len(x) <= max_length else -1
                if len(x) <= max_length:
                    ids.append(x)
                else:
                    too_long += 1
            slot_row.append(unique[key] if unique[key] >= 0 else None)
        slots.append(slot_row)
    if too_long:
        warn(f"left out {too_long} of {len(unique)} {what} replies: longer than {max_length} tokens")
    return ids, slots


# ---------------------------------------------------------------------------------------------------
# Metrics (pure: rows and scores in, numbers out)


def wilson_interval(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion ``correct / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _judged_pairs(rows, scores):
    """(prompt key, reviewer, better reply key, worse reply key, r_better, r_worse) per ranked pair."""
    out = []
    for row, row_scores in zip(rows, scores):
        pk = prompt_key(row["prompt"])
        keys = [_reply_key(c) for c in row["completions"]]
        for b, w in pair_indices(list(row["ranks"])):
            if row_scores[b] is None or row_scores[w] is None:
                continue
            out.append((pk, row.get("reviewer") or "", keys[b], keys[w], row_scores[b], row_scores[w]))
    return out


def _credit(rb: float, rw: float) -> float:
    return 1.0 if rb > rw else 0.5 if rb == rw else 0.0  # an exact tie is a coin flip


def ranking_metrics(rows: list[dict[str, Any]], scores: list[list[float | None]], bins: int = 10,
                    bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy (two intervals), per reviewer, agreed pairs, calibration and margins."""
    import numpy as np

    pairs = _judged_pairs(rows, scores)
    if not pairs:
        raise UserError("no held-out pair to evaluate (is the test split empty?)")
    credit = np.array([_credit(p[4], p[5]) for p in pairs])
    margins = np.array([p[4] - p[5] for p in pairs])
    n = len(pairs)

    # Bootstrap over prompts: resample whole prompts, since one prompt's pairs are not independent.
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        by_prompt[p[0]].append(i)
    groups = list(by_prompt.values())
    sums = np.array([credit[g].sum() for g in groups])
    counts = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(groups), size=(bootstrap, len(groups)))
    boot = sums[draws].sum(1) / counts[draws].sum(1)

    per_reviewer: dict[str, list[float]] = defaultdict(list)
    for p, c in zip(pairs, credit):
        per_reviewer[p[1] or "(unnamed)"].append(c)

    agreement = pair_agreement(rows)
    agreed = {}
    for p, c in zip(pairs, credit):
        pro, asked = agreement[(p[0], p[2], p[3])]
        if asked >= 2 and pro == asked:
            agreed[(p[0], p[2], p[3])] = c  # one vote per distinct pair, however many reviewers

    # Calibration in index order (i < j), so predictions cover both sides of 0.5.
    probs, wins = [], []
    for row, row_scores in zip(rows, scores):
        ranks = row["ranks"]
        for i in range(len(ranks)):
            for j in range(i + 1, len(ranks)):
                if ranks[i] == ranks[j] or row_scores[i] is None or row_scores[j] is None:
                    continue
                probs.append(1.0 / (1.0 + math.exp(-(row_scores[i] - row_scores[j]))))
                wins.append(1.0 if ranks[i] < ranks[j] else 0.0)
    probs, wins = np.array(probs), np.array(wins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            mean_p, rate = float(probs[sel].mean()), float(wins[sel].mean())
            ece += sel.sum() / len(probs) * abs(mean_p - rate)
            table.append({"bin": [float(edges[b]), float(edges[b + 1])], "pairs": int(sel.sum()),
                          "predicted": mean_p, "observed": rate})

    accuracy = float(credit.mean())
    return {
        "pairs": n,
        "prompts": len(groups),
        "rankings": len(rows),
        "accuracy": accuracy,
        "ci95_bootstrap_prompts": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "ci95_wilson": list(wilson_interval(float(credit.sum()), n)),
        "per_reviewer": {r: {"pairs": len(v), "accuracy": float(np.mean(v))} for r, v in sorted(per_reviewer.items())},
        "agreed_pairs": {"pairs": len(agreed),
                         "accuracy": float(np.mean(list(agreed.values()))) if agreed else None},
        "calibration": {"ece": float(ece), "bins": table},
        "margin": {"mean": float(margins.mean()), "std": float(margins.std()),
                   "quantiles": {str(q): float(np.quantile(margins, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                   "negative_share": float((margins < 0).mean())},
        "_margins": margins.tolist(),
    }


# ---------------------------------------------------------------------------------------------------
# Report


def write_plots(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    table = metrics["calibration"]["bins"]
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot([b["predicted"] for b in table], [b["observed"] for b in table], "o-", label="reward model")
    for b in table:
        ax.annotate(str(b["pairs"]), (b["predicted"], b["observed"]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    ax.set(xlabel="predicted P(i beats j) = sigmoid(r_i - r_j)", ylabel="observed win rate",
           title=f"calibration (ECE {metrics['calibration']['ece']:.3f})", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    calibration = out_dir / "calibration.png"
    fig.savefig(calibration, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.hist(metrics["_margins"], bins=30, color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", lw=1)
    ax.set(xlabel="reward margin r_better - r_worse", ylabel="pairs",
           title=f"margins ({metrics['margin']['negative_share']:.0%} below 0)")
    fig.tight_layout()
    margins = out_dir / "margins.png"
    fig.savefig(margins, dpi=100)
    plt.close(fig)
    return [calibration, margins]


def render_table(metrics: dict[str, Any]) -> str:
    lo, hi = metrics["ci95_bootstrap_prompts"]
    wlo, whi = metrics["ci95_wilson"]
    agreed = metrics["agreed_pairs"]
    q = metrics["margin"]["quantiles"]
    lines = [
        f"{'held-out pairs':<28}{metrics['pairs']}  ({metrics['prompts']} prompts, {metrics['rankings']} rankings)",
        f"{'pairwise accuracy':<28}{metrics['accuracy']:.3f}",
        f"{'  95% CI, prompt bootstrap':<28}[{lo:.3f}, {hi:.3f}]",
        f"{'  95% CI, Wilson':<28}[{wlo:.3f}, {whi:.3f}]",
        f"{'agreed pairs accuracy':<28}"
        + (f"{agreed['accuracy']:.3f}  ({agreed['pairs']} pairs)" if agreed["pairs"] else "n/a (no pair ranked by 2+ reviewers)"),
        f"{'calibration ECE':<28}{metrics['calibration']['ece']:.3f}",
        f"{'margin median [5%, 95%]':<28}{q['0.5']:.3f} [{q['0.05']:.3f}, {q['0.95']:.3f}]",
    ]
    for reviewer, r in metrics["per_reviewer"].items():
        lines.append(f"{'  reviewer ' + reviewer:<28}{r['accuracy']:.3f}  ({r['pairs']} pairs)")
    return "\n".join(lines)


def trained_max_length(checkpoint: Path, fallback: int = 1024) -> int:
    """The ``max_length`` a reward model was trained with (its resolved ``config.yaml``), else ``fallback``."""
    import yaml

    trained = checkpoint / "config.yaml"
    if not trained.is_file():
        return fallback
    return (yaml.safe_load(trained.read_text()) or {}).get("max_length", fallback)


def evaluate_checkpoint(checkpoint: str | Path, rows: list[dict[str, Any]], out_dir: Path, max_length: int,
                        batch_size: int = 16, model=None, tokenizer=None, scores=None) -> dict[str, Any]:
    """Score ``rows`` with the checkpoint (unless their ``scores`` [row][reply] are given), write
    ``eval.json`` and plots into ``out_dir``; return metrics."""
    from rlhf.modeling import load_score_model, load_tokenizer

    if scores is None:
        tokenizer = tokenizer or load_tokenizer(checkpoint, padding_side="right")
        model = model or load_score_model(checkpoint)
        scores = score_rows(model, tokenizer, rows, max_length, batch_size)
    metrics = ranking_metrics(rows, scores)
    plots = write_plots(metrics, out_dir)
    margins = metrics.pop("_margins")
    metrics["plots"] = [p.name for p in plots]
    metrics["checkpoint"] = str(checkpoint)
    (out_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "margins.json").write_text(json.dumps(margins))
    return metrics


def run_eval(config: RewardEvalConfig) -> int:
    """``rlhf reward eval CHECKPOINT DATASET``: score a split, print the table, write eval.json and plots."""
    from reward.data import load_preference_data

    checkpoint = Path(config.checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise UserError(f"{checkpoint}: not a reward model checkpoint (no config.json)")
    data = load_preference_data(config.dataset, test_fraction=config.test_fraction)
    if config.split == "all":
        rows = data.kwise["train"].to_list() + data.kwise["test"].to_list()
    else:
        rows = data.kwise[config.split].to_list()
    if not rows:
        raise UserError(f"{config.dataset}: the {config.split} split is empty; nothing to evaluate")
    out_dir = Path(config.output) if config.output else checkpoint / "eval"
    max_length = config.max_length or trained_max_length(checkpoint)
    metrics = evaluate_checkpoint(checkpoint, rows, out_dir, max_length, config.batch_size)
    save_resolved(config, out_dir, "eval_config.yaml")
    print(render_table(metrics))
    print(f"\nwrote {out_dir / 'eval.json'}, {', '.join(metrics['plots'])}")
    return 0

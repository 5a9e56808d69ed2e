"""Which reward model generalises from about a hundred rankings? (issue 14, part R)

One candidate generation (the bundled model's replies to every shipped prompt, K = 4), then, per
rule of a suite of preferences nobody tuned for, scripted reviewers rank ~100 training prompts and
each method is scored on held-out prompts against the reviewers' (noisy) labels:

  lora_default  the earlier default: ``rlhf reward train --config configs/reward/default.yaml --method finetune``
                on all 100 labelled rankings
  probe_last    K-wise Bradley-Terry linear probe (reward/probe.py) on the frozen last-token hidden
                state of the last layer (what a ``*ForSequenceClassification`` score head reads: the
                probe IS a head); L2 chosen on validation, then refit on train + validation
  probe_mean    the same on the mean over prompt + reply tokens (a score head after
                ``reward.probe.use_mean_pooling``); probe_rmean: reply tokens only; *_mid, *_20:
                layer 15 or 20 of 30; probe_mean_concat: layers 15, 20 and 30 side by side
  ensemble      mean of the standardised scores of several probes (ensemble_mean: mean-pooled ones)
  lpft          probe_mean as the head, then LoRA fine-tuning with early stopping on validation
                (LP-FT, Kumar et al. 2022)

Ceiling: how often the reviewers' labels agree with the noiseless rule on held-out pairs. Reported:
accuracy with a 95% bootstrap interval over prompts, the ceiling, the share of the distance from
chance to the ceiling closed, and wall time. Resumable: candidates, features and each (rule, method)
result are cached under --out.

    nice -n 10 .venv/bin/python bench/reward_generalisation.py            # the whole suite
    .venv/bin/python bench/reward_generalisation.py --rules vader,hash --methods probe_mean --splits 5

Wall times count the frozen forward passes over the labelled replies for the probes (measured once
for all replies), the whole CLI run (load, train, save, its own evaluation) for lora_default.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT_FILES = ["configs/quickstart/train_prompts.jsonl", "configs/quickstart/heldout_prompts.jsonl",
                "configs/quickstart/concise_train_prompts.jsonl", "configs/quickstart/small_train_prompts.jsonl",
                "configs/quickstart/small_heldout_prompts.jsonl", "configs/prompts/support_questions.jsonl",
                "configs/prompts/support_demo.jsonl"]
K = 4
MAX_NEW_TOKENS = 48
TEMPERATURE = 0.8


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(path: Path, value) -> None:
    """Atomic: an interrupted run never leaves half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# Stage 1: candidates (once for every rule)


def load_prompts() -> list[str]:
    from rlhf.prompts import read_prompts

    seen, out = set(), []
    for name in PROMPT_FILES:
        for p in read_prompts(REPO / name):
            if isinstance(p, str) and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def candidates(out: Path, chunk: int = 8) -> list[dict]:
    """[{prompt, completions[K]}] of the bundled model, generated once and cached ``chunk`` prompts at
    a time (an interrupted run resumes). Sampling runs as PPO's rollouts do on CPU: bfloat16 copies
    of the linear weights under autocast (``rlhf.ppo.rollout.bf16_generate``), about twice as fast."""
    path = out / "candidates.json"
    if path.exists():
        return json.loads(path.read_text())
    from rlhf.generation import SamplingSettings, generate_replies
    from rlhf.modeling import load_policy, load_tokenizer
    from rlhf.ppo.rollout import bf16_generate

    prompts = load_prompts()
    log(f"generating {K} replies to each of {len(prompts)} prompts ({MAX_NEW_TOKENS} new tokens)")
    started = time.perf_counter()
    model, tokenizer = load_policy("bundled"), load_tokenizer("bundled", padding_side="left")
    bf16_generate(model, "cpu", swap_weights=True)
    rows = []
    for start in range(0, len(prompts), chunk):
        part = out / "candidates" / f"{start:04d}.json"
        if not part.exists():
            some = prompts[start:start + chunk]
            sampling = SamplingSettings(MAX_NEW_TOKENS, TEMPERATURE, 0.95, seed=start)
            replies = generate_replies(model, tokenizer, some, K, sampling, batch_size=K * chunk, progress=False)
            write_json(part, [{"prompt": p, "completions": r} for p, r in zip(some, replies)])
            log(f"candidates: {start + len(some)} of {len(prompts)} prompts")
        rows += json.loads(part.read_text())
    write_json(path, rows)
    log(f"candidates: {time.perf_counter() - started:.0f} s")
    return rows


# ---------------------------------------------------------------------------------------------------
# The suite of preferences (written for this benchmark; none was used to tune any method)


# The scorers are the efficacy suite's (one definition of each rule, bench/efficacy_suite.py).
from bench.efficacy_suite import no_apology, question, reading_ease, unlearnable, vader, you_share  # noqa: E402


# name: (factory of the score function, reviewers, what it is). Reviewers, three per rule, one per
# prompt in turn: "noise" adds Gaussian noise of 0.5 x the rule's spread (std over all candidates) to
# every score; "disagree" has the third reviewer rank in reverse (no noise).
RULES = {
    "vader": (lambda: vader, "noise", "vaderSentiment compound sentiment (published), continuous"),
    "reading_ease": (lambda: reading_ease, "noise", "textstat Flesch reading ease (published), continuous, not lexical"),
    "you_share": (lambda: you_share, "disagree", "share of words that are 'you/your', continuous, lexical"),
    "question": (lambda: question, "disagree", "asks a question ('?'), yes/no, lexical"),
    "no_apology": (lambda: no_apology, "noise", "no 'sorry'/'apologise', yes/no, lexical"),
    "hash": (lambda: unlearnable, "noise", "sha256 of the reply: random per reply, cannot be learned"),
}
NOISE = 0.5
REVIEWERS = ("r1", "r2", "r3")


def label(rule_name: str, rows: list[dict]) -> list[dict]:
    """Per prompt: the noiseless scores, and the ranking of the prompt's reviewer (noisy)."""
    import statistics

    from rlhf.rules import ranks_from_scores, score_replies

    factory, reviewers, _ = RULES[rule_name]
    rule = factory()
    clean = [[float(rule(c)) for c in row["completions"]] for row in rows]
    spread = statistics.pstdev([s for row in clean for s in row]) or 1.0
    rng = random.Random(f"labels-{rule_name}")
    out = []
    for i, (row, scores) in enumerate(zip(rows, clean)):
        reviewer = REVIEWERS[i % len(REVIEWERS)]
        if reviewers == "noise":
            noisy = [s + rng.gauss(0.0, NOISE * spread) for s in scores]
        else:
            noisy = [-s for s in scores] if reviewer == REVIEWERS[-1] else scores
        out.append({"prompt": row["prompt"], "completions": row["completions"], "ranks": ranks_from_scores(noisy),
                    "clean": scores, "reviewer": reviewer})
    return out


def split(n: int, n_val: int, n_train: int, seed: int = 0) -> dict[str, list[int]]:
    """Prompt indices: test first (everything not labelled for training), then validation, train."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = n - n_val - n_train
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


# ---------------------------------------------------------------------------------------------------
# Stage 2: frozen features of every reply (once for every rule)


def features(out: Path, rows: list[dict], layers: list[int], poolings=("last", "mean"),
             name: str = "features.pt", normed: bool = False) -> tuple[dict, float]:
    """{"last@L"/"mean@L"/"rmean@L": [P, K, H]} and seconds per reply; cached in ``out / name``.
    ``normed``: lower layers through the final norm (``reward.probe.reply_features``)."""
    import torch

    path = out / name
    if path.exists():
        cached = torch.load(path)
        return cached["features"], cached["seconds_per_reply"]
    from reward.data import reply_ids
    from reward.probe import reply_features
    from rlhf.modeling import load_score_model, load_tokenizer, reply_marker

    started = time.perf_counter()
    model, tokenizer = load_score_model("bundled"), load_tokenizer("bundled", padding_side="right")
    ids = [reply_ids(tokenizer, row["prompt"], c) for row in rows for c in row["completions"]]
    log(f"features of {len(ids)} replies, layers {layers}, {poolings}")
    flat = reply_features(model, ids, tokenizer.pad_token_id, layers, poolings, batch_size=16,
                          marker=reply_marker(tokenizer), normed=normed)
    per_reply = (time.perf_counter() - started) / len(ids)
    feats = {k: v.view(len(rows), K, -1) for k, v in flat.items()}
    torch.save({"features": feats, "seconds_per_reply": per_reply}, path)
    log(f"features: {per_reply:.3f} s per reply")
    return feats, per_reply


# ---------------------------------------------------------------------------------------------------
# Methods: each returns {"scores": [test prompt][K], "seconds": wall time, ...}


def _ranks(labelled: list[dict], idx: list[int]):
    import torch

    return torch.tensor([labelled[i]["ranks"] for i in idx])


def fit_probe_on(feats, key: str, labelled, parts, refit: bool = True):
    from reward.probe import select_l2

    tr, va = parts["train"], parts["val"]
    return select_l2(key, feats[key][tr], _ranks(labelled, tr), feats[key][va], _ranks(labelled, va), refit=refit)


def method_probe(key: str):
    def run(ctx) -> dict:
        started = time.perf_counter()
        probe = fit_probe_on(ctx["features"], key, ctx["labelled"], ctx["parts"])
        fit = time.perf_counter() - started
        scores = probe.scores(ctx["features"][key][ctx["parts"]["test"]])
        labelled_replies = K * (len(ctx["parts"]["train"]) + len(ctx["parts"]["val"]))
        return {"scores": scores.tolist(), "seconds": fit + ctx["seconds_per_reply"] * labelled_replies,
                "fit_seconds": fit, "l2": probe.l2, "selection": probe.selection}
    return run


ENSEMBLE = ("last@30", "mean@30", "last@20", "mean@20", "last@15", "mean@15")


def method_ensemble(ctx, keys=ENSEMBLE) -> dict:
    """Mean of the probes' scores, each standardised by its spread on the labelled replies."""
    import torch

    started = time.perf_counter()
    labelled_idx = ctx["parts"]["train"] + ctx["parts"]["val"]
    total = 0
    for key in keys:
        probe = fit_probe_on(ctx["features"], key, ctx["labelled"], ctx["parts"])
        spread = probe.scores(ctx["features"][key][labelled_idx]).std()
        total = total + probe.scores(ctx["features"][key][ctx["parts"]["test"]]) / spread
    fit = time.perf_counter() - started
    return {"scores": torch.as_tensor(total).tolist(),
            "seconds": fit + ctx["seconds_per_reply"] * K * len(labelled_idx), "fit_seconds": fit}


def _export(path: Path, labelled: list[dict], train_idx: list[int], test_idx: list[int]) -> Path:
    """The 'rlhf app export' layout (rlhf/schema.py), K-wise view, with our train/test split."""
    from datasets import Dataset, DatasetDict

    from rlhf.schema import EXPORT_KWISE, EXPORT_MANIFEST

    def rows(idx):
        return [{"prompt": labelled[i]["prompt"], "completions": labelled[i]["completions"],
                 "ranks": labelled[i]["ranks"], "reviewer": labelled[i]["reviewer"], "ranking_id": i} for i in idx]

    path.mkdir(parents=True, exist_ok=True)
    DatasetDict({"train": Dataset.from_list(rows(train_idx)), "test": Dataset.from_list(rows(test_idx))}
                ).save_to_disk(str(path / EXPORT_KWISE))
    (path / EXPORT_MANIFEST).write_text(json.dumps({"counts": {"train": len(train_idx), "test": len(test_idx)},
                                                   "filters": {}, "source": "bench/reward_generalisation.py"}))
    return path


def _score_test(model_dir: Path, labelled, test_idx) -> list[list[float]]:
    from reward.evaluate import score_rows
    from rlhf.modeling import load_score_model, load_tokenizer

    model, tokenizer = load_score_model(model_dir), load_tokenizer(model_dir, padding_side="right")
    return score_rows(model, tokenizer, [labelled[i] for i in test_idx], max_length=512)


def method_lora_default(ctx) -> dict:
    """Today's default, through the real CLI, on all labelled rankings (it holds out nothing more)."""
    import shutil

    work = ctx["work"] / "lora_default"
    shutil.rmtree(work, ignore_errors=True)
    data = _export(work / "export", ctx["labelled"], ctx["parts"]["train"] + ctx["parts"]["val"], ctx["parts"]["test"])
    command = [str(REPO / ".venv" / "bin" / "rlhf"), "reward", "train", "--config", "configs/reward/default.yaml",
               "--method", "finetune",  # the LoRA fine-tune measured here was the default before the probe
               "--data", str(data), "--output-dir", str(work / "model"), "--report-to", "[none]"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(ctx["threads"])})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((work / "model" / "metrics.json").read_text())
    scores = _score_test(work / "model", ctx["labelled"], ctx["parts"]["test"])
    shutil.rmtree(work / "model", ignore_errors=True)  # 540 MB per rule
    train_acc = [e["accuracy"] for e in metrics["log_history"] if "accuracy" in e]
    return {"scores": scores, "seconds": seconds, "command": " ".join(command),
            "train_accuracy_last_log": train_acc[-1] if train_acc else None,
            "cli_held_out_accuracy": (metrics.get("held_out") or {}).get("accuracy")}


LPFT_LR = 5e-5
LPFT_EPOCHS = 2
LPFT_BATCH = 2  # rankings per step, as default.yaml


def method_lpft(ctx) -> dict:
    """LP-FT: the mean-pooled probe (fit on train, L2 chosen on validation) as the score head, then
    LoRA (default.yaml's r 16, alpha 32) on training rankings with a small learning rate under
    bfloat16 autocast; validation loss after every half epoch, the best state kept (the probe itself
    counts: step 0); test replies scored in float32, as PPO scores them."""
    import torch
    from peft import LoraConfig, get_peft_model

    from reward.data import reply_ids
    from reward.losses import kwise_loss
    from reward.probe import use_mean_pooling, write_score_head
    from rlhf.modeling import load_score_model, load_tokenizer
    from trl.trainer.utils import pad

    started = time.perf_counter()
    labelled, parts = ctx["labelled"], ctx["parts"]
    model, tokenizer = load_score_model("bundled"), load_tokenizer("bundled", padding_side="right")
    use_mean_pooling(model)
    head = f"mean@{model.config.num_hidden_layers}"
    probe = fit_probe_on(ctx["features"], head, labelled, parts, refit=False)
    write_score_head(model, probe)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    ids = {i: [reply_ids(tokenizer, labelled[i]["prompt"], c) for c in labelled[i]["completions"]]
           for i in parts["train"] + parts["val"] + parts["test"]}

    def scores_of(idx: list[int], grad: bool, bf16: bool = True) -> torch.Tensor:
        seqs = [torch.tensor(x) for i in idx for x in ids[i]]
        input_ids = pad(seqs, padding_value=tokenizer.pad_token_id, padding_side="right")
        mask = pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right")
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.view(len(idx), K).float()

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            s = torch.cat([scores_of(parts["val"][j:j + 8], False) for j in range(0, len(parts["val"]), 8)])
        model.train()
        return float(kwise_loss(s, _ranks(labelled, parts["val"])))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LPFT_LR, weight_decay=0.0)
    trainable = lambda: {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}  # noqa: E731
    best = {"val_loss": val_loss(), "step": 0, "state": trainable()}
    curve = [{"step": 0, "val_loss": best["val_loss"]}]
    rng = random.Random(0)
    step, train_idx = 0, list(parts["train"])
    half = max(1, len(train_idx) // LPFT_BATCH // 2)
    model.train()
    for _epoch in range(LPFT_EPOCHS):
        rng.shuffle(train_idx)
        for j in range(0, len(train_idx), LPFT_BATCH):
            batch = train_idx[j:j + LPFT_BATCH]
            loss = kwise_loss(scores_of(batch, True), _ranks(labelled, batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % half == 0:
                v = val_loss()
                curve.append({"step": step, "val_loss": v})
                if v < best["val_loss"]:
                    best = {"val_loss": v, "step": step, "state": trainable()}
    with torch.no_grad():
        named = dict(model.named_parameters())
        for k, v in best["state"].items():
            named[k].copy_(v)
    model.eval()
    test = parts["test"]
    with torch.no_grad():
        s = torch.cat([scores_of(test[j:j + 8], False, bf16=False) for j in range(0, len(test), 8)])
    return {"scores": s.tolist(), "seconds": time.perf_counter() - started, "kept_step": best["step"],
            "steps": step, "curve": curve, "probe_l2": probe.l2}


CONCAT = "mean@15+20+30"


METHODS = {
    "lora_default": method_lora_default,
    "probe_rmean": method_probe("rmean@30"),
    "probe_rmean_20": method_probe("rmean@20"),
    "probe_mean_concat": method_probe(CONCAT),
    "ensemble_mean": None,  # set below: the mean-pooled probes of three layers, averaged
    "probe_last": method_probe("last@30"),
    "probe_mean": method_probe("mean@30"),
    "probe_last_mid": method_probe("last@15"),
    "probe_mean_mid": method_probe("mean@15"),
    "probe_mean_20": method_probe("mean@20"),
    "ensemble": method_ensemble,
    "lpft": method_lpft,
}
LAYERS = [15, 20, 30]
METHODS["ensemble_mean"] = lambda ctx: method_ensemble(ctx, ("mean@15", "mean@20", "mean@30"))
FEATURE_METHODS = [m for m in METHODS if m not in ("lora_default", "lpft")]


# ---------------------------------------------------------------------------------------------------
# Evaluation: accuracy against the reviewers' labels, and the ceiling those labels allow


def evaluate(labelled: list[dict], test_idx: list[int], scores: list[list[float]]) -> dict:
    from reward.evaluate import ranking_metrics
    from rlhf.rules import ranks_from_scores

    rows = [labelled[i] for i in test_idx]
    noisy = ranking_metrics(rows, scores)
    clean_rows = [{**r, "ranks": ranks_from_scores(r["clean"])} for r in rows]
    clean = ranking_metrics(clean_rows, scores)
    return {"accuracy": noisy["accuracy"], "ci95": noisy["ci95_bootstrap_prompts"], "pairs": noisy["pairs"],
            "accuracy_vs_noiseless": clean["accuracy"]}


def ceiling(labelled: list[dict], test_idx: list[int]) -> dict:
    """How often the reviewers' labels agree with the noiseless rule (a tie of the rule: half)."""
    from reward.evaluate import ranking_metrics

    rows = [labelled[i] for i in test_idx]
    m = ranking_metrics(rows, [r["clean"] for r in rows])
    return {"ceiling": m["accuracy"], "ci95": m["ci95_bootstrap_prompts"], "pairs": m["pairs"]}


def length_correlation(labelled: list[dict]) -> float:
    """Pearson correlation of the noiseless rule with reply length in words, over every candidate."""
    import statistics

    scores = [s for r in labelled for s in r["clean"]]
    lengths = [len(c.split()) for r in labelled for c in r["completions"]]
    return statistics.correlation(scores, lengths) if len(set(scores)) > 1 else 0.0


def closed(accuracy: float, top: float) -> float:
    """Share of the distance from chance (0.5) to the ceiling that a method covers."""
    return (accuracy - 0.5) / (top - 0.5) if top > 0.5 else float("nan")


# ---------------------------------------------------------------------------------------------------
# The run


def run_rule(out: Path, rule: str, rows, feats, per_reply, parts, methods: list[str], threads: int,
             seed: int = 0) -> dict:
    labelled = label(rule, rows)
    top = ceiling(labelled, parts["test"])
    top["length_correlation"] = length_correlation(labelled)
    where = out / "results" / rule / (f"split{seed}" if seed else "")
    write_json(where / "ceiling.json", top)
    ctx = {"labelled": labelled, "parts": parts, "features": feats, "seconds_per_reply": per_reply,
           "work": out / "work" / rule, "threads": threads}
    results = {}
    for name in methods:
        path = where / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
            continue
        log(f"{rule}: {name}" + (f" (split {seed})" if seed else ""))
        result = METHODS[name](ctx)
        result.update(evaluate(labelled, parts["test"], result["scores"]))
        result["closed"] = closed(result["accuracy"], top["ceiling"])
        write_json(path, result)
        results[name] = result
        log(f"{rule}: {name} accuracy {result['accuracy']:.3f} (ceiling {top['ceiling']:.3f}), "
            f"{result['seconds']:.0f} s")
    return {"ceiling": top, "methods": results}


def table(summary: dict, methods: list[str]) -> str:
    lines = [f"{'rule':<13}{'ceiling':>8}{'r(len)':>7}  " + "  ".join(f"{m:>22}" for m in methods)]
    lines.append(f"{'':<28}" + "  ".join(f"{'acc [95%]  closed':>22}" for _ in methods))
    mean_closed = {m: [] for m in methods}
    for rule, s in summary.items():
        cells = []
        for m in methods:
            r = s["methods"].get(m)
            if r is None:
                cells.append(f"{'-':>22}")
                continue
            lo, hi = r["ci95"]
            cells.append(f"{r['accuracy']:.3f} [{lo:.2f},{hi:.2f}] {r['closed']:>4.0%}".rjust(22))
            if rule != "hash":
                mean_closed[m].append(r["closed"])
        lines.append(f"{rule:<13}{s['ceiling']['ceiling']:>8.3f}{s['ceiling']['length_correlation']:>+7.2f}  "
                     + "  ".join(cells))
    lines.append(f"{'mean closed (learnable)':<28}" + "  ".join(
        f"{(sum(v) / len(v) if v else float('nan')):>22.0%}" for v in mean_closed.values()))
    seconds = []
    for m in methods:
        ts = [s["methods"][m]["seconds"] for s in summary.values() if m in s["methods"]]
        seconds.append(f"{(sum(ts) / len(ts) if ts else float('nan')):>21.0f}s")
    noiseless = []
    for m in methods:
        v = [s["methods"][m]["accuracy_vs_noiseless"] for r, s in summary.items() if m in s["methods"] and r != "hash"]
        noiseless.append(f"{(sum(v) / len(v) if v else float('nan')):>22.3f}")
    lines.append(f"{'mean acc. vs noiseless rule':<28}" + "  ".join(noiseless))
    lines.append(f"{'wall time (mean)':<28}" + "  ".join(seconds))
    return "\n".join(lines)


def splits_table(closed_by: dict, rules: list[str], n: int) -> str:
    """Share of the distance closed, mean over n splits (held-out prompts drawn afresh each time)."""
    import statistics

    lines = [f"share of the distance from chance to the ceiling closed, mean (min..max) over {n} splits",
             f"{'method':<20}" + "".join(f"{r:>18}" for r in rules) + f"{'mean (learnable)':>18}"]
    for m, by_rule in closed_by.items():
        cells = [f"{statistics.mean(v):>8.0%} ({min(v):.0%}..{max(v):.0%})".rjust(18) for v in by_rule.values()]
        learnable = [statistics.mean(v) for r, v in by_rule.items() if r != "hash"]
        lines.append(f"{m:<20}" + "".join(cells) + f"{statistics.mean(learnable):>18.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "reward_generalisation"))
    parser.add_argument("--rules", default=",".join(RULES), help=f"comma list of {', '.join(RULES)}")
    parser.add_argument("--methods", default="lora_default,probe_last,probe_mean,probe_rmean,probe_mean_concat,"
                        "ensemble_mean,lpft", help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--train", type=int, default=80, help="training rankings (prompts)")
    parser.add_argument("--val", type=int, default=20, help="validation rankings, held out by prompt")
    parser.add_argument("--stage", default="all", choices=["candidates", "features", "all"])
    parser.add_argument("--splits", type=int, default=1,
                        help="repeat the frozen-feature methods on this many random train/val/test splits")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads (1 is as fast on a machine shared with other busy processes)")
    args = parser.parse_args(argv)
    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = candidates(out)
    if args.stage == "candidates":
        return 0
    feats, per_reply = features(out, rows, LAYERS)
    reply_only, _ = features(out, rows, LAYERS, ("rmean",), "features_rmean.pt")
    feats = {**feats, **reply_only}
    feats[CONCAT] = torch.cat([feats["mean@15"], feats["mean@20"], feats["mean@30"]], dim=-1)
    if args.stage == "features":
        return 0
    parts = split(len(rows), args.val, args.train)
    log(f"{len(rows)} prompts x {K} replies: train {len(parts['train'])}, validation {len(parts['val'])}, "
        f"test {len(parts['test'])}")
    rules, methods = args.rules.split(","), args.methods.split(",")
    summary = {rule: run_rule(out, rule, rows, feats, per_reply, parts, methods, args.threads)
               for rule in rules}
    report = table(summary, methods)
    repeat = [m for m in methods if m in FEATURE_METHODS]
    if args.splits > 1 and repeat:
        closed_by = {m: {r: [summary[r]["methods"][m]["closed"]] for r in rules} for m in repeat}
        for seed in range(1, args.splits):
            other = split(len(rows), args.val, args.train, seed)
            for rule in rules:
                got = run_rule(out, rule, rows, feats, per_reply, other, repeat, args.threads, seed)
                for m in repeat:
                    closed_by[m][rule].append(got["methods"][m]["closed"])
        report += "\n\n" + splits_table(closed_by, rules, args.splits)
    (out / "table.txt").write_text(report + "\n")
    print(report)
    print(f"\nreproduce: nice -n 10 .venv/bin/python bench/reward_generalisation.py --rules {args.rules} "
          f"--methods {args.methods} --train {args.train} --val {args.val} --splits {args.splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

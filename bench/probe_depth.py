"""Which layer should the default reward model read? (issue 14: the probe's ``probe_depth``)

The default reward model is a K-wise Bradley-Terry linear probe on the frozen bundled model's mean-pooled
hidden states (``rlhf reward train --method probe``). This bench fits it, exactly as ``rlhf reward train``
does (``reward.probe.select_l2``: L2 chosen on a validation split, refitted on training + validation), on
the output of each of several layers of a model cut to that depth (``rlhf.modeling.keep_bottom_layers``:
the layer's output through the final norm, what the saved reward model computes), and scores it on
held-out prompts against the NOISELESS rule: how much of the preference it learned, apart from the
reviewers' noise.

  - replies: ``bench/active_bench.py``'s candidates (the bundled model, 8 replies to each of the
    quickstart's 120 prompts with the loop's settings; two items of 4 per prompt), made once and shared;
  - per rule of ``bench/efficacy_suite.py`` (its reviewers' noise and disagreement; three reviewers per
    item on the rules where one of three flips the rule, as in the suite) and per repeat (a seed: which 20
    prompts are held out), the loop's sizes: 51 training and 13 validation rankings, one item per prompt;
  - every layer sees the same rankings in a repeat, so the differences are paired;
  - the default layer's share closed, as the suite prints it: its accuracy against the reviewers' labels
    of the held-out items, from chance to the ceiling those labels allow (the noiseless rule's accuracy
    against them); over 12 repeats of 40 items, not one run's 20.

    nice -n 10 .venv/bin/python bench/probe_depth.py                       # six rules, 12 repeats (~8 min)
    .venv/bin/python bench/probe_depth.py --rules vader --repeats 4 --layers 8,30
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRAIN, VALIDATION, HELD_OUT = 51, 13, 20  # the loop's split of the quickstart's 84 training prompts, and its test split


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def layer_features(rows: list[dict], layers: list[int]) -> dict:
    """``{layer: [N, K, H]}``: the mean over prompt + reply of each layer's output through the final norm,
    which is what a reward model cut to that many layers (``reward.probe.cut_to_probe_depth``) reads."""
    from reward.data import reply_ids
    from reward.probe import reply_features
    from rlhf.modeling import load_policy, load_tokenizer, resolve_model_path

    path = resolve_model_path("bundled")
    model, tokenizer = load_policy(path), load_tokenizer(path, padding_side="right")
    ids = [reply_ids(tokenizer, r["prompt"], c) for r in rows for c in r["replies"]]
    flat = reply_features(model, ids, tokenizer.pad_token_id, layers, ("mean",), normed=True)
    k = len(rows[0]["replies"])
    return {layer: flat[f"mean@{layer}"].view(len(rows), k, -1) for layer in layers}


def run_rule(name: str, rows: list[dict], features: dict, repeats: int) -> dict:
    import torch

    import bench.efficacy_suite as suite
    from reward.probe import pair_accuracy, select_l2
    from rlhf.rules import rank_replies, ranks_from_scores

    rule = getattr(suite, name)
    noise, disagreement, _ = suite.RULES[name]
    reviewers = suite.reviewers_per_item(disagreement)
    rule_scores = torch.tensor([[float(rule(t)) for t in r["replies"]] for r in rows], dtype=torch.float64)
    truth = torch.tensor([ranks_from_scores(s) for s in rule_scores.tolist()])
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    items = {p: [i for i, r in enumerate(rows) if r["prompt"] == p] for p in prompts}
    accuracy: dict[int, list[float]] = {layer: [] for layer in features}
    closed: dict[int, list[float]] = {layer: [] for layer in features}  # as the suite's "share closed"
    for seed in range(repeats):
        rng = random.Random(f"{name}:{seed}")
        order = list(prompts)
        rng.shuffle(order)
        test = [i for p in order[:HELD_OUT] for i in items[p]]
        train = [items[p][0] for p in order[HELD_OUT:HELD_OUT + TRAIN]]
        val = [items[p][0] for p in order[HELD_OUT + TRAIN:HELD_OUT + TRAIN + VALIDATION]]

        def labels(chosen):  # each item ranked by `reviewers` reviewers; the last of three flips the rule
            index, ranks = [], []
            for i in chosen:
                for j in range(reviewers):
                    index.append(i)
                    ranks.append(rank_replies(rule, rows[i]["replies"], rng, noise,
                                              flipped=disagreement > 0 and j == reviewers - 1))
            return index, torch.tensor(ranks)

        (ti, tr), (vi, vr) = labels(train), labels(val)
        hi, hr = labels(test)  # the reviewers' labels of the held-out items, drawn after the others
        ceiling = pair_accuracy(rule_scores[hi], hr)  # what the suite calls the ceiling: the noiseless rule's
        for layer, x in features.items():
            probe = select_l2(f"mean@{layer}", x[ti], tr, x[vi], vr)
            accuracy[layer].append(pair_accuracy(probe.scores(x[test]), truth[test]))
            if ceiling > 0.5:  # (labels no better than chance leave nothing to close)
                closed[layer].append((pair_accuracy(probe.scores(x[hi]), hr) - 0.5) / (ceiling - 0.5))
        log(f"{name} repeat {seed}: " + " ".join(f"L{layer} {a[-1]:.3f}" for layer, a in accuracy.items()))
    return {"rule": name, "accuracy": {str(layer): a for layer, a in accuracy.items()},
            "share_closed": {str(layer): c for layer, c in closed.items()}}


def interval(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def percent(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{mean:.0%} [{mean - half:.0%}, {mean + half:.0%}]"


def table(results: list[dict], layers: list[int], default: int, top: int) -> str:
    head = " | ".join(f"layer {layer}" for layer in layers)
    lines = [f"| rule | {head} | layer {default} less layer {top} [95%] | share closed, layer {default} [95%] |",
             "|---|" + "---|" * len(layers) + "---|---|"]
    pooled, shares = [], []
    for r in results:
        a, share = r["accuracy"], r["share_closed"][str(default)]
        gains = [x - y for x, y in zip(a[str(default)], a[str(top)])]
        pooled += gains
        shares.append(statistics.fmean(share))
        lines.append(f"| {r['rule']} | " + " | ".join(f"{statistics.fmean(a[str(layer)]):.3f}" for layer in layers)
                     + f" | {interval(gains)} | {percent(share)} |")
    lines.append("| mean | " + " | ".join(f"{statistics.fmean(statistics.fmean(r['accuracy'][str(layer)]) for r in results):.3f}"
                                        for layer in layers) + f" | {interval(pooled)} | {statistics.fmean(shares):.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.active_bench import candidates
    from bench.efficacy_suite import RULES
    from reward.config import PROBE_DEPTH
    from rlhf.modeling import layers_at_depth

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "active_bench", help="where the shared candidates are")
    parser.add_argument("--rules", default=",".join(r for r in RULES if r != "unlearnable"))
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--layers", default="4,8,12,16,20,24,30", help="layers of the bundled model's 30 to compare")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rules.split(",") if n.strip()]
    unknown = [n for n in names if n not in RULES]
    if unknown:
        parser.error(f"--rules: unknown {', '.join(unknown)} (known: {', '.join(RULES)})")
    total = 30
    default = layers_at_depth(PROBE_DEPTH, total)
    layers = sorted({int(x) for x in args.layers.split(",")} | {default, total})
    if not all(1 <= layer <= total for layer in layers):
        parser.error(f"--layers: each between 1 and {total}")
    start = time.perf_counter()
    rows = candidates(args.out)
    log(f"features of {sum(len(r['replies']) for r in rows)} replies at layers {layers}")
    features = layer_features(rows, layers)
    results = [run_rule(name, rows, features, args.repeats) for name in names]
    (args.out / "probe_depth.json").write_text(json.dumps(results))
    print(f"held-out accuracy against the noiseless rule, mean of {args.repeats} repeats ({TRAIN} training and "
          f"{VALIDATION} validation rankings, {HELD_OUT} held-out prompts); the default, probe_depth {PROBE_DEPTH:g}, "
          f"reads layer {default}. Share closed: as bench/efficacy_suite.py's, (accuracy against the reviewers' "
          f"labels of the held-out items - 0.5) / (the noiseless rule's accuracy against them - 0.5), per repeat:\n")
    print(table(results, layers, default, total))
    print(f"\n{time.perf_counter() - start:.0f} s; reproduce: .venv/bin/python bench/probe_depth.py --rules "
          f"{','.join(names)} --repeats {args.repeats} --layers {','.join(map(str, layers))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How often does the gate let through a rule that cannot be learned, and how often does it stop one
that can? (issue 14)

Each trial draws the loop's split sizes from bench/reward_generalisation.py's 144 support prompts (the
bundled model's K = 4 replies, features cached there): 51 training, 13 validation and 20 held-out
prompts, as ``rlhf loop`` exports 84 ranked prompts (``min_test_prompts: 20``). It fits the default
reward model (the probe on the mean of layer 8 of 30 through the final norm, as ``probe_depth`` cuts
the model; L2 chosen on validation, ``reward.probe.select_l2``) and applies the gate as ``rlhf reward
train`` does (``rlhf.gate.gate_decision``): the interval alone, and the interval with the permutation
test (``reward.schedule.probe_chance_null``: the probe cross-fitted over all 84 prompts, 5 folds,
against 99 shuffles).

* ``null`` arm: every ranking drawn at random (a hash of the reply is exactly that: a preference the
  replies do not show). Any pass is a false pass.
* a learnable arm (``--rule vader`` by default; a rule of bench/reward_generalisation.py, with its noisy
  reviewers): the same splits; a stop is a learnable rule refused at these sizes.

    .venv/bin/python bench/gate_false_pass.py                    # 200 null trials, 40 vader trials
    .venv/bin/python bench/gate_false_pass.py --null-trials 400 --rule no_apology

Prints per arm the pass rate of each gate with its 95% (Wilson) interval.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.reward_generalisation import candidates, features, label, log  # noqa: E402

BUNDLED_LAYERS = 30
SIZES = {"train": 51, "val": 13, "test": 20}


def trial(feats, rows: list[dict], seed: int, shuffles: int, feature: str) -> dict:
    import torch

    from reward.probe import pair_accuracy, select_l2
    from reward.schedule import probe_chance_null
    from rlhf.gate import gate_decision, pair_credits

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    test = order[:SIZES["test"]]
    val = order[SIZES["test"]:SIZES["test"] + SIZES["val"]]
    train = order[SIZES["test"] + SIZES["val"]:SIZES["test"] + SIZES["val"] + SIZES["train"]]
    x = feats[feature]
    ranks = torch.tensor([r["ranks"] for r in rows])
    probe = select_l2(feature, x[train], ranks[train], x[val], ranks[val])
    scores = probe.scores(x[test])
    credits, prompts = pair_credits([rows[i] for i in test], scores.tolist())
    interval = gate_decision(credits, prompts)
    out = {"accuracy": interval.accuracy, "interval": interval.interval, "interval_passed": interval.passed,
           "gate_passed": False, "null_max": None}
    if interval.passed:  # as rlhf reward train: the shuffled fits only when the interval passes
        every = train + val + test
        null = probe_chance_null(feature, x[every], ranks[every], [rows[i]["prompt"] for i in every],
                                 repeats=shuffles, seed=seed, progress=False)
        decision = gate_decision(credits, prompts, chance=null)
        out.update(gate_passed=decision.passed, null_max=null.bar, cross_fit=null.accuracy)
    assert abs(pair_accuracy(scores, ranks[test]) - interval.accuracy) < 1e-9
    return out


def random_rankings(rows: list[dict], seed: int) -> list[dict]:
    rng = random.Random(f"null-{seed}")
    out = []
    for row in rows:
        ranks = list(range(1, len(row["completions"]) + 1))
        rng.shuffle(ranks)
        out.append({"prompt": row["prompt"], "completions": row["completions"], "ranks": ranks})
    return out


def rate(k: int, n: int) -> str:
    from rlhf.gate import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null-trials", type=int, default=200)
    parser.add_argument("--rule", default="vader")
    parser.add_argument("--rule-trials", type=int, default=40)
    parser.add_argument("--shuffles", type=int, default=99)
    parser.add_argument("--out", default="runs/reward_generalisation", help="bench/reward_generalisation.py's folder (cache)")
    args = parser.parse_args(argv)
    from reward.config import PROBE_DEPTH
    from rlhf.modeling import layers_at_depth
    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = candidates(out)
    # the default reward model's features: the mean of layer PROBE_DEPTH's output through the final norm
    layer = layers_at_depth(PROBE_DEPTH, BUNDLED_LAYERS)
    feature = f"mean@{layer}"
    feats, _ = features(out, rows, [layer], ("mean",), name=f"features_normed_{layer}.pt", normed=True)
    started = time.perf_counter()
    results = {}
    arms = [("null (random rankings)", args.null_trials, lambda s: random_rankings(rows, s)),
            (f"{args.rule} (learnable)", args.rule_trials, lambda s: label(args.rule, rows))]
    for name, trials, make in arms:
        runs = []
        for seed in range(trials):
            runs.append(trial(feats, make(seed), seed, args.shuffles, feature))
            if (seed + 1) % 20 == 0 or seed + 1 == trials:
                log(f"{name}: {seed + 1}/{trials} trials, interval passed {sum(r['interval_passed'] for r in runs)}, "
                    f"gate passed {sum(r['gate_passed'] for r in runs)}")
        results[name] = runs
        n = len(runs)  # each arm's line as soon as it is done: the learnable arm runs the shuffles in most trials
        log(f"{name}: interval alone passed {rate(sum(r['interval_passed'] for r in runs), n)}; with the "
            f"permutation test {rate(sum(r['gate_passed'] for r in runs), n)}")
    print(f"\nfeatures {feature} (probe_depth {PROBE_DEPTH:g}); split per trial: {SIZES['train']} training, "
          f"{SIZES['val']} validation, {SIZES['test']} held-out prompts "
          f"(K = 4, 6 pairs each); {args.shuffles} shuffles; {time.perf_counter() - started:.0f} s")
    print("| arm | trials | passes: interval alone | passes: interval + permutation test | mean held-out accuracy |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        n = len(runs)
        print(f"| {name} | {n} | {rate(sum(r['interval_passed'] for r in runs), n)} | "
              f"{rate(sum(r['gate_passed'] for r in runs), n)} | {sum(r['accuracy'] for r in runs) / n:.3f} |")
    print(f"\nreproduce: .venv/bin/python bench/gate_false_pass.py --null-trials {args.null_trials} --rule {args.rule} "
          f"--rule-trials {args.rule_trials} --shuffles {args.shuffles}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

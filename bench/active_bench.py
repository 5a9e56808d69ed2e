"""Rankings where they teach most (issue 14): does handing out first the items an ensemble of probes is
least sure about (``rlhf app prioritise``, reward/active.py) reach the same reward-model accuracy with
fewer rankings than the plain order, on the bundled model's own replies and the efficacy suite's rules?

Prioritising matters when there are more items than rankings to be had, so the pool holds two items per
prompt, each of K = 4 replies:

  1. 8 replies to each of the quickstart's 120 prompts (train + held-out files) with the loop's candidate
     settings (configs/quickstart/full.yaml: 40 tokens, temperature 0.8), two items of 4 per prompt,
     written once to OUT/candidates.jsonl and reused;
  2. the frozen bundled model's mean-pooled layer 8 of 30 for every reply (the default reward model's
     features, reward.config.PROBE_DEPTH), once;
  3. per rule of bench/efficacy_suite.py (their reviewers' noise and disagreement; the unlearnable rule
     left out: there is nothing to reach) and per repeat (a seed: which 30 prompts are held out, the
     plain order, the reviewers' noise): ``reward.active.simulate_curves`` over the other 90 prompts'
     180 items, one ranking per item handed out, the default probe (L2 chosen on a quarter of the ranked
     prompts) after every 8 rankings up to 96, and after all 180; its accuracy on the held-out prompts'
     pairs as the noiseless rule orders them.

Printed per rule: the mean accuracy (over repeats) after 16, 48, 96 and all rankings in both orders; the
gain, information order less plain order, averaged over 16 to 96 rankings, with a 95% interval over the
paired repeats; and the rankings each order needs to stay at or above the plain order's accuracy at 96.
Then the gain pooled over rules. One run: README "Rankings where they teach most".

    nice -n 10 .venv/bin/python bench/active_bench.py                   # about 20 minutes
    .venv/bin/python bench/active_bench.py --rules vader,question --repeats 2
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


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def candidates(out: Path) -> list[dict]:
    """``[{"prompt", "replies"}]``: two items of K replies per quickstart prompt (a prompt's items are
    neighbours), generated once with the loop's settings."""
    path = out / "candidates.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    from bench.efficacy_suite import loop_config
    from rlhf.generation import SamplingSettings, generate_replies
    from rlhf.modeling import load_policy, load_tokenizer, resolve_model_path
    from rlhf.prompts import read_prompts

    config = loop_config("default")
    prompts = [p for f in (config.train_prompts, config.heldout_prompts) for p in read_prompts(REPO / f)]
    model_path = resolve_model_path(config.policy)
    k = config.k
    log(f"{len(prompts)} prompts x {ITEMS_PER_PROMPT * k} replies, {config.candidate_max_new_tokens} tokens at most")
    replies = generate_replies(load_policy(model_path), load_tokenizer(model_path), prompts, ITEMS_PER_PROMPT * k,
                               SamplingSettings(max_new_tokens=config.candidate_max_new_tokens,
                                                temperature=config.candidate_temperature),
                               batch_size=config.generation_batch_size)
    rows = [{"prompt": p, "replies": r[j * k:(j + 1) * k]} for p, r in zip(prompts, replies)
            for j in range(ITEMS_PER_PROMPT)]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


ITEMS_PER_PROMPT = 2


def features(rows: list[dict]):
    """[N, K, H] the default reward model's features of every reply (the mean-pooled last kept layer)."""
    from reward.config import PROBE_DEPTH
    from reward.probe import cut_to_probe_depth, ranking_features
    from rlhf.modeling import load_policy, load_tokenizer, resolve_model_path

    path = resolve_model_path("bundled")
    model = load_policy(path)
    feature = cut_to_probe_depth(model, PROBE_DEPTH)
    kwise = [{"prompt": r["prompt"], "completions": r["replies"], "ranks": [1] * len(r["replies"])} for r in rows]
    x, _ = ranking_features(model, load_tokenizer(path, padding_side="right"), kwise, feature)
    return x


def run_rule(name: str, rows: list[dict], x, repeats: int, held_out: int) -> dict:
    import torch

    import bench.efficacy_suite as suite
    from reward.active import simulate_curves
    from rlhf.rules import rank_replies, ranks_from_scores

    rule = getattr(suite, name)
    noise, disagreement, _ = suite.RULES[name]
    truth = [ranks_from_scores([rule(t) for t in r["replies"]]) for r in rows]
    curves = []
    prompts = sorted({r["prompt"] for r in rows}, key=[r["prompt"] for r in rows].index)
    items_of = {p: [i for i, r in enumerate(rows) if r["prompt"] == p] for p in prompts}
    for seed in range(repeats):
        order = list(prompts)
        random.Random(f"split:{seed}").shuffle(order)
        test = [i for p in order[:held_out] for i in items_of[p]]
        pool = [i for p in order[held_out:] for i in items_of[p]]

        def label(i, rng, pool=pool):
            return rank_replies(rule, rows[pool[i]]["replies"], rng, noise, flipped=rng.random() < disagreement)

        curve = simulate_curves(x[pool], label, [rows[i]["prompt"] for i in pool], x[test],
                                torch.tensor([truth[i] for i in test]), start=8, step=8,
                                budgets=[*range(8, BUDGET + 1, 8), len(pool)], seed=seed)
        curves.append(curve)
        log(f"{name} repeat {seed}: " + "; ".join(f"{s} {' '.join(f'{a:.2f}' for a in curve[s])}"
                                                  for s in ("order", "information")))
    budgets = curves[0]["budgets"]
    mean = {s: [statistics.fmean(c[s][b] for c in curves) for b in range(len(budgets))] for s in STRATEGIES}
    middle = [j for j, b in enumerate(budgets) if MIDDLE[0] <= b <= MIDDLE[1]]
    gains = [statistics.fmean(c["information"][j] - c["order"][j] for j in middle) for c in curves]
    return {"rule": name, "budgets": budgets, "mean": mean, "gains": gains, "curves": curves}


STRATEGIES = ("order", "information")
BUDGET = 96  # rankings handed out, at most, from a pool of 180 items (then all of them, for reference)
MIDDLE = (16, BUDGET)  # budgets the gain is averaged over: past the first 8, which both orders share
AT = BUDGET  # the plain order's accuracy at this many rankings: how many does the other order need for it?


def needed(r: dict, target: float, strategy: str) -> int | None:
    """The first budget from which the mean curve stays at or above ``target`` (early budgets swing)."""
    out = None
    for b, a in reversed(list(zip(r["budgets"], r["mean"][strategy]))):
        if a < target - 1e-9:
            break
        out = b
    return out


def table(results: list[dict]) -> str:
    def at(r, s, n):
        i = max(j for j, v in enumerate(r["budgets"]) if v <= n)
        return f"{r['mean'][s][i]:.3f}"

    def interval(values):
        m = statistics.fmean(values)
        half = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        return f"{m:+.3f} [{m - half:+.3f}, {m + half:+.3f}]"

    last = results[0]["budgets"][-1]
    lines = [f"| rule | plain order: 16 / 48 / {AT} / all {last} | information: 16 / 48 / {AT} / all | gain over "
             f"{MIDDLE[0]}-{MIDDLE[1]} rankings [95%] | rankings to stay at the plain order's accuracy at {AT} |",
             "|---|---|---|---|---|"]
    for r in results:
        cells = [" / ".join(at(r, s, n) for n in (16, 48, AT, last)) for s in STRATEGIES]
        target = r["mean"]["order"][r["budgets"].index(AT)]
        lines.append(f"| {r['rule']} | {cells[0]} | {cells[1]} | {interval(r['gains'])} | "
                     f"{needed(r, target, 'order')} / {needed(r, target, 'information')} |")
    pooled = [g for r in results for g in r["gains"]]
    lines.append(f"\nheld-out accuracy, information order less plain order, averaged over {MIDDLE[0]}-{MIDDLE[1]} "
                 f"rankings, every rule and repeat ({len(pooled)} paired runs): {interval(pooled)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.efficacy_suite import RULES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "active_bench")
    parser.add_argument("--rules", default=",".join(r for r in RULES if r != "unlearnable"))
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--held-out", type=int, default=30, help="prompts held out per repeat (the rest is the pool)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rules.split(",") if n.strip()]
    unknown = [n for n in names if n not in RULES]
    if unknown:
        parser.error(f"--rules: unknown {', '.join(unknown)} (known: {', '.join(RULES)})")
    start = time.perf_counter()
    rows = candidates(args.out)
    log(f"features of {sum(len(r['replies']) for r in rows)} replies")
    x = features(rows)
    results = [run_rule(name, rows, x, args.repeats, args.held_out) for name in names]
    (args.out / "results.json").write_text(json.dumps(results))
    print(table(results))
    print(f"\n{time.perf_counter() - start:.0f} s; reproduce: .venv/bin/python bench/active_bench.py "
          f"--rules {','.join(names)} --repeats {args.repeats} --held-out {args.held_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

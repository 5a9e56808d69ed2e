"""When the gate stops a learnable rule for want of rankings, are the rankings it asks for enough? (issue 14)

The gate (rlhf/gate.py) refuses a reward model whose held-out accuracy does not clear chance with
confidence, and its paragraph says how many training rankings a learning curve over subsets of the
data suggests (``gate.json`` -> ``learning_curve.rankings_needed``). This benchmark takes one rule, trains
the default reward model (``rlhf reward train --config configs/reward/default.yaml``, the real CLI) on
a few rankings so the gate stops it, then on the number of rankings the gate asked for (the first ones
again plus more from the same pool, the same held-out split), and prints both decisions.

    .venv/bin/python bench/gate_more_rankings.py                        # rule vader, start at 12 rankings
    .venv/bin/python bench/gate_more_rankings.py --rule no_apology --start 8

Candidates and reviewers are bench/reward_generalisation.py's (the bundled model's K = 4 replies to 144
support prompts, cached in its folder; three scripted reviewers, noisy or disagreeing as that benchmark
says); the scorers are bench/efficacy_suite.py's. Nothing here is tuned per rule: the held-out split is
a fixed third of the prompts, the start size is one command-line number for every rule.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.reward_generalisation import RULES, _export, candidates, label, log, write_json  # noqa: E402


def train(work: Path, labelled: list[dict], train_idx: list[int], test_idx: list[int], threads: int) -> dict:
    """``rlhf reward train`` with the default config on these rankings; gate.json and the wall time."""
    shutil.rmtree(work, ignore_errors=True)
    data = _export(work / "export", labelled, train_idx, test_idx)
    command = [str(REPO / ".venv" / "bin" / "rlhf"), "reward", "train", "--config", "configs/reward/default.yaml",
               "--data", str(data), "--output-dir", str(work / "model"), "--report-to", "[none]"]
    log(" ".join(command[1:]))
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    seconds = time.perf_counter() - started
    (work / "train.log").write_text(done.stdout + done.stderr)
    gate_file = work / "model" / "gate.json"
    if not gate_file.is_file():
        raise SystemExit(f"rlhf reward train wrote no gate.json (exit {done.returncode}); see {work / 'train.log'}")
    gate = json.loads(gate_file.read_text())
    shutil.rmtree(work / "model" / "checkpoint", ignore_errors=True)
    curve = gate.get("learning_curve") or {}
    return {"train_rankings": len(train_idx), "exit_code": done.returncode, "seconds": seconds,
            "passed": gate.get("passed"), "accuracy": gate.get("accuracy"), "interval": gate.get("interval"),
            "rankings_needed": curve.get("rankings_needed"), "curve_reason": curve.get("reason"),
            "summary": gate.get("summary"), "advice": gate.get("advice"), "command": " ".join(command)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rule", default="vader", choices=sorted(RULES))
    parser.add_argument("--start", type=int, default=12, help="training rankings of the first run")
    parser.add_argument("--candidates", default="runs/reward_generalisation",
                        help="bench/reward_generalisation.py's folder (its candidates.json is reused or made)")
    parser.add_argument("--out", default="runs/gate_more_rankings")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    rows = candidates(Path(args.candidates))
    labelled = label(args.rule, rows)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    n_test = len(rows) // 3
    test_idx, pool = sorted(order[:n_test]), order[n_test:]
    out = Path(args.out) / args.rule
    log(f"{args.rule}: {len(pool)} prompts to train from, {n_test} held out; first run on {args.start}")
    runs = [train(out / f"n{args.start}", labelled, pool[:args.start], test_idx, args.threads)]
    first = runs[0]
    if first["passed"]:
        log(f"the gate passed already at {args.start} rankings: start lower (--start)")
    elif first["rankings_needed"] is None:
        log(f"the gate stopped it and named no number: {first['curve_reason']}")
    elif first["rankings_needed"] > len(pool):
        log(f"the gate asks for {first['rankings_needed']} rankings; this pool has {len(pool)}")
    else:
        n = first["rankings_needed"]
        runs.append(train(out / f"n{n}", labelled, pool[:n], test_idx, args.threads))
    write_json(out / "result.json", {"rule": args.rule, "held_out_prompts": n_test, "runs": runs})
    print(f"\nrule {args.rule}: {RULES[args.rule][2]}; {n_test} held-out prompts (K = 4)\n")
    print("| training rankings | held-out accuracy [95%] | gate | rankings the gate asks for | time |")
    print("|---|---|---|---|---|")
    for r in runs:
        low, high = r["interval"] or (None, None)
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f} [{low:.3f}, {high:.3f}]"
        print(f"| {r['train_rankings']} | {acc} | {'passed' if r['passed'] else 'stopped'} | "
              f"{r['rankings_needed'] if r['rankings_needed'] is not None and not r['passed'] else '-'} | "
              f"{r['seconds']:.0f} s |")
    if not first["passed"] and first["advice"]:
        print(f"\nthe gate's paragraph at {first['train_rankings']} rankings:\n{first['advice']}")
    print(f"\nreproduce: .venv/bin/python bench/gate_more_rankings.py --rule {args.rule} --start {args.start}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

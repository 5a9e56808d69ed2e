"""What differential privacy costs the reward model: held-out accuracy and training time at epsilon 1, 3
and 8, and without DP, on the same rankings, in one run.

Every row is the real command, ``rlhf reward train --dp --epsilon E`` (LoRA adapter and score head,
DP-SGD per privacy unit, reward/dp.py), run in its own subprocess on the bundled model. The "no DP" row
is the same schedule (same Poisson sampling of units, steps, learning rate) without clipping or noise,
trained by the epsilon-8 run's ``--dp-baseline``; the last row is the default non-private reward model
(``method probe``, what ``rlhf reward train`` gives without flags) for reference.

Data: the quickstart's exported rankings. Make them once with the loop, stopped after its export
stage (the bench does not need PPO), or pass any ``rlhf app export`` folder:

    .venv/bin/rlhf loop --config configs/quickstart/full.yaml --run-dir runs/dp_bench/quickstart  # Ctrl-C after "== export"
    .venv/bin/python bench/dp_bench.py --data runs/dp_bench/quickstart/export

On a busy machine (the quickstart's candidate generation takes a while), ``--planted N`` writes an
export of N prompts instead: K = 4 replies ranked by a planted quality word, two prompts per
conversation (the privacy unit), as ``tests/reward/conftest.py`` plants it; pass ``--model`` a small
model then (``rlhf.modeling.make_tiny_model``) to measure the mechanics in minutes.

Resumable: each finished row is kept in ``--work``/<row>/metrics.json and skipped when run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(data: Path, out: Path, flags: list[str], log: Path) -> dict:
    """One ``rlhf reward train`` run (skipped when its metrics.json exists); returns the metrics."""
    if not (out / "metrics.json").is_file():
        command = [sys.executable, "-m", "rlhf.cli", "reward", "train", "--data", str(data), "--output-dir", str(out),
                   "--report-to", "[none]", "--allow-weak-reward-model", *flags]
        print("$ " + " ".join(command[2:]), flush=True)
        started = time.perf_counter()
        with log.open("w") as handle:
            code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}).returncode
        if code != 0:
            sys.exit(f"error: {out.name} failed (exit {code}); see {log}")
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads((out / "metrics.json").read_text())


def planted_export(out: Path, n_prompts: int) -> Path:
    """The export layout with a planted preference and a conversation unit per two prompts (kept if present)."""
    import dataclasses

    sys.path.insert(0, str(REPO))
    from tests.reward.conftest import planted_rankings, write_export

    if not (out / "manifest.json").is_file():
        rankings = planted_rankings(n_prompts, seed=5)
        write_export(out, [dataclasses.replace(r, unit=f"conversation:c{i // 2}") for i, r in enumerate(rankings)])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "runs/dp_bench/quickstart/export",
                        help="an 'rlhf app export' folder (its rows carry the privacy unit)")
    parser.add_argument("--work", type=Path, default=REPO / "runs/dp_bench/work", help="results, one folder per row")
    parser.add_argument("--model", default="bundled", help="base model; 'tiny': a 2-layer random model (mechanics)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--units-per-step", type=int, default=8, help="expected units per DP-SGD step")
    parser.add_argument("--epochs", type=float, default=2.0, help="expected passes over the units")
    parser.add_argument("--max-steps", type=int, default=-1, help="fixed steps instead of --epochs (-1: epochs)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-probe-row", action="store_true", help="leave out the default (probe) reference row")
    parser.add_argument("--planted", type=int, default=None, metavar="N",
                        help="write and use a planted export of N prompts (two per conversation) under --work")
    args = parser.parse_args()
    if args.planted:
        args.data = planted_export(args.work / f"planted-{args.planted}", args.planted)
    if args.model == "tiny":  # a 2-layer random model with the bundled tokenizer, as the tests use
        from rlhf.modeling import make_tiny_model

        args.model = str(make_tiny_model(args.work / "tiny-model"))
    if not (args.data / "manifest.json").is_file():
        sys.exit(f"error: {args.data}: not an 'rlhf app export' folder (see this file's docstring to make one)")
    args.work.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--method", "finetune", "--batch-size", str(args.units_per_step),
              "--num-epochs", str(args.epochs), "--learning-rate", str(args.learning_rate),
              "--max-length", str(args.max_length), "--max-steps", str(args.max_steps)]

    rows = []
    for eps in args.epsilons:
        name = f"eps{eps:g}"
        baseline = eps == max(args.epsilons)  # the no-DP row shares the largest budget's run
        metrics = train(args.data, args.work / name, [*common, "--dp", "--epsilon", str(eps)]
                        + (["--dp-baseline"] if baseline else []), args.work / f"{name}.log")
        dp = metrics["dp"]
        rows.append((f"{eps:g}", f"{dp['epsilon_spent']:.2f}", f"{dp['noise_multiplier']:.3f}", dp, metrics,
                     dp["held_out_accuracy"], dp["train_seconds"]))
        if baseline:
            base = ("none (same schedule, no clipping or noise)", "-", "0", dp, metrics,
                    dp["baseline_held_out_accuracy"], dp["baseline_train_seconds"])
    rows.append(base)
    if not args.no_probe_row:
        probe = train(args.data, args.work / "probe", ["--model", args.model, "--max-length", str(args.max_length)],
                      args.work / "probe.log")
        rows.append(("none (default: K-wise probe, no DP)", "-", "-", None, probe, probe["held_out"]["accuracy"],
                     probe["train_seconds"]))

    first = rows[0][3]
    pairs = rows[0][4]["held_out"]["pairs"] if rows[0][4].get("held_out") else "?"
    print(f"\nData {args.data}: {first['units']} training units ({first['rankings']} rankings), held-out "
          f"{pairs} pairs; {first['steps']} steps of {first['units_per_step']} units expected (sampling rate "
          f"{first['sample_rate']:.3f}), delta {first['delta']:.2g}, clip {first['max_grad_norm']:g}, model "
          f"{args.model}, LoRA r 16\n")
    print("| target epsilon | spent epsilon | noise multiplier | units per step (mean seen) | held-out accuracy "
          "| training time (s) |")
    print("|---|---|---|---|---|---|")
    for label, spent, sigma, dp, _, acc, seconds in rows:
        seen = dp["units_per_step_seen"] if dp else None
        per_step = f"{dp['units_per_step']} ({sum(seen) / len(seen):.1f})" if dp else "-"
        print(f"| {label} | {spent} | {sigma} | {per_step} | {'n/a' if acc is None else f'{acc:.3f}'} "
              f"| {seconds:.0f} |")
    print(f"\nReproduce: .venv/bin/python bench/dp_bench.py --data {args.data} --units-per-step {args.units_per_step} "
          f"--epochs {args.epochs:g} --max-steps {args.max_steps} --learning-rate {args.learning_rate:g}"
          + (f" --planted {args.planted}" if args.planted else "") + (" --model tiny" if args.planted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

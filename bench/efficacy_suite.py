"""Does the loop learn preferences nobody tuned it for, and stop where it cannot? (issue 14, the suite)

One command runs the whole loop (``rlhf loop``, rlhf/pipeline.py) once per preference of a suite
written for this benchmark, with ONE configuration for every rule (``configs/quickstart/full.yaml``
with only the rule and its reviewers changed: no per-rule reward or policy settings):

  1. candidates once: the loop's own import and generation stages (``rlhf.pipeline.import_prompts`` and
     ``generate_candidates``) write SUITE/candidates/; every rule's run folder starts as a copy of it
     and ``rlhf loop --resume`` skips those two stages, so every rule ranks the same replies;
  2. per rule, ``rlhf loop --rule bench.efficacy_suite:<rule> --run-dir SUITE/<rule>/run --resume``;
     the loop stops at the gate (exit 2, its paragraph) when the reward model does not clear chance;
  3. per rule, SUITE/<rule>/result.json: a finished rule is skipped when the suite runs again
     (resumable per rule; a rule cut short continues its own loop with --resume).

Printed per rule: the reward model's held-out accuracy with its 95% interval, the ceiling (how often the
reviewers' labels on held-out pairs agree with the noiseless rule) and the share of the distance from
chance to it closed, the gate's decision, the aligned model's A/B win rate against the base (non-tied,
Wilson interval) and length-controlled (ties 1/2), the same replies' win rate by the noiseless rule
(the reviewers' noise apart from what the policy learned), KL to the reference at the end of PPO,
wall time.

    nice -n 10 .venv/bin/python bench/efficacy_suite.py                       # every rule, default sizes (hours)
    .venv/bin/python bench/efficacy_suite.py --size small --rules question    # smoke: configs/quickstart/small.yaml

The rules (reviewers: three accounts, one per item; "noise" adds Gaussian noise of the given std to
the rule's score, "disagree" has one of the three rank by the flipped rule):
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONFIGS = {"default": REPO / "configs" / "quickstart" / "full.yaml",
           "small": REPO / "configs" / "quickstart" / "small.yaml"}


# ---------------------------------------------------------------------------------------------------
# The preferences (scorers from published packages where said; ``rlhf loop --rule module:function``)


@functools.lru_cache(maxsize=1)
def _vader_analyser():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(text: str) -> float:
    """vaderSentiment's compound sentiment in [-1, 1] (published scorer): warmer replies win."""
    return float(_vader_analyser().polarity_scores(text)["compound"])


def reading_ease(text: str) -> float:
    """textstat's Flesch reading ease (published scorer): plainer replies win; not lexical."""
    import textstat

    return float(textstat.flesch_reading_ease(text)) if text.strip() else 0.0


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text.lower())


def you_share(text: str) -> float:
    """Share of words addressing the customer ('you', 'your', ...): continuous, lexical."""
    words = _words(text)
    return sum(w in ("you", "your", "you're", "yours") for w in words) / max(1, len(words))


def question(text: str) -> float:
    """Asks the customer something ('?'): yes/no, lexical."""
    return float("?" in text)


def no_apology(text: str) -> float:
    """No 'sorry' or 'apologise': yes/no, lexical."""
    return -float(bool(re.search(r"\b(sorry|apologi[sz]e)", text, re.IGNORECASE)))


def offers_help(text: str) -> float:
    """Mentions help: yes/no, lexical."""
    return float("help" in text.lower())


def unlearnable(text: str) -> float:
    """A hash of the reply: uniform, independent of anything a model can read. The gate must stop it."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0x1_0000_0000


# name -> (noise std added by every reviewer, share of reviewers who flip the rule, what it is)
RULES = {
    "vader": (0.25, 0.0, "vaderSentiment compound sentiment, continuous, published scorer, noisy reviewers"),
    "reading_ease": (10.0, 0.0, "textstat Flesch reading ease, continuous, published scorer, not lexical, noisy"),
    "you_share": (0.0, 1 / 3, "share of 'you/your' words, continuous, lexical, one reviewer of three disagrees"),
    "question": (0.0, 1 / 3, "asks a question, yes/no, lexical, one reviewer of three disagrees"),
    "no_apology": (0.3, 0.0, "no 'sorry'/'apologise', yes/no, lexical, noisy reviewers"),
    "offers_help": (0.0, 0.0, "mentions help, yes/no, lexical, noiseless reviewers"),
    "unlearnable": (0.0, 0.0, "sha256 of the reply: cannot be learned from the replies (the gate must stop it)"),
}
REVIEWERS = ("sim-1", "sim-2", "sim-3")  # three accounts in every size: "one of three disagrees" stays one of three


def reviewers_per_item(disagreement: float) -> int:
    """Reviewers who disagree rank the same items as the others (all three rank every item), as a team that
    wants to know whether its reviewers agree would: the gate reads agreement only from pairs two reviewers
    ranked. With one reviewer per item the disagreement is invisible and a third of the labels are simply
    flipped: the first run of the suite (2026-11-30) stopped "you_share" at the gate with a label ceiling of
    0.55 and "0 comparisons between reviewers". Noisy or noiseless reviewers keep one reviewer per item."""
    return len(REVIEWERS) if disagreement > 0 else 1
__doc__ += "\n".join(f"  {name:<13}{what}" for name, (_, _, what) in RULES.items()) + "\n"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# Stage 1: one candidate generation for every rule


def loop_config(size: str, rule: str = "len(text)"):
    from rlhf.config import load_config
    from rlhf.pipeline import QuickstartConfig

    return load_config(QuickstartConfig, CONFIGS[size], {"rule": rule})


def shared_candidates(out: Path, size: str) -> Path:
    """SUITE/candidates: the loop's import and generation stages, run once (their .done markers make
    every rule's ``rlhf loop --resume`` skip them)."""
    from rlhf.pipeline import Run, generate_candidates, import_prompts

    folder = out / "candidates"
    if (folder / ".done" / "generate_candidates").is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted generation: start it again
    folder.mkdir(parents=True)
    run = Run(loop_config(size), folder.resolve())
    (folder / "commands.sh").write_text("# the rlhf commands this run executed, in order\n")
    log(f"candidates for every rule -> {folder}")
    import_prompts(run)
    generate_candidates(run)
    return folder


# ---------------------------------------------------------------------------------------------------
# Stage 2: the loop per rule


def run_rule(name: str, out: Path, candidates: Path, size: str) -> dict:
    noise, disagreement, what = RULES[name]
    folder = out / name
    run_dir = folder / "run"
    if not run_dir.exists():
        shutil.copytree(candidates, run_dir)
    command = [str(REPO / ".venv" / "bin" / "rlhf"), "loop", "--config", str(CONFIGS[size]),
               f"--rule=bench.efficacy_suite:{name}", "--rule-name", name, "--noise", str(noise),
               "--disagreement", str(disagreement), "--reviewers", str(len(REVIEWERS)),
               "--reviewers-per-item", str(reviewers_per_item(disagreement)), "--run-dir", str(run_dir),
               "--resume"]
    log(f"{name}: {' '.join(command[1:])}")
    start = time.perf_counter()
    with open(folder / "loop.log", "a", encoding="utf-8") as handle:
        proc = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    tail = (folder / "loop.log").read_text(encoding="utf-8").strip().splitlines()
    error = next((line for line in reversed(tail) if line.startswith("error:")), None)
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{name}: rlhf loop failed (exit {proc.returncode}); see {folder / 'loop.log'}")
    # Exit 2 is the loop refusing: at the gate (reward/gate.json exists), or bad input before training (one
    # line, e.g. no held-out ranking with two distinct ranks): a result of this rule, not a crash of the suite.
    gated = proc.returncode == 2 and (run_dir / "reward" / "gate.json").is_file()
    result = {"rule": name, "what": what, "noise": noise, "disagreement": disagreement, "size": size,
              "reviewers_per_item": reviewers_per_item(disagreement),
              "exit_code": proc.returncode, "stopped_at_gate": gated,
              "stopped_before_training": proc.returncode == 2 and not gated, "message": error,
              "wall_seconds": seconds, **reward_figures(run_dir, name), **policy_figures(run_dir),
              **rule_win_rate(run_dir, name)}
    write_json(folder / "result.json", result)
    return result


def ceiling(run_dir: Path, name: str) -> tuple[float | None, int]:
    """Share of the held-out (test split) labelled pairs whose order the noiseless rule agrees with
    (a tie of the rule counts 1/2): the best accuracy these labels allow a reward model."""
    from reward.data import load_preference_data
    from rlhf.schema import pair_indices

    rule = globals()[name]
    rows = load_preference_data(str(run_dir / "export"), 0.1).kwise["test"].to_list()
    credit, pairs = 0.0, 0
    for row in rows:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in row["completions"]]
        for better, worse in pair_indices(list(row["ranks"])):
            a, b = rule(texts[better]), rule(texts[worse])
            credit += 1.0 if a > b else 0.5 if a == b else 0.0
            pairs += 1
    return (credit / pairs if pairs else None), pairs


def reward_figures(run_dir: Path, name: str) -> dict:
    metrics_file = run_dir / "reward" / "metrics.json"
    if not metrics_file.is_file():
        return {}
    metrics = json.loads(metrics_file.read_text())
    gate, held_out = metrics.get("gate") or {}, metrics.get("held_out") or {}
    top, pairs = ceiling(run_dir, name)
    # The gate's figure (interval clustered by prompt); when it was not measured (too few held-out pairs),
    # the evaluation's own accuracy and bootstrap interval.
    accuracy = gate.get("accuracy", held_out.get("accuracy"))
    interval = gate.get("interval", held_out.get("ci95_bootstrap_prompts"))
    closed, closed_interval = None, None
    if accuracy is not None and top is not None and top > 0.5:
        closed = (accuracy - 0.5) / (top - 0.5)
        # the accuracy's interval in the same units (the ceiling is read off the same labels, taken as known):
        # on 20 held-out prompts it spans tens of points, so one run cannot tell 70% closed from 90%
        closed_interval = [(x - 0.5) / (top - 0.5) for x in interval] if interval else None
    return {"rm_accuracy": accuracy, "rm_interval": interval,
            "held_out_pairs": pairs,
            "gate_passed": gate.get("passed"), "gate_measured": gate.get("measured"), "gate": gate.get("summary"),
            "permutation": gate.get("chance"), "ceiling": top, "share_closed": closed,
            "share_closed_interval": closed_interval}


def rule_win_rate(run_dir: Path, name: str) -> dict:
    """The blind A/B's replies (the aligned model's and the base's to the same held-out prompts, paired
    by prompt and position) judged by the noiseless rule: the aligned reply's non-tied win rate and
    its Wilson interval. Beside the reviewers' verdict it tells their noise from what the policy
    learned: on a yes/no rule, noisy reviewers toss a coin over every pair where both replies score
    alike, which caps their win rate whatever the policy does."""
    from rlhf.gate import wilson_interval

    aligned, base = run_dir / "eval" / "aligned.jsonl", run_dir / "eval" / "base.jsonl"
    if not (aligned.is_file() and base.is_file()):
        return {}
    rule, wins, losses = globals()[name], 0, 0
    for a, b in zip(*(map(json.loads, f.read_text().splitlines()) for f in (aligned, base))):
        if a["prompt"] != b["prompt"]:
            raise ValueError(f"{aligned} and {base}: the prompts are not in the same order")
        for x, y in zip(a["replies"], b["replies"]):
            sx, sy = rule(x), rule(y)
            wins, losses = wins + (sx > sy), losses + (sx < sy)
    n = wins + losses
    return {"rule_wins": wins, "rule_losses": losses, "rule_win_rate": wins / n if n else None,
            "rule_win_interval": list(wilson_interval(wins, n)) if n else None}


def policy_figures(run_dir: Path) -> dict:
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return {}
    summary = json.loads(summary_file.read_text())
    ab = json.loads((run_dir / "ab.json").read_text())
    wr, lc = ab["win_rate"], ab.get("length_controlled") or {}
    # held-out replies outside the reward model's support ([outside, scored]; absent for runs before it was kept)
    outside = {f"{who}_outside": [sum(flags), len(flags)] for who in ("base", "aligned")
               if (flags := summary["heldout"][who].get("outside")) is not None}
    repeats = {f"{who}_repetition": summary["heldout"][who]["repetition"] for who in ("base", "aligned")
               if summary["heldout"][who].get("repetition") is not None}  # rlhf.report.repetition
    return {"win_rate": wr.get("win_rate_a"), "win_interval": [wr.get("ci_low"), wr.get("ci_high")],
            "lc_win_rate": lc.get("length_controlled"), "lc_interval": lc.get("lc_interval"),
            "kl": summary["training"].get("kl_last"), "loop_seconds": sum(summary["times"].values()), **outside,
            **repeats}


# ---------------------------------------------------------------------------------------------------
# The table


def _f(x, fmt=".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _interval(x, interval) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f} [{_f(interval[0])}, {_f(interval[1])}]" if interval else f"{x:.3f}"


def _share(x, interval) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0%} [{interval[0]:.0%}, {interval[1]:.0%}]" if interval else f"{x:.0%}"


def table(results: list[dict]) -> str:
    lines = ["| rule | RM held-out accuracy [95%] | ceiling | share closed [95%] | gate | aligned win rate [95%] | "
             "length-controlled [95%] | by the noiseless rule [95%] | KL | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gate = ("passed" if r.get("gate_passed") else "stopped" if r.get("stopped_at_gate") else
                "refused before training" if r.get("stopped_before_training") else
                "not measured, overridden" if r.get("gate_measured") is False else "failed, overridden")
        test = r.get("permutation")
        if test and test.get("prompts"):  # the cross-fitted permutation test (absent when the interval failed)
            gate += f" (cross-fit {test['accuracy']:.3f}, shuffles up to {test['bar']:.3f}, p {test['p_value']:.2f})"
        lines.append(f"| {r['rule']} | {_interval(r.get('rm_accuracy'), r.get('rm_interval'))} | {_f(r.get('ceiling'))} "
                     f"| {_share(r.get('share_closed'), r.get('share_closed_interval'))} | {gate} | {_interval(r.get('win_rate'), r.get('win_interval'))} "
                     f"| {_interval(r.get('lc_win_rate'), r.get('lc_interval'))} "
                     f"| {_interval(r.get('rule_win_rate'), r.get('rule_win_interval'))} | {_f(r.get('kl'))} "
                     f"| {r['wall_seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/efficacy", help="suite folder (resumable)")
    parser.add_argument("--rules", default=",".join(RULES), help=f"comma list of {', '.join(RULES)}")
    parser.add_argument("--size", choices=sorted(CONFIGS), default="default",
                        help="default: configs/quickstart/full.yaml; small: configs/quickstart/small.yaml (a smoke "
                             "run: too few held-out pairs for the gate, which it overrides)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rules.split(",") if n.strip()]
    unknown = [n for n in names if n not in RULES]
    if unknown:
        parser.error(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
    out = Path(args.out) / args.size
    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    for name in names:  # a missing scorer package ends here, not after the shared candidate generation
        try:
            globals()[name]("Thank you for waiting. Can I help with anything else?")
        except ImportError as exc:
            print(f"error: rule {name}: {exc}; `make bench` installs the bench extra "
                  f"(.venv/bin/pip install -c constraints.txt -e '.[bench]')", file=sys.stderr)
            return 2
    candidates = shared_candidates(out, args.size)
    results = []
    for name in names:
        done = out / name / "result.json"
        if done.is_file():
            log(f"{name}: finished before, {done}")
            results.append(json.loads(done.read_text()))
            continue
        results.append(run_rule(name, out, candidates, args.size))
        log(f"{name}: done in {results[-1]['wall_seconds'] / 60:.1f} min")
    print(table(results))
    for r in results:
        if r.get("message"):
            print(f"{r['rule']}: {r['message']}")
        if r.get("aligned_outside"):
            (out_a, n_a), (out_b, n_b) = r["aligned_outside"], r.get("base_outside") or (0, 0)
            print(f"{r['rule']}: {out_a} of {n_a} aligned held-out replies outside the reward model's support "
                  f"(base: {out_b} of {n_b})")
        if r.get("aligned_repetition") is not None:
            print(f"{r['rule']}: aligned held-out replies repeat {r['aligned_repetition']:.0%} of their word 3-grams "
                  f"(base: {r.get('base_repetition') or 0:.0%})")
    print(f"\nreproduce: .venv/bin/python bench/efficacy_suite.py --out {args.out} --size {args.size} "
          f"--rules {','.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

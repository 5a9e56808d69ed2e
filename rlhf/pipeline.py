"""The whole loop, one function per stage: rankings from scripted reviewers -> reward model -> PPO ->
aligned checkpoint -> blind A/B judgement of base against aligned on held-out prompts.

Every stage runs the documented ``rlhf`` command in a subprocess (the same command a user types,
printed and appended to ``RUN/commands.sh``), so the stages hand data through files and the app's
database is touched only by the app's own commands and REST API. This module is a composition root:
the stages' heavy imports (the reward model's scoring, matplotlib) happen lazily inside functions.

  python -m rlhf.pipeline --config configs/quickstart/small.yaml --run-dir runs/quickstart-small
  scripts/quickstart.sh [--small] [--config FILE] [--run-dir DIR]

Run folder:
  feedback.db, app.log           the feedback app's store and server log
  export/                        TRL pairwise + K-wise datasets of the reviewers' rankings
  ppo_prompts.jsonl              the prompts PPO trains on ('rlhf app export --prompts')
  reward/, reward/eval/          reward model and its held-out accuracy
  ppo/                           PPO run (metrics.jsonl, checkpoints)
  aligned/                       the exported aligned policy (plain Hugging Face directory)
  eval/base.jsonl, aligned.jsonl replies to the held-out prompts
  ab.json                        blind A/B report (every judgement, win rate, interval, position bias)
  summary.json, REPORT.md, *.png the figures
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from rlhf.config import Config, load_config, save_resolved
from rlhf.errors import UserError
from rlhf.runtime import apply_offline_env


class QuickstartConfig(Config):
    """``rlhf.pipeline``: the settings of one whole-loop run (the stages' own configs do the rest)."""

    policy: str = Field("bundled", description="base policy: 'bundled' or a model directory")
    reward_base: str | None = Field(None, description="reward model's starting weights (default: the policy)")
    rule: str = Field(..., description="scripted reviewers' rule: expression of `text` (higher is better)")
    rule_name: str = Field("rule", description="short name of the rule in the report")
    train_prompts: str = Field("configs/quickstart/train_prompts.jsonl", description="prompts reviewers rank")
    heldout_prompts: str = Field("configs/quickstart/heldout_prompts.jsonl", description="prompts of the A/B test")
    k: int = Field(4, ge=2, le=6, description="candidates per prompt")
    reviewers: int = Field(3, ge=1, description="scripted reviewer accounts")
    reviewers_per_item: int = Field(1, ge=1, description="reviewers who rank each item")
    noise: float = Field(0.0, ge=0.0, description="std of the noise the scripted reviewers add to the rule")
    candidate_max_new_tokens: int = Field(48, ge=1, description="new tokens per candidate reply")
    candidate_temperature: float = Field(0.8, ge=0.0, description="sampling temperature of the candidates")
    generation_batch_size: int = Field(16, ge=1, description="sequences per forward pass in generation")
    reward_config: str = Field("configs/reward/default.yaml", description="'rlhf reward train' config")
    reward_flags: dict[str, Any] = Field(default_factory=dict, description="overrides: flag name -> value")
    ppo_config: str = Field("configs/ppo/default.yaml", description="'rlhf ppo' config")
    ppo_flags: dict[str, Any] = Field(default_factory=dict, description="overrides: flag name -> value")
    eval_replies_per_prompt: int = Field(2, ge=1, le=16, description="replies per held-out prompt and policy")
    eval_max_new_tokens: int = Field(48, ge=1, description="new tokens per held-out reply")
    eval_temperature: float = Field(0.7, ge=0.0, description="sampling temperature of the held-out replies")
    ab_judgements_per_item: int = Field(1, ge=1, description="different reviewers per A/B item")
    seed: int = Field(0, description="seed of generation and the scripted reviewers")
    threads: int | None = Field(None, ge=1, description="OMP threads per stage process (default: as set)")


# ---------------------------------------------------------------------------------------------------
# Running commands


@dataclass
class Run:
    """A run folder, the commands it ran and each stage's wall time."""

    config: QuickstartConfig
    dir: Path
    python: str = sys.executable
    times: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    resume: bool = False
    server: subprocess.Popen | None = None

    @property
    def db_flags(self) -> list[str]:
        c = self.config
        return ["--database-url", f"sqlite:///{self.dir / 'feedback.db'}", "--project", "quickstart",
                "--k", str(c.k), "--reviewers-per-item", str(c.reviewers_per_item)]

    def rlhf(self, *args: str, stdin: str | None = None) -> str:
        """Run ``rlhf ARGS`` (printed and logged to commands.sh); a failure stops the run with its error."""
        shown = "rlhf " + " ".join(shlex.quote(a) for a in args)
        print(f"$ {shown}", flush=True)
        with open(self.dir / "commands.sh", "a", encoding="utf-8") as log:
            log.write(shown + "\n")
        proc = subprocess.run([self.python, "-m", "rlhf.cli", *args], input=stdin, capture_output=True, text=True,
                              env={**os.environ, **self.env})
        with open(self.dir / "stages.log", "a", encoding="utf-8") as log:
            log.write(f"$ {shown}\n{proc.stdout}{proc.stderr}\n")
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"stage command failed ({shown}): {tail}; full output in {self.dir / 'stages.log'}")
        return proc.stdout


def timed(name: str, resumable: bool = True, outputs: tuple[str, ...] = ()):
    """Record a stage's wall time in ``run.times``; mark it done (``RUN/.done/``) so that ``--resume``
    skips it after an interruption. A stage that was cut short leaves its ``outputs`` (paths in the run
    folder) half written: ``--resume`` removes them before running the stage again."""
    def wrap(fn):
        def inner(run: Run, *args, **kwargs):
            marker = run.dir / ".done" / name.replace(" ", "_")
            if resumable and run.resume and marker.is_file():
                run.times[name] = float(marker.read_text())
                print(f"\n== {name}: done before ({run.times[name]:.1f} s), skipped", flush=True)
                return None
            if run.resume:
                for partial in (run.dir / rel for rel in outputs):
                    if partial.exists():
                        print(f"   removing {partial} (left by the interrupted run)", flush=True)
                        shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
            start = time.perf_counter()
            print(f"\n== {name}", flush=True)
            result = fn(run, *args, **kwargs)
            run.times[name] = time.perf_counter() - start
            print(f"   ({run.times[name]:.1f} s)", flush=True)
            marker.parent.mkdir(exist_ok=True)
            marker.write_text(f"{run.times[name]:.3f}")
            return result
        inner.__name__ = fn.__name__
        inner.__doc__ = fn.__doc__
        return inner
    return wrap


def _flags(overrides: dict[str, Any]) -> list[str]:
    out = []
    for name, value in overrides.items():
        # Flags are parsed as YAML by the stage (null, true, 1e-4, [a, b]); JSON is valid YAML.
        out += [f"--{name.replace('_', '-')}", value if isinstance(value, str) else json.dumps(value)]
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# Stages


@timed("start app", resumable=False)
def start_app(run: Run) -> None:
    """Accounts (one admin, the scripted reviewers), then ``rlhf app serve`` on a free port."""
    # The accounts' passwords stay in the run folder (owner-only), so a resumed run logs in as before.
    secret = run.dir / "passwords.json"
    if secret.is_file():
        run.env.update(json.loads(secret.read_text()))
    for name in ("RLHF_SIM_PASSWORD", "RLHF_ADMIN_PASSWORD"):
        run.env[name] = run.env.get(name) or secrets.token_urlsafe(12)
    secret.write_text(json.dumps({k: run.env[k] for k in ("RLHF_SIM_PASSWORD", "RLHF_ADMIN_PASSWORD")}))
    secret.chmod(0o600)
    run.rlhf("app", "users", "add", "admin", "--role", "admin", "--password-stdin", "--replace", *run.db_flags,
             stdin=run.env["RLHF_ADMIN_PASSWORD"] + "\n")
    if run.resume:  # accounts made by an interrupted run: reset them to the passwords kept above
        for name in _accounts(run).split(","):
            run.rlhf("app", "users", "add", name, "--password-stdin", "--replace", *run.db_flags,
                     stdin=run.env["RLHF_SIM_PASSWORD"] + "\n")
    port = _free_port()
    args = ["app", "serve", *run.db_flags, "--port", str(port), "--no-pages"]  # REST only: starts faster
    print("$ rlhf " + " ".join(shlex.quote(a) for a in args) + " &", flush=True)
    log = open(run.dir / "app.log", "w", encoding="utf-8")
    run.server = subprocess.Popen([run.python, "-m", "rlhf.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **run.env})
    run.url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        if run.server.poll() is not None:
            raise UserError(f"the feedback app stopped at start-up; see {run.dir / 'app.log'}")
        try:
            if httpx.get(run.url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise UserError(f"the feedback app did not answer on {run.url} within 120 s; see {run.dir / 'app.log'}")


def stop_app(run: Run) -> None:
    if run.server is not None and run.server.poll() is None:
        run.server.terminate()
        try:
            run.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.server.kill()
    run.server = None


@timed("import prompts")
def import_prompts(run: Run) -> None:
    run.rlhf("app", "import", run.config.train_prompts, *run.db_flags)


@timed("generate candidates")
def generate_candidates(run: Run) -> None:
    c = run.config
    run.rlhf("app", "generate", *run.db_flags, "--model", c.policy, "--max-new-tokens", str(c.candidate_max_new_tokens),
             "--temperature", str(c.candidate_temperature), "--batch-size", str(c.generation_batch_size),
             "--seed", str(c.seed))


def _accounts(run: Run) -> str:
    return ",".join(f"sim-{i + 1}" for i in range(run.config.reviewers))


@timed("reviewers rank")
def rank(run: Run) -> None:
    c = run.config
    run.rlhf("simulate", "--url", run.url, "--accounts", _accounts(run), "--create-accounts", "--admin", "admin",
             f"--rule={c.rule}", "--noise", str(c.noise), "--seed", str(c.seed))


@timed("export rankings", outputs=("export", "ppo_prompts.jsonl"))
def export_rankings(run: Run) -> None:
    run.rlhf("app", "export", str(run.dir / "export"), "--prompts", str(run.dir / "ppo_prompts.jsonl"), *run.db_flags)


@timed("train reward model", outputs=("reward",))
def train_reward(run: Run) -> None:
    c = run.config
    base = c.reward_base or c.policy
    run.rlhf("reward", "train", "--config", c.reward_config, "--model", base, "--policy-model", c.policy,
             "--data", str(run.dir / "export"), "--output-dir", str(run.dir / "reward"), "--seed", str(c.seed),
             *_flags(c.reward_flags))


@timed("evaluate reward model", outputs=("reward/eval",))
def eval_reward(run: Run) -> None:
    run.rlhf("reward", "eval", str(run.dir / "reward"), str(run.dir / "export"), "--output",
             str(run.dir / "reward" / "eval"))


@timed("PPO")
def ppo(run: Run) -> None:
    c = run.config
    # An interrupted PPO run continues from its newest complete checkpoint instead of starting over.
    resume = run.resume and any((run.dir / "ppo" / "checkpoints").glob("step-*"))
    if run.resume and not resume and (run.dir / "ppo").exists():
        shutil.rmtree(run.dir / "ppo")
    run.rlhf("ppo", "--config", c.ppo_config, "--policy", c.policy, "--reward-model", str(run.dir / "reward"),
             "--prompts-file", str(run.dir / "ppo_prompts.jsonl"), "--output-dir", str(run.dir / "ppo"),
             "--seed", str(c.seed), *_flags(c.ppo_flags), *(["--resume"] if resume else []))


@timed("export aligned", outputs=("aligned",))
def export_aligned(run: Run) -> None:
    run.rlhf("export", str(run.dir / "ppo"), str(run.dir / "aligned"))


@timed("held-out replies", outputs=("eval",))
def heldout_replies(run: Run) -> None:
    """The same held-out prompts, sampling settings and seed for both policies."""
    c = run.config
    for name, model in (("base", c.policy), ("aligned", str(run.dir / "aligned"))):
        run.rlhf("generate", "--model", model, "--prompts-file", c.heldout_prompts, "--num-replies",
                 str(c.eval_replies_per_prompt), "--max-new-tokens", str(c.eval_max_new_tokens), "--temperature",
                 str(c.eval_temperature), "--batch-size", str(c.generation_batch_size), "--seed", str(c.seed + 1),
                 "--output", str(run.dir / "eval" / f"{name}.jsonl"))


@timed("blind A/B judgement")
def ab_judgement(run: Run) -> None:
    """Aligned is policy A, base is B; the reviewers see neither name, in a random recorded order."""
    c = run.config
    try:
        run.rlhf("app", "ab", "create", "aligned-vs-base", "--policy-a", "aligned", "--replies-a",
                 str(run.dir / "eval" / "aligned.jsonl"), "--policy-b", "base", "--replies-b",
                 str(run.dir / "eval" / "base.jsonl"), "--judgements-per-item", str(c.ab_judgements_per_item),
                 *run.db_flags)
    except UserError as exc:  # made by the interrupted run from the same replies: its judging continues
        if not (run.resume and "already exists" in str(exc)):
            raise
        print("   the A/B set of the interrupted run is kept; judging continues", flush=True)
    run.rlhf("simulate", "--url", run.url, "--accounts", _accounts(run), "--ab", "aligned-vs-base",
             f"--rule={c.rule}", "--noise", str(c.noise), "--seed", str(c.seed))
    run.rlhf("app", "ab", "report", "aligned-vs-base", "--output", str(run.dir / "ab.json"), *run.db_flags)


@timed("score held-out replies")
def score_heldout(run: Run) -> dict:
    """Reward-model score, length in tokens and the rule's score of base and aligned held-out replies."""
    from rlhf.rules import load_rule
    from reward.evaluate import score_rows
    from rlhf.modeling import load_score_model, load_tokenizer

    rule = load_rule(run.config.rule)
    tokenizer = load_tokenizer(str(run.dir / "reward"), padding_side="right")
    model = load_score_model(str(run.dir / "reward"))
    out = {}
    for name in ("base", "aligned"):
        rows = [json.loads(line) for line in (run.dir / "eval" / f"{name}.jsonl").read_text().splitlines() if line]
        kwise = [{"prompt": r["prompt"], "completions": r["replies"]} for r in rows]
        scores = [s for row in score_rows(model, tokenizer, kwise, max_length=1024) for s in row if s is not None]
        replies = [reply for r in rows for reply in r["replies"]]
        lengths = [len(tokenizer(reply, add_special_tokens=False)["input_ids"]) for reply in replies]
        rule_scores = [rule(reply) for reply in replies]
        out[name] = {"reward_mean": _mean(scores), "length_mean": _mean(lengths), "rule_mean": _mean(rule_scores),
                     "lengths": lengths, "rewards": scores, "rule_scores": rule_scores}
    return out


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


# ---------------------------------------------------------------------------------------------------
# Report


def ppo_summary(run_dir: Path) -> dict:
    from rlhf.ppo.metrics import read_metrics

    rows = read_metrics(run_dir)
    if not rows:
        return {"updates": 0}
    head, tail = rows[: max(1, len(rows) // 5)], rows[-max(1, len(rows) // 5):]
    return {"updates": len(rows),
            "reward_first": _mean(r.get("reward", 0.0) for r in head),
            "reward_last": _mean(r.get("reward", 0.0) for r in tail),
            "kl_last": _mean(r.get("kl", 0.0) for r in tail),
            "kl_max": max(r.get("kl", 0.0) for r in rows),
            "rows": rows}


def write_report(run: Run, summary: dict) -> Path:
    """REPORT.md with PNG plots (PPO curves, reply lengths, win rate with its interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    rows = summary["ppo"].get("rows", [])
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        steps = [r.get("step", i + 1) for i, r in enumerate(rows)]
        axes[0].plot(steps, [r.get("reward", 0.0) for r in rows])
        axes[0].set(title="PPO: reward of rollouts", xlabel="update")
        axes[1].plot(steps, [r.get("kl", 0.0) for r in rows], color="tab:red")
        axes[1].set(title="PPO: KL to the reference", xlabel="update")
        fig.tight_layout()
        fig.savefig(run.dir / "ppo_curves.png", dpi=90)
        plt.close(fig)
        plots.append(("PPO curves", "ppo_curves.png"))
    held = summary["heldout"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist([held["base"]["lengths"], held["aligned"]["lengths"]], label=["base", "aligned"], bins=12)
    axes[0].set(title="Held-out reply length (tokens)")
    axes[0].legend()
    axes[1].hist([held["base"]["rewards"], held["aligned"]["rewards"]], label=["base", "aligned"], bins=12)
    axes[1].set(title="Held-out reward-model score")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(run.dir / "heldout.png", dpi=90)
    plt.close(fig)
    plots.append(("Held-out replies", "heldout.png"))
    wr = summary["ab"]["win_rate"]
    if wr["win_rate_a"] is not None:
        fig, ax = plt.subplots(figsize=(5, 2.2))
        ax.errorbar([wr["win_rate_a"]], [0], xerr=[[wr["win_rate_a"] - wr["ci_low"]], [wr["ci_high"] - wr["win_rate_a"]]],
                    fmt="o", capsize=6)
        ax.axvline(0.5, color="grey", ls="--")
        ax.set(xlim=(0, 1), yticks=[], title="Aligned vs base: win rate (95% CI, non-tied)")
        fig.tight_layout()
        fig.savefig(run.dir / "win_rate.png", dpi=90)
        plt.close(fig)
        plots.append(("Win rate", "win_rate.png"))

    lines = [f"# Quickstart report: rule `{run.config.rule}` ({run.config.rule_name})", "",
             f"Run folder `{run.dir}`; commands in `commands.sh`; figures in `summary.json`.", "",
             "## Figures", "", render_figures(summary), "", "## Stage wall times", "", "```",
             render_stage_table(summary["times"]), "```", ""]
    for title, name in plots:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    path = run.dir / "REPORT.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def render_stage_table(times: dict[str, float]) -> str:
    total = sum(times.values())
    lines = [f"{'stage':<26}{'wall time':>12}"]
    lines += [f"{name:<26}{_clock(seconds):>12}" for name, seconds in times.items()]
    lines.append(f"{'total':<26}{_clock(total):>12}")
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def render_figures(summary: dict) -> str:
    held, wr, pb = summary["heldout"], summary["ab"]["win_rate"], summary["ab"]["position_bias"]
    p = summary["ppo"]

    def f(x, fmt=".3f"):
        return "n/a" if x is None else format(x, fmt)

    rate = "n/a" if wr["win_rate_a"] is None else \
        f"{wr['win_rate_a']:.3f} [{wr['ci_low']:.3f}, {wr['ci_high']:.3f}] (95% {wr['method']})"
    rows = [
        ("rule", f"`{summary['rule']}`"),
        ("reward model held-out accuracy", f"{f(summary['reward_eval'].get('accuracy'))} "
                                           f"({summary['reward_eval'].get('pairs', 'n/a')} pairs)"),
        ("held-out reward, base -> aligned", f"{f(held['base']['reward_mean'])} -> {f(held['aligned']['reward_mean'])}"),
        ("PPO rollout reward, first -> last fifth", f"{f(p.get('reward_first'))} -> {f(p.get('reward_last'))}"),
        ("KL to reference, last fifth (max)", f"{f(p.get('kl_last'))} ({f(p.get('kl_max'))})"),
        ("mean reply length (tokens), base -> aligned",
         f"{f(held['base']['length_mean'], '.1f')} -> {f(held['aligned']['length_mean'], '.1f')}"),
        ("mean rule score, base -> aligned", f"{f(held['base']['rule_mean'])} -> {f(held['aligned']['rule_mean'])}"),
        ("aligned vs base (wins/losses/ties/both bad)", f"{wr['wins_a']}/{wr['wins_b']}/{wr['ties']}/{wr['both_bad']}"),
        ("aligned win rate, non-tied", rate),
        ("position bias: left side won", f"{f(pb['left_share'])} (p={f(pb['p_value'], '.3g')})"),
    ]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


# ---------------------------------------------------------------------------------------------------
# The loop


def run_loop(config: QuickstartConfig, run_dir: str | Path, resume: bool = False) -> dict:
    """Every stage in order; returns the summary (also in RUN/summary.json and RUN/REPORT.md).
    With ``resume``, stages finished by an earlier call on the same folder are skipped."""
    apply_offline_env()
    out = Path(run_dir)
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"{out}: run folder exists and is not empty; choose a new --run-dir (or --resume)")
    out.mkdir(parents=True, exist_ok=True)
    run = Run(config, out.resolve(), resume=resume)
    if config.threads:
        run.env["OMP_NUM_THREADS"] = str(config.threads)
    save_resolved(config, run.dir, name="quickstart.yaml")
    if not (run.dir / "commands.sh").exists():
        (run.dir / "commands.sh").write_text("# the rlhf commands this run executed, in order\n")
    try:
        start_app(run)
        import_prompts(run)
        generate_candidates(run)
        rank(run)
        export_rankings(run)
        train_reward(run)
        eval_reward(run)
        ppo(run)
        export_aligned(run)
        heldout_replies(run)
        ab_judgement(run)
    finally:
        stop_app(run)
    reward_eval = json.loads((run.dir / "reward" / "eval" / "eval.json").read_text())
    ab = json.loads((run.dir / "ab.json").read_text())
    heldout = score_heldout(run)
    summary = {"rule": config.rule, "rule_name": config.rule_name, "times": dict(run.times),
               "reward_eval": {k: reward_eval.get(k) for k in ("accuracy", "pairs", "rankings")},
               "ppo": ppo_summary(run.dir / "ppo"), "heldout": heldout,
               "ab": {k: ab[k] for k in ("win_rate", "position_bias", "items", "open")}}
    start = time.perf_counter()
    write_report(run, summary)
    summary["times"]["report"] = time.perf_counter() - start
    slim = {**summary, "ppo": {k: v for k, v in summary["ppo"].items() if k != "rows"}}
    (run.dir / "summary.json").write_text(json.dumps(slim, indent=2), encoding="utf-8")
    print("\n" + render_stage_table(summary["times"]) + "\n\n" + render_figures(summary))
    print(f"\nreport: {run.dir / 'REPORT.md'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart/full.yaml", help="a configs/quickstart/ file")
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/quickstart-<time>)")
    parser.add_argument("--policy", default=None, help="override the config's policy (a model directory)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    args = parser.parse_args(argv)
    try:
        overrides = {"policy": args.policy} if args.policy else None
        config = load_config(QuickstartConfig, args.config, overrides)
        if args.resume and not args.run_dir:
            raise UserError("--resume: give the --run-dir of the run to continue")
        run_loop(config, args.run_dir or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}", args.resume)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

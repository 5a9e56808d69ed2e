"""``rlhf loop``: the whole loop, one function per stage: rankings from scripted reviewers -> reward
model -> PPO -> aligned checkpoint -> blind A/B judgement of base against aligned on held-out prompts.

Every stage runs the documented ``rlhf`` command in a subprocess (the same command a user types,
printed and appended to ``RUN/commands.sh``), so the stages hand data through files and this module
imports neither the app nor the reward model: the app's database is touched only by the app's own
commands and REST API, the reward model is loaded only by ``rlhf reward ...`` commands. Each stage's
settings (``reward_flags``, ``ppo_flags``) are checked by that stage's own command with
``--validate-only`` before the first stage runs. The report is ``rlhf/report.py``.

  rlhf loop --config configs/quickstart/small.yaml --run-dir runs/quickstart-small [--resume]
  scripts/quickstart.sh [--small] [--config FILE] [--run-dir DIR]

Run folder:
  feedback.db, app.log           the feedback app's store and server log
  export/                        TRL pairwise + K-wise datasets of the reviewers' rankings
  ppo_prompts.jsonl              the prompts PPO trains on ('rlhf app export --prompts')
  reward/, reward/eval/          reward model and its held-out accuracy
  ppo/                           PPO run (metrics.jsonl, checkpoints)
  aligned/                       the exported aligned policy (plain Hugging Face directory)
  eval/base.jsonl, aligned.jsonl replies to the held-out prompts (+ .scores.json: reward and length)
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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from rlhf.config import Config, add_config_flags, config_from_args, save_resolved
from rlhf.errors import UserError
from rlhf.runtime import ServerNotUp, apply_offline_env, free_port, wait_for_http

if TYPE_CHECKING:
    from rlhf.report import LoopSummary


class QuickstartConfig(Config):
    """``rlhf loop``: the settings of one whole-loop run (the stages' own configs do the rest)."""

    policy: str = Field("bundled", description="base policy: 'bundled' or a model directory")
    reward_base: str | None = Field(None, description="reward model's starting weights (default: the policy)")
    rule: str = Field(..., description="scripted reviewers' rule: expression of `text` (higher is better)")
    rule_name: str = Field("rule", description="short name of the rule in the report")
    train_prompts: str = Field("configs/quickstart/train_prompts.jsonl", description="prompts reviewers rank")
    heldout_prompts: str = Field("configs/quickstart/heldout_prompts.jsonl", description="prompts of the A/B test")
    k: int = Field(4, ge=2, le=6, description="candidates per prompt")
    reviewers: int = Field(3, ge=1, description="scripted reviewer accounts")
    reviewers_per_item: int = Field(1, ge=1, description="reviewers who rank each item")
    min_test_prompts: int = Field(20, ge=0, description="the export holds out at least this many ranked prompts (at "
                                  "most half) for the reward model's test split, whatever the app's test_fraction: "
                                  "the gate needs 10 or more for its interval, 20 give it a usable width")
    noise: float = Field(0.0, ge=0.0, description="std of the noise the scripted reviewers add to the rule")
    disagreement: float = Field(0.0, ge=0.0, le=1.0, description="share of the scripted reviewers who rank by the "
                                "flipped rule (reviewers who disagree; the A/B judges do not)")
    candidate_max_new_tokens: int = Field(48, ge=1, description="new tokens per candidate reply")
    candidate_temperature: float = Field(0.8, ge=0.0, description="sampling temperature of the candidates")
    # 32: the fast decode loop's time per reply token on the bundled model, 2 cores, 40 new tokens:
    # 3.8 ms at 16 rows, 2.8 at 32, 3.0 at 64 (bench/generation_bench.py --batches 16,32,64 --variants fast).
    generation_batch_size: int = Field(32, ge=1, description="sequences per forward pass in generation")
    reward_config: str = Field("configs/reward/default.yaml", description="'rlhf reward train' config")
    reward_flags: dict[str, Any] = Field(default_factory=dict, description="'rlhf reward train' overrides: "
                                         "field -> value (checked by that command before any stage runs)")
    ppo_config: str = Field("configs/ppo/default.yaml", description="'rlhf ppo' config")
    ppo_flags: dict[str, Any] = Field(default_factory=dict, description="'rlhf ppo' overrides: field -> value "
                                      "(checked by that command before any stage runs)")
    algorithm: Literal["ppo", "grpo", "rloo", "dpo"] = Field(
        "ppo", description="policy training: ppo (ppo_config), or grpo, rloo (the same reward model) or dpo (the "
        "reviewers' pairs, no reward model) with align_config")
    align_config: str | None = Field(None, description="'rlhf grpo|rloo|dpo' config (default: "
                                     "configs/<algorithm>/default.yaml)")
    align_flags: dict[str, Any] = Field(default_factory=dict, description="'rlhf grpo|rloo|dpo' overrides: field -> "
                                        "value (checked by that command before any stage runs)")
    sft: bool = Field(False, description="supervised fine-tuning first ('rlhf sft' with sft_config on the shipped "
                      "demonstrations): the SFT model then writes the candidates, is the reward model's base and the "
                      "policy's start and reference; the report adds held-out loss and the A/B of SFT against base")
    sft_config: str = Field("configs/sft/default.yaml", description="'rlhf sft' config (with sft)")
    sft_flags: dict[str, Any] = Field(default_factory=dict, description="'rlhf sft' overrides: field -> value "
                                      "(checked by that command before any stage runs)")
    allow_weak_reward_model: bool = Field(False, description="go on to policy training even when the reward model "
                                          "does not pass the gate (or the held-out split is too small to measure "
                                          "it); recorded in the model card")
    guard: bool = Field(True, description="PPO, GRPO, RLOO: train a second reward model on half of the training prompts "
                        "(reward_guard/) and let PPO's guard stop the run, keeping the best update, when the training "
                        "reward rises while the second model's does not (rlhf ppo --guard-reward-model)")
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
        proc = self.call(*args, stdin=stdin)
        with open(self.dir / "stages.log", "a", encoding="utf-8") as log:
            log.write(f"$ {shown}\n{proc.stdout}{proc.stderr}\n")
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"stage command failed ({shown}): {tail}; full output in {self.dir / 'stages.log'}")
        return proc.stdout

    def call(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """``rlhf ARGS`` in a subprocess with the run's environment; neither printed nor logged."""
        return subprocess.run([self.python, "-m", "rlhf.cli", *args], input=stdin, capture_output=True, text=True,
                              env={**os.environ, **self.env})


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
    port = free_port()
    args = ["app", "serve", *run.db_flags, "--port", str(port), "--no-pages"]  # REST only: starts faster
    print("$ rlhf " + " ".join(shlex.quote(a) for a in args) + " &", flush=True)
    log = open(run.dir / "app.log", "w", encoding="utf-8")
    run.server = subprocess.Popen([run.python, "-m", "rlhf.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **run.env})
    run.url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(run.url + "/health", run.server, timeout=120)
    except ServerNotUp as exc:
        raise UserError(f"the feedback app did not start ({exc}); see {run.dir / 'app.log'}") from None


def stop_app(run: Run) -> None:
    if run.server is not None and run.server.poll() is None:
        run.server.terminate()
        try:
            run.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.server.kill()
    run.server = None


def start_policy(run: Run) -> str:
    """The policy the round starts from: the SFT model when ``sft`` is on, else ``policy``. It writes the
    candidates, is the reward model's base (unless ``reward_base``) and the policy trainers' start and reference."""
    return str(run.dir / "sft_model") if run.config.sft else run.config.policy


def sft_args(run: Run) -> list[str]:
    c = run.config
    return ["sft", "--config", c.sft_config, "--policy", c.policy, "--output-dir", str(run.dir / "sft"),
            "--seed", str(c.seed), *_flags(c.sft_flags)]


@timed("SFT")
def sft(run: Run) -> None:
    """Supervised fine-tuning on demonstrations, then its export; an interrupted run continues from its checkpoint."""
    folder = run.dir / "sft"
    resume = run.resume and any((folder / "checkpoints").glob("step-*"))
    if run.resume and not resume and folder.exists():
        shutil.rmtree(folder)
    run.rlhf(*sft_args(run), *(["--resume"] if resume else []))


@timed("export SFT", outputs=("sft_model",))
def export_sft(run: Run) -> None:
    run.rlhf("export", str(run.dir / "sft"), str(run.dir / "sft_model"))


@timed("import prompts")
def import_prompts(run: Run) -> None:
    run.rlhf("app", "import", run.config.train_prompts, *run.db_flags)


@timed("generate candidates")
def generate_candidates(run: Run) -> None:
    c = run.config
    run.rlhf("app", "generate", *run.db_flags, "--model", start_policy(run), "--max-new-tokens", str(c.candidate_max_new_tokens),
             "--temperature", str(c.candidate_temperature), "--batch-size", str(c.generation_batch_size),
             "--seed", str(c.seed))


def _accounts(run: Run) -> str:
    return ",".join(f"sim-{i + 1}" for i in range(run.config.reviewers))


@timed("reviewers rank")
def rank(run: Run) -> None:
    c = run.config
    run.rlhf("simulate", "--url", run.url, "--accounts", _accounts(run), "--create-accounts", "--admin", "admin",
             f"--rule={c.rule}", "--noise", str(c.noise), "--disagreement", str(c.disagreement), "--seed", str(c.seed))


@timed("export rankings", outputs=("export", "ppo_prompts.jsonl"))
def export_rankings(run: Run) -> None:
    run.rlhf("app", "export", str(run.dir / "export"), "--prompts", str(run.dir / "ppo_prompts.jsonl"),
             "--min-test-prompts", str(run.config.min_test_prompts), *run.db_flags)


def reward_train_args(run: Run) -> list[str]:
    c = run.config
    return ["reward", "train", "--config", c.reward_config, "--model", c.reward_base or start_policy(run),
            "--policy-model", start_policy(run), "--data", str(run.dir / "export"), "--output-dir", str(run.dir / "reward"), "--seed", str(c.seed),
            *_allow_weak(run), *_flags(c.reward_flags)]


def _allow_weak(run: Run) -> list[str]:
    return ["--allow-weak-reward-model", "true"] if run.config.allow_weak_reward_model else []


@timed("train reward model", outputs=("reward",))
def train_reward(run: Run) -> None:
    run.rlhf(*reward_train_args(run))


@timed("train second reward model", outputs=("reward_guard",))
def train_guard_reward(run: Run) -> None:
    """The guard's judge: the same reward-model command on the second half of the training prompts only
    (``--train-half second``); not gated (half the rankings may not clear it), it only watches PPO."""
    args = reward_train_args(run)
    args[args.index("--output-dir") + 1] = str(run.dir / "reward_guard")
    skipped = run.dir / GUARD_SKIPPED
    skipped.unlink(missing_ok=True)
    try:
        run.rlhf(*args, "--train-half", "second", "--allow-weak-reward-model", "true")
    except UserError as exc:
        # Half the training prompts can be too few for a reward model of its own (a rule most replies tie on
        # leaves few usable rankings: after SFT on the quickstart, 7 of 30). The second model only watches
        # the policy; without it the run goes on with the other guards (KL, reply length, EOS share).
        reason = str(exc).split("): ", 1)[-1]
        skipped.write_text(reason + "\n", encoding="utf-8")
        print(f"warning: no second reward model for the guard ({reason}); the policy trains without it, watched "
              "by KL, reply length and EOS share only", flush=True)


GUARD_SKIPPED = "reward_guard.skipped"  # why the guard's second reward model could not be trained


def _guard(run: Run) -> list[str]:
    if not run.config.guard or (run.dir / GUARD_SKIPPED).is_file():
        return []
    return ["--guard-reward-model", str(run.dir / "reward_guard")]


def check_rule(run: Run, rule) -> None:
    """Bad input before any training, one line each: rankings with no usable pair, and a rule that gives
    every candidate of a prompt the same score (with the reviewers' noise its rankings are pure noise)."""
    from datasets import load_from_disk

    from rlhf.gate import check_rule_discriminates, check_usable_pairs
    from rlhf.schema import EXPORT_KWISE

    kwise = load_from_disk(str(run.dir / "export" / EXPORT_KWISE))
    rows = [row for split in kwise.values() for row in split]
    name = f"rule '{run.config.rule_name}' ({run.config.rule})"
    check_usable_pairs(rows, f"the reviewers' rankings by {name}")
    text = lambda reply: reply if isinstance(reply, str) else reply[-1]["content"]  # noqa: E731
    check_rule_discriminates([[float(rule(text(c))) for c in row["completions"]] for row in rows], name)


def gate(run: Run) -> None:
    """The gate, right after the reward stage: a reward model that does not clear chance on held-out
    pairs stops the loop here with the paragraph (for DPO too: the reward model trained on the same
    split is the check that the rankings hold a learnable preference)."""
    from rlhf.gate import require_gate

    record = require_gate(str(run.dir / "reward"), run.config.allow_weak_reward_model,
                          say=lambda text: print(f"   {text}", flush=True))
    (run.dir / "gate.json").write_text(json.dumps(record, indent=2))


@timed("evaluate reward model", outputs=("reward/eval",))
def eval_reward(run: Run) -> None:
    run.rlhf("reward", "eval", str(run.dir / "reward"), str(run.dir / "export"), "--output",
             str(run.dir / "reward" / "eval"))


@timed("PPO")
def ppo(run: Run) -> None:
    # An interrupted PPO run continues from its newest complete checkpoint instead of starting over.
    resume = run.resume and any((run.dir / "ppo" / "checkpoints").glob("step-*"))
    if run.resume and not resume and (run.dir / "ppo").exists():
        shutil.rmtree(run.dir / "ppo")
    run.rlhf(*ppo_args(run), *(["--resume"] if resume else []))


def ppo_args(run: Run) -> list[str]:
    c = run.config
    return ["ppo", "--config", c.ppo_config, "--policy", start_policy(run), "--reward-model", str(run.dir / "reward"),
            "--prompts-file", str(run.dir / "ppo_prompts.jsonl"), "--output-dir", str(run.dir / "ppo"),
            "--seed", str(c.seed), *_allow_weak(run), *_guard(run), *_flags(c.ppo_flags)]


def align(run: Run) -> None:
    """GRPO, RLOO or DPO in place of PPO (``algorithm``); an interrupted run continues from its checkpoint."""
    folder = run.dir / run.config.algorithm
    resume = run.resume and any((folder / "checkpoints").glob("step-*"))
    if run.resume and not resume and folder.exists():
        shutil.rmtree(folder)
    run.rlhf(*policy_args(run), *(["--resume"] if resume else []))


ALIGN_STAGES = {name: timed(name.upper())(align) for name in ("grpo", "rloo", "dpo")}


def policy_args(run: Run) -> list[str]:
    """The policy-training command of ``algorithm``: PPO's, or GRPO/RLOO (reward model and prompts, like
    PPO) or DPO (the exported rankings themselves)."""
    c = run.config
    if c.algorithm == "ppo":
        return ppo_args(run)
    inputs = ["--data", str(run.dir / "export")] if c.algorithm == "dpo" else \
        ["--reward-model", str(run.dir / "reward"), "--prompts-file", str(run.dir / "ppo_prompts.jsonl")]
    return [c.algorithm, "--config", c.align_config or f"configs/{c.algorithm}/default.yaml", "--policy", start_policy(run),
            *inputs, "--output-dir", str(run.dir / c.algorithm), "--seed", str(c.seed),
            *(_allow_weak(run) + _guard(run) if c.algorithm != "dpo" else []), *_flags(c.align_flags)]


@timed("export aligned", outputs=("aligned",))
def export_aligned(run: Run) -> None:
    run.rlhf("export", str(run.dir / run.config.algorithm), str(run.dir / "aligned"))


@timed("held-out replies", outputs=("eval",))
def heldout_replies(run: Run) -> None:
    """The same held-out prompts, sampling settings and seed for every policy (base, SFT when on, aligned)."""
    c = run.config
    for name, model in heldout_policies(run):
        run.rlhf("generate", "--model", model, "--prompts-file", c.heldout_prompts, "--num-replies",
                 str(c.eval_replies_per_prompt), "--max-new-tokens", str(c.eval_max_new_tokens), "--temperature",
                 str(c.eval_temperature), "--batch-size", str(c.generation_batch_size), "--seed", str(c.seed + 1),
                 "--output", str(run.dir / "eval" / f"{name}.jsonl"))


@timed("counterfactual replies", outputs=("eval/counterfactual",))
def counterfactual_replies(run: Run) -> None:
    """Held-out prompts with names, gendered words or dialect markers swapped (``rlhf.bias.counterfactual_probes``):
    greedy replies of the base and the aligned policy to each original and its variant, so the report can say how
    far a policy's reply moves when only the person in the prompt changes (``rlhf.bias.reply_shift``)."""
    from rlhf.bias import counterfactual_probes
    from rlhf.prompts import read_prompts

    c, folder = run.config, run.dir / "eval" / "counterfactual"
    folder.mkdir(parents=True, exist_ok=True)
    probes = counterfactual_probes(read_prompts(c.heldout_prompts))
    (folder / "probes.json").write_text(json.dumps([{"original": p.original, "variant": p.variant,
                                                      "category": p.category, "swaps": p.swaps} for p in probes]))
    if not probes:
        print("   no held-out prompt has a name, gendered word or dialect marker to swap", flush=True)
        return
    prompts = folder / "prompts.jsonl"  # the originals, then their variants in the same order
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               [q.original for q in probes] + [q.variant for q in probes]))
    for name, model in (("base", c.policy), ("aligned", str(run.dir / "aligned"))):
        run.rlhf("generate", "--model", model, "--prompts-file", str(prompts), "--num-replies", "1",
                 "--max-new-tokens", str(c.eval_max_new_tokens), "--temperature", "0", "--batch-size",
                 str(c.generation_batch_size), "--seed", str(c.seed + 2), "--output", str(folder / f"{name}.jsonl"))


def heldout_policies(run: Run) -> list[tuple[str, str]]:
    c = run.config
    return [("base", c.policy), *([("sft", str(run.dir / "sft_model"))] if c.sft else []),
            ("aligned", str(run.dir / "aligned"))]


def ab_pairs(run: Run) -> list[tuple[str, str, str]]:
    """``(policy A, policy B, report file)`` of each blind A/B set: aligned against the policy it started from
    (``ab.json``), and with SFT on, SFT against the base first (``ab_sft.json``)."""
    if not run.config.sft:
        return [("aligned", "base", "ab.json")]
    return [("sft", "base", "ab_sft.json"), ("aligned", "sft", "ab.json")]


@timed("blind A/B judgement")
def ab_judgement(run: Run) -> None:
    """In each set the reviewers see neither name, in a random recorded order."""
    for a, b, report in ab_pairs(run):
        blind_ab(run, a, run.dir / "eval" / f"{a}.jsonl", b, run.dir / "eval" / f"{b}.jsonl", run.dir / report)


def blind_ab(run: Run, a: str, replies_a: Path, b: str, replies_b: Path, report: Path) -> None:
    """One blind A/B set ``A-vs-B`` in the running app: created from two replies files to the same prompts,
    judged by the scripted reviewers by the run's rule, its report written to ``report``."""
    c, name = run.config, f"{a}-vs-{b}"
    try:
        run.rlhf("app", "ab", "create", name, "--policy-a", a, "--replies-a", str(replies_a), "--policy-b", b,
                 "--replies-b", str(replies_b), "--judgements-per-item", str(c.ab_judgements_per_item), *run.db_flags)
    except UserError as exc:  # made by the interrupted run from the same replies: its judging continues
        if not (run.resume and "already exists" in str(exc)):
            raise
        print("   the A/B set of the interrupted run is kept; judging continues", flush=True)
    run.rlhf("simulate", "--url", run.url, "--accounts", _accounts(run), "--ab", name,
             f"--rule={c.rule}", "--noise", str(c.noise), "--seed", str(c.seed))
    run.rlhf("app", "ab", "report", name, "--output", str(report), *run.db_flags)


@timed("score held-out replies", outputs=("eval/base.scores.json", "eval/sft.scores.json", "eval/aligned.scores.json"))
def score_heldout(run: Run) -> None:
    """Reward-model score and length in tokens of the base (SFT) and aligned held-out replies."""
    for name, _ in heldout_policies(run):
        run.rlhf("reward", "score", "--reward-model", str(run.dir / "reward"), "--replies",
                 str(run.dir / "eval" / f"{name}.jsonl"), "--output", str(run.dir / "eval" / f"{name}.scores.json"))


def check_stage_settings(run: Run, source: str) -> None:
    """Each stage's own command validates its config file plus the loop's overrides (``--validate-only``):
    a typo in ``reward_flags`` fails now, not after the app, generation and ranking have run."""
    stages = [("reward_config + reward_flags", reward_train_args(run)),
              ("ppo_config + ppo_flags" if run.config.algorithm == "ppo" else "align_config + align_flags",
               policy_args(run))]
    for fields, args in stages + ([("sft_config + sft_flags", sft_args(run))] if run.config.sft else []):
        proc = run.call(*args, "--validate-only")
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            tail = tail.removeprefix("rlhf: ").removeprefix("error: ")
            command = " ".join(args[:2] if args[0] == "reward" else args[:1])
            raise UserError(f"{source}: {fields}: 'rlhf {command} --validate-only' refused them: {tail}")


# ---------------------------------------------------------------------------------------------------
# The loop


def run_loop(config: QuickstartConfig, run_dir: str | Path, resume: bool = False,
             source: str = "loop config") -> LoopSummary:
    """Every stage in order; returns the summary (also in RUN/summary.json and RUN/REPORT.md).
    With ``resume``, stages finished by an earlier call on the same folder are skipped. ``source``
    names the config in error messages."""
    from rlhf.report import HeldoutScores, LoopSummary, TrainingSummary, RewardEvalSummary, render_figures, \
        add_to_model_card, render_stage_table, write_report, write_summary
    from rlhf.rules import load_rule
    from rlhf.schema import AbReport, ScoredReplies

    apply_offline_env()
    out = Path(run_dir)
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"{out}: run folder exists and is not empty; choose a new --run-dir (or --resume)")
    rule = load_rule(config.rule)  # a bad rule fails now, not when the reviewers start
    run = Run(config, out.resolve(), resume=resume)
    if config.threads:
        run.env["OMP_NUM_THREADS"] = str(config.threads)
    check_stage_settings(run, source)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(config, run.dir, name="quickstart.yaml")
    if not (run.dir / "commands.sh").exists():
        (run.dir / "commands.sh").write_text("# the rlhf commands this run executed, in order\n")
    try:
        if config.sft:
            sft(run)
            export_sft(run)
        start_app(run)
        import_prompts(run)
        generate_candidates(run)
        rank(run)
        export_rankings(run)
        check_rule(run, rule)
        train_reward(run)
        if config.guard and config.algorithm != "dpo":
            train_guard_reward(run)
        eval_reward(run)
        gate(run)
        ppo(run) if config.algorithm == "ppo" else ALIGN_STAGES[config.algorithm](run)
        export_aligned(run)
        heldout_replies(run)
        counterfactual_replies(run)
        ab_judgement(run)
    finally:
        stop_app(run)
    score_heldout(run)

    def heldout(name: str) -> HeldoutScores:
        scored = ScoredReplies.from_dict(json.loads((run.dir / "eval" / f"{name}.scores.json").read_text()))
        return HeldoutScores.of(scored, rule)

    summary = LoopSummary(config.rule, config.rule_name, run.times,
                          RewardEvalSummary.read(run.dir / "reward" / "eval" / "eval.json"),
                          TrainingSummary.read(run.dir / config.algorithm, config.algorithm),
                          heldout("sft" if config.sft else "base"), heldout("aligned"),  # aligned against its start
                          AbReport.from_dict(json.loads((run.dir / "ab.json").read_text())))
    start = time.perf_counter()
    write_report(summary, run.dir)
    add_to_model_card(summary, run.dir)
    run.times["report"] = time.perf_counter() - start
    write_summary(summary, run.dir)
    if config.sft:
        from rlhf.report import SFTSummary, add_sft_section

        add_sft_section(SFTSummary.read(run.dir, heldout("base"), heldout("sft")), run.dir)
    print("\n" + render_stage_table(run.times) + "\n\n" + render_figures(summary))
    print(f"\nreport: {run.dir / 'REPORT.md'}")
    return summary


# ---------------------------------------------------------------------------------------------------
# The command


def register(subparsers) -> None:
    loop = subparsers.add_parser(
        "loop", help="the whole loop: app, scripted reviewers, reward model, PPO, export, blind A/B, report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    loop.add_argument("--run-dir", default=None, help="run folder (default: runs/quickstart-<time>)")
    loop.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    add_config_flags(loop, QuickstartConfig, default_config="configs/quickstart/full.yaml")
    loop.set_defaults(run=run_loop_command)


def run_loop_command(args) -> int:
    config = config_from_args(QuickstartConfig, args)
    if args.resume and not args.run_dir:
        raise UserError("--resume: give the --run-dir of the run to continue")
    run_loop(config, args.run_dir or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}", args.resume,
             source=args.config or "command line")
    return 0

"""The loop's report: what ``rlhf loop`` measured, as small dataclasses, turned into JSON
(``summary.json``), a Markdown page (``REPORT.md``) and PNG figures only here, at the edge.

Every figure comes from a file a stage wrote: ``reward/eval/eval.json`` (``rlhf reward eval``),
``<algorithm>/metrics.jsonl`` (``rlhf ppo``, ``grpo``, ``rloo`` or ``dpo``), ``eval/{base,aligned}.scores.json`` (``rlhf reward score``) and
``ab.json`` (``rlhf app ab report``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf.runlog import read_metrics
from rlhf.schema import AbReport, ScoredReplies


def mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


@dataclass
class RewardEvalSummary:
    """The reward model's held-out accuracy (pairs of held-out prompts), from ``eval.json``."""

    accuracy: float | None
    pairs: int | None
    rankings: int | None

    @classmethod
    def read(cls, path: Path) -> "RewardEvalSummary":
        data = json.loads(path.read_text())
        return cls(data.get("accuracy"), data.get("pairs"), data.get("rankings"))


ALGORITHM_NAMES = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO"}


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return mean(values) if values else None


@dataclass
class TrainingSummary:
    """The policy trainer's per-update log (``metrics.jsonl``), first and last fifth of the updates.

    PPO, GRPO and RLOO log the reward of their rollouts and the KL to the reference; DPO has no
    rollouts and logs neither, but the margin between the chosen and rejected replies' implicit
    rewards and the share of pairs it orders right. A figure a trainer does not log stays None
    (shown "n/a"), never 0.
    """

    updates: int
    algorithm: str = "ppo"
    reward_first: float | None = None
    reward_last: float | None = None
    kl_last: float | None = None
    kl_max: float | None = None
    margin_last: float | None = None
    pair_accuracy_last: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)  # metrics.jsonl, for the plot only

    @classmethod
    def read(cls, run_dir: Path, algorithm: str = "ppo") -> "TrainingSummary":
        rows = read_metrics(run_dir)
        if not rows:
            return cls(updates=0, algorithm=algorithm)
        fifth = max(1, len(rows) // 5)
        head, tail = rows[:fifth], rows[-fifth:]
        kls = [r["kl"] for r in rows if r.get("kl") is not None]
        return cls(len(rows), algorithm, _mean_of(head, "reward"), _mean_of(tail, "reward"), _mean_of(tail, "kl"),
                   max(kls) if kls else None, _mean_of(tail, "reward_margin"), _mean_of(tail, "pair_accuracy"), rows)

    @property
    def name(self) -> str:
        return ALGORITHM_NAMES.get(self.algorithm, self.algorithm)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "rows"}


def repetition(text: str, n: int = 3) -> float:
    """Share of a text's word ``n``-grams that already occurred earlier in it: 0 for a reply that does
    not repeat itself, towards 1 for one looping a phrase ("Welcome to our team. Welcome to our team.
    ..."), which a rule counting warm words, and a reward model reading mean-pooled features (the mean
    of a phrase said ten times is the phrase's), can both score highly. Words: lower-cased runs of
    letters, digits and apostrophes; fewer than ``n`` words: 0."""
    words = re.findall(r"[\w']+", text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams)


@dataclass
class HeldoutScores:
    """One policy's replies to the held-out prompts: reward-model score, length in tokens, rule score."""

    reward_mean: float | None
    length_mean: float | None
    rule_mean: float | None
    lengths: list[int]
    rewards: list[float]
    rule_scores: list[float]
    outside: list[bool] | None = None  # per scored reply: outside the reward model's support (None: it has none)
    repetition: float | None = None  # mean ``repetition`` of the replies (None: written before it was kept)

    @classmethod
    def of(cls, scored: ScoredReplies, rule) -> "HeldoutScores":
        rewards, lengths, replies = scored.flat_scores(), scored.flat_lengths(), scored.flat_replies()
        rule_scores = [rule(reply) for reply in replies]
        return cls(mean(rewards), mean(lengths), mean(rule_scores), lengths, rewards, rule_scores,
                   scored.flat_outside(), mean([repetition(reply) for reply in replies]))

    def outside_text(self) -> str:
        """'5 of 72': replies outside the reward model's support, or 'n/a'."""
        return "n/a" if self.outside is None else f"{sum(self.outside)} of {len(self.outside)}"


@dataclass
class LoopSummary:
    """Everything ``REPORT.md`` and ``summary.json`` show about one run of the loop."""

    rule: str
    rule_name: str
    times: dict[str, float]  # stage name -> wall time in seconds, in the order the stages ran
    reward_eval: RewardEvalSummary
    training: TrainingSummary  # the policy trainer's log (PPO, GRPO, RLOO or DPO)
    base: HeldoutScores
    aligned: HeldoutScores
    ab: AbReport  # aligned is policy A, base is B

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``summary.json`` (the trainer's per-update rows and the A/B judgements left out)."""
        ab = self.ab.to_dict()
        return {"rule": self.rule, "rule_name": self.rule_name, "times": dict(self.times),
                "reward_eval": asdict(self.reward_eval), "training": self.training.to_dict(),
                "heldout": {"base": asdict(self.base), "aligned": asdict(self.aligned)},
                "ab": {k: ab[k] for k in ("win_rate", "position_bias", "items", "open")}}


# ---------------------------------------------------------------------------------------------------
# Text


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def render_stage_table(times: dict[str, float]) -> str:
    lines = [f"{'stage':<26}{'wall time':>12}"]
    lines += [f"{name:<26}{_clock(seconds):>12}" for name, seconds in times.items()]
    lines.append(f"{'total':<26}{_clock(sum(times.values())):>12}")
    return "\n".join(lines)


REPETITION_ROW = "held-out replies repeating themselves (mean share of word 3-grams said before in the reply)"


def _fmt(x, fmt=".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _win_rate_text(wr) -> str:
    """'0.625 [0.51, 0.73] (95% wilson)': a non-tied A/B win rate with its interval."""
    if wr.win_rate_a is None:
        return "n/a"
    return f"{wr.win_rate_a:.3f} [{wr.ci_low:.3f}, {wr.ci_high:.3f}] ({wr.confidence:.0%} {wr.method})"


def _figure_table(rows) -> str:
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def render_figures(s: LoopSummary) -> str:
    """The run's headline figures as a Markdown table."""
    wr, pb, p = s.ab.win_rate, s.ab.position_bias, s.training
    rows = [
        ("rule", f"`{s.rule}`"),
        ("reward model held-out accuracy", f"{_fmt(s.reward_eval.accuracy)} ({s.reward_eval.pairs or 'n/a'} pairs)"),
        ("held-out reward, base -> aligned", f"{_fmt(s.base.reward_mean)} -> {_fmt(s.aligned.reward_mean)}"),
        *([("held-out replies outside the reward model's support (scored as the worst reviewed reply), base -> "
            "aligned", f"{s.base.outside_text()} -> {s.aligned.outside_text()}")] if s.aligned.outside is not None else []),
        *([(f"{p.name} reward margin (chosen - rejected), last fifth", _fmt(p.margin_last)),
           (f"{p.name} training pairs ordered right, last fifth", _fmt(p.pair_accuracy_last))] if p.algorithm == "dpo" else
          [(f"{p.name} rollout reward, first -> last fifth", f"{_fmt(p.reward_first)} -> {_fmt(p.reward_last)}"),
           ("KL to reference, last fifth (max)", f"{_fmt(p.kl_last)} ({_fmt(p.kl_max)})")]),
        ("mean reply length (tokens), base -> aligned",
         f"{_fmt(s.base.length_mean, '.1f')} -> {_fmt(s.aligned.length_mean, '.1f')}"),
        *([(REPETITION_ROW + ", base -> aligned", f"{_fmt(s.base.repetition)} -> {_fmt(s.aligned.repetition)}")]
          if s.aligned.repetition is not None else []),
        ("mean rule score, base -> aligned", f"{_fmt(s.base.rule_mean)} -> {_fmt(s.aligned.rule_mean)}"),
        ("aligned vs base (wins/losses/ties/both bad)", f"{wr.wins_a}/{wr.wins_b}/{wr.ties}/{wr.both_bad}"),
        ("aligned win rate, non-tied", _win_rate_text(wr)),
        ("aligned win rate, ties 1/2: raw; length-controlled", _length_controlled_text(s)),
        ("position bias: left side won", f"{_fmt(pb.left_share)} (p={_fmt(pb.p_value, '.3g')})"),
    ]
    return _figure_table(rows)


def length_controlled(s: LoopSummary):
    """The A/B win rate with the length difference regressed out (``rlhf.bias.length_controlled_win_rate``),
    or None when the judgements cannot be matched to the held-out replies.

    The A/B set is made from ``eval/aligned.jsonl`` and ``eval/base.jsonl`` line by line, reply j against
    reply j (``feedback_app.ab.pair_replies``), and its items are stored in that order, so item k (the
    k-th smallest item id) holds the k-th reply of each flattened scores file, whose lengths are in tokens.
    """
    from rlhf.bias import length_controlled_win_rate

    judged = s.ab.judgements
    if not judged or len(s.aligned.lengths) != len(s.base.lengths) or s.ab.items != len(s.aligned.lengths):
        return None
    first = min(j.item_id for j in judged)
    if max(j.item_id for j in judged) - first >= s.ab.items:
        return None
    verdict = {"a": "win", "b": "loss", "tie": "tie", "both_bad": "both_bad"}  # aligned is policy A
    ks = [j.item_id - first for j in judged]
    return length_controlled_win_rate([verdict[j.winner] for j in judged], [s.aligned.lengths[k] for k in ks],
                                      [s.base.lengths[k] for k in ks])


def _length_controlled_text(s: LoopSummary) -> str:
    lc = length_controlled(s)
    if lc is None or lc.raw is None:
        return "n/a"
    raw = f"{lc.raw:.3f} [{lc.raw_interval[0]:.3f}, {lc.raw_interval[1]:.3f}]"
    if lc.length_controlled is None:
        return f"raw {raw}; length-controlled n/a ({lc.note})"
    return (f"raw {raw}; length-controlled {lc.length_controlled:.3f} [{lc.lc_interval[0]:.3f}, {lc.lc_interval[1]:.3f}] "
            f"(length coefficient {lc.length_coefficient:+.2f}; > 0: longer replies win)")


def reward_model_lines(run_dir: Path) -> list[str]:
    """The reward model's gate decision, learning curve and bias audit, from ``reward/metrics.json`` and
    ``gate.json`` (``rlhf reward train``) and the loop's own ``gate.json`` (overridden or not)."""
    from rlhf.bias import audit_lines

    metrics_file = run_dir / "reward" / "metrics.json"
    if not metrics_file.is_file():
        return []
    metrics = json.loads(metrics_file.read_text())
    gate = metrics.get("gate") or {}
    lines = ["## Reward model: gate, schedule and bias", "", f"- Gate: {gate.get('summary', 'not recorded')}"]
    loop_gate = run_dir / "gate.json"
    if loop_gate.is_file() and json.loads(loop_gate.read_text()).get("overridden"):
        lines.append("- **The gate was overridden (allow_weak_reward_model): the policy was trained against a reward "
                     "model that did not clear chance on held-out pairs.**")
    schedule = metrics.get("schedule") or {}
    if schedule.get("why"):
        lines.append(f"- {schedule['why'][0].upper()}{schedule['why'][1:]}")
    return [*lines, *audit_lines(metrics.get("bias")), ""]


# ---------------------------------------------------------------------------------------------------
# Files


def _plots(s: LoopSummary, out: Path) -> list[tuple[str, str]]:
    """Training curves, held-out lengths and rewards, win rate with its interval: (title, PNG name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    t = s.training
    curves = [("reward", f"{t.name}: reward of rollouts", "tab:blue"), ("kl", f"{t.name}: KL to the reference", "tab:red")]
    if t.algorithm == "dpo":
        curves = [("reward_margin", "DPO: reward margin, chosen - rejected", "tab:blue"),
                  ("pair_accuracy", "DPO: training pairs ordered right", "tab:green")]
    if t.rows:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, (key, title, colour) in zip(axes, curves):
            points = [(r.get("step", i + 1), r[key]) for i, r in enumerate(t.rows) if r.get(key) is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], color=colour)
            ax.set(title=title, xlabel="update")
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=90)
        plt.close(fig)
        plots.append((f"{t.name} curves", "training_curves.png"))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist([s.base.lengths, s.aligned.lengths], label=["base", "aligned"], bins=12)
    axes[0].set(title="Held-out reply length (tokens)")
    axes[0].legend()
    axes[1].hist([s.base.rewards, s.aligned.rewards], label=["base", "aligned"], bins=12)
    axes[1].set(title="Held-out reward-model score")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "heldout.png", dpi=90)
    plt.close(fig)
    plots.append(("Held-out replies", "heldout.png"))
    wr = s.ab.win_rate
    if wr.win_rate_a is not None:
        fig, ax = plt.subplots(figsize=(5, 2.2))
        ax.errorbar([wr.win_rate_a], [0], xerr=[[wr.win_rate_a - wr.ci_low], [wr.ci_high - wr.win_rate_a]],
                    fmt="o", capsize=6)
        ax.axvline(0.5, color="grey", ls="--")
        ax.set(xlim=(0, 1), yticks=[], title=f"Aligned vs base: win rate ({wr.confidence:.0%} CI, non-tied)")
        fig.tight_layout()
        fig.savefig(out / "win_rate.png", dpi=90)
        plt.close(fig)
        plots.append(("Win rate", "win_rate.png"))
    return plots


def counterfactual_lines(run_dir: Path) -> list[str]:
    """How far each policy's greedy reply moves when a held-out prompt's names, gendered words or dialect
    markers are swapped (``eval/counterfactual/``, ``rlhf.bias.reply_shift``): the original reply swapped
    the same way against the reply to the variant."""
    from rlhf.bias import CounterfactualProbe, reply_shift

    folder = run_dir / "eval" / "counterfactual"
    if not (folder / "probes.json").is_file():
        return []
    probes = [CounterfactualProbe(p["original"], p["variant"], p["category"], tuple(map(tuple, p["swaps"])))
              for p in json.loads((folder / "probes.json").read_text())]
    lines = ["## Counterfactual prompts: does the policy's reply change with the person?", ""]
    if not probes:
        return [*lines, "- No held-out prompt has a name, gendered word or dialect marker to swap.", ""]
    categories = sorted({p.category for p in probes})
    lines.append(f"- {len(probes)} held-out prompts with swapped {', '.join(categories)}; greedy replies to the "
                 "original and the variant; the original reply swapped the same way is compared with the variant's")
    for name in ("base", "aligned"):
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            continue
        replies = [json.loads(line)["replies"][0] for line in path.read_text(encoding="utf-8").splitlines() if line]
        shift = reply_shift(probes, replies[:len(probes)], replies[len(probes):])
        lines.append(f"- {name}: {shift.identical} of {shift.probes} replies unchanged, mean similarity "
                     f"{_fmt(shift.mean_similarity)} (1 = the same), mean length change "
                     f"{_fmt(shift.mean_length_difference, '+.1f')} characters")
    return [*lines, ""]


def guard_lines(run_dir: Path) -> list[str]:
    """PPO's guard (``ppo/guard.json``, ``rlhf ppo --guard-reward-model``): the second reward model's reward
    beside the training reward, and whether the run was stopped and which update was kept, and why."""
    skipped = run_dir / "reward_guard.skipped"  # rlhf.pipeline.GUARD_SKIPPED: the second model could not be trained
    if skipped.is_file():
        return ["## Guard", "", f"- **No second reward model**: {skipped.read_text(encoding='utf-8').strip()}. The "
                "policy trained without the guard's judge, watched by KL, reply length and EOS share only.", ""]
    path = run_dir / "ppo" / "guard.json"
    if not path.is_file():
        return []
    guard = json.loads(path.read_text())
    updates = guard.get("updates") or []
    lines = ["## Guard against reward hacking (PPO)", "",
             "A second reward model, trained on half of the training prompts, scored every update's rollouts "
             "too; the guard stops the run when the training reward rises while the second model's does not.", ""]
    if guard.get("stopped"):
        lines.append(f"- **Stopped at update {guard['stopped_at']}; kept update {guard['kept_update']}** (its policy "
                     f"weights are the exported checkpoint). {guard.get('message') or ''}")
    else:
        lines.append(f"- Not stopped: {len(updates)} updates ran"
                     + (f"; last decision: {updates[-1]['message']}" if updates else ""))
    warned = [u for u in updates if u["action"] == "warn"]
    if warned:
        lines.append(f"- Warnings at updates {', '.join(str(u['step']) for u in warned)}")
    if updates:
        first, last = updates[0], updates[-1]
        lines.append(f"- Training reward {first['reward']:.3f} -> {last['reward']:.3f}; second model's reward "
                     f"{first['held_out_reward']:.3f} -> {last['held_out_reward']:.3f}; KL {last['kl']:.3f}; reply "
                     f"length {first['length']:.1f} -> {last['length']:.1f} tokens; EOS share {first['eos_share']:.0%} "
                     f"-> {last['eos_share']:.0%} (update {first['step']} -> {last['step']})")
    return [*lines, ""]


def write_report(s: LoopSummary, out: Path) -> Path:
    """``REPORT.md`` with its PNG figures, in the run folder ``out``."""
    plots = _plots(s, out)
    lines = [f"# Loop report: rule `{s.rule}` ({s.rule_name})", "",
             f"Run folder `{out}`; commands in `commands.sh`; figures in `summary.json`.", "",
             "## Figures", "", render_figures(s), "", *reward_model_lines(out), *guard_lines(out), *counterfactual_lines(out), "## Stage wall times", "", "```",
             render_stage_table(s.times), "```", ""]
    for title, name in plots:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


CARD_SECTION = "## Judged in the loop (rlhf loop)"


def add_to_model_card(s: LoopSummary, out: Path) -> Path | None:
    """The loop's verdict on the exported policy, in its own model card (``aligned/README.md``): the
    blind A/B win rate against its start, raw and length-controlled, and the counterfactual-prompt
    shift, so whoever ships the checkpoint sees them without the run folder. Written again on resume."""
    card = out / "aligned" / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8").split(f"\n{CARD_SECTION}\n")[0].rstrip("\n")
    wr = s.ab.win_rate
    lines = [CARD_SECTION, "",
             f"Rule `{s.rule}` ({s.rule_name}); blind A/B on held-out prompts against the policy it started from.", "",
             f"- win rate, non-tied: {_win_rate_text(wr)} ({wr.wins_a} wins, {wr.wins_b} losses, {wr.ties} ties, "
             f"{wr.both_bad} both bad)",
             f"- ties 1/2, raw and length-controlled: {_length_controlled_text(s)}",
             f"- mean reply length (tokens), start -> this policy: {_fmt(s.base.length_mean, '.1f')} -> "
             f"{_fmt(s.aligned.length_mean, '.1f')}", ""]
    lines += [line.replace("## Counterfactual prompts", "### Counterfactual prompts", 1)
              for line in counterfactual_lines(out)]
    card.write_text(text + "\n\n" + "\n".join(lines), encoding="utf-8")
    return card


def write_summary(s: LoopSummary, out: Path) -> Path:
    path = out / "summary.json"
    path.write_text(json.dumps(s.to_dict(), indent=2), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# The SFT stage (``rlhf loop --sft``)


@dataclass
class SFTSummary:
    """What the SFT stage changed: held-out loss per reply token before and after (``sft/metrics.json``,
    ``rlhf sft``), the base and SFT models' held-out replies, and the blind A/B of SFT (A) against the base (B)
    (``ab_sft.json``)."""

    loss_before: float | None
    loss_after: float | None
    train_rows: int | None
    heldout_rows: int | None
    base: HeldoutScores
    sft: HeldoutScores
    ab: AbReport  # SFT is policy A, base is B

    @classmethod
    def read(cls, run_dir: Path, base: HeldoutScores, sft: HeldoutScores) -> "SFTSummary":
        metrics = json.loads((run_dir / "sft" / "metrics.json").read_text())
        return cls(metrics.get("heldout_loss_before"), metrics.get("heldout_loss_after"), metrics.get("train_rows"),
                   metrics.get("heldout_rows"), base, sft, AbReport.from_dict(json.loads((run_dir / "ab_sft.json").read_text())))

    def to_dict(self) -> dict[str, Any]:
        ab = self.ab.to_dict()
        return {"heldout_loss_before": self.loss_before, "heldout_loss_after": self.loss_after,
                "train_rows": self.train_rows, "heldout_rows": self.heldout_rows,
                "heldout": {"base": asdict(self.base), "sft": asdict(self.sft)},
                "ab": {k: ab[k] for k in ("win_rate", "position_bias", "items", "open")}}


def render_sft(s: SFTSummary) -> str:
    wr = s.ab.win_rate
    rows = [
        ("demonstrations: training rows, held-out rows", f"{s.train_rows}, {s.heldout_rows}"),
        ("held-out loss per reply token, before -> after SFT", f"{_fmt(s.loss_before, '.4f')} -> {_fmt(s.loss_after, '.4f')}"),
        ("held-out reward, base -> SFT", f"{_fmt(s.base.reward_mean)} -> {_fmt(s.sft.reward_mean)}"),
        *([("held-out replies outside the reward model's support, base -> SFT",
            f"{s.base.outside_text()} -> {s.sft.outside_text()}")] if s.sft.outside is not None else []),
        ("mean reply length (tokens), base -> SFT", f"{_fmt(s.base.length_mean, '.1f')} -> {_fmt(s.sft.length_mean, '.1f')}"),
        *([(REPETITION_ROW + ", base -> SFT", f"{_fmt(s.base.repetition)} -> {_fmt(s.sft.repetition)}")]
          if s.sft.repetition is not None else []),
        ("mean rule score, base -> SFT", f"{_fmt(s.base.rule_mean)} -> {_fmt(s.sft.rule_mean)}"),
        ("SFT vs base (wins/losses/ties/both bad)", f"{wr.wins_a}/{wr.wins_b}/{wr.ties}/{wr.both_bad}"),
        ("SFT win rate, non-tied", _win_rate_text(wr)),
    ]
    return _figure_table(rows)


def add_sft_section(s: SFTSummary, out: Path) -> None:
    """Put the SFT stage's section before the figures of ``REPORT.md`` (whose 'base' is then the SFT model,
    the aligned policy's start and reference) and its figures into ``summary.json`` under ``sft``."""
    report = out / "REPORT.md"
    text = report.read_text(encoding="utf-8")
    section = ("## Supervised fine-tuning (SFT, first stage)\n\n" + render_sft(s) + "\n\n"
               "The SFT model wrote the candidates, was the reward model's base and the policy's start and reference: "
               "in the figures below, **base is the SFT model**, so they compare the aligned model with it.\n\n")
    report.write_text(text.replace("## Figures\n", section + "## Figures\n", 1), encoding="utf-8")
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "sft": s.to_dict()}, indent=2), encoding="utf-8")

"""The aligned checkpoint: one consolidated Hugging Face model directory from a policy training run.

Shared by the policy trainers: it reads the run's resolved ``config.yaml`` as data (the fields every
policy run has, ``PolicyRun``), never a trainer's config class, so it imports no trainer (the PPO
package alone imports ``trl.experimental.ppo``).

``export_run(RUN_DIR, OUT_DIR)`` takes the newest complete checkpoint (or a given one), gathers its
weights (ZeRO shards included, rlhf.checkpoint), rebuilds the policy (LoRA merged, or the adapter
alone), and writes safetensors, tokenizer with chat template, a generation config whose pad and EOS
are the policy's, a model card and PNG plots of reward, KL and reply length. Written into a
temporary folder and renamed, so OUT_DIR is complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from rlhf.checkpoint import latest_checkpoint, policy_weights, read_state
from rlhf.config import read_yaml, validate
from rlhf.errors import UserError
from rlhf.lora import LoraSettings, lora_config
from rlhf.runlog import read_metrics

PLOTTED = (("reward", "reward (centred score)"), ("kl", "KL to reference"), ("response_length", "reply length (tokens)"))
# DPO generates nothing while training: its figures are the pairs' loss and implicit-reward margin.
PLOTTED_DPO = (("loss", "DPO loss"), ("reward_margin", "implicit reward margin (chosen - rejected)"),
               ("pair_accuracy", "pairs ranked as reviewers did"))
ALGORITHMS = {"ppo": "PPO (TRL 1.12 PPOTrainer)", "grpo": "GRPO (TRL 1.12 GRPOTrainer)",
              "rloo": "RLOO (TRL 1.12 RLOOTrainer)", "dpo": "DPO (TRL 1.12 DPOTrainer)",
              "sft": "SFT (TRL 1.12 SFTTrainer; loss on the reply tokens only)"}
FIGURES = {"ppo": ("reward", "kl", "entropy", "value_loss", "response_length", "eos_share"),
           "grpo": ("reward", "kl", "entropy", "loss", "response_length", "eos_share"),
           "rloo": ("reward", "kl", "entropy", "loss", "response_length", "eos_share"),
           "dpo": ("loss", "reward_margin", "pair_accuracy", "entropy"),
           "sft": ("loss", "mean_token_accuracy", "entropy")}
# SFT generates nothing while training either: its figures are the reply tokens' loss and accuracy.
SFT_METRICS = "sft_metrics.json"  # an exported SFT model's metrics.json (held-out loss, differential privacy)
PLOTTED_SFT = (("loss", "SFT loss (per reply token)"), ("mean_token_accuracy", "reply tokens predicted"))


class PolicyRun(BaseModel):
    """What export reads from a policy run's resolved ``config.yaml``; the trainer's other fields are
    ignored (the file is validated in full by the trainer that wrote it)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    policy: str = Field("bundled", description="the policy the run started from")
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(enabled=False))
    reward_model: str | None = None
    prompts_file: str | None = None
    total_updates: int | None = None


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, checkpoint: str | None = None,
               adapter_only: bool = False, dtype: str = "float32") -> Path:
    run_dir, out = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a PPO run directory (no config.yaml)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: already exists and is not empty; choose a new OUT_DIR")
    config = validate(PolicyRun, read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    state = read_state(ckpt)
    if adapter_only and not config.lora.enabled:
        raise UserError(f"{run_dir}: --adapter-only needs a LoRA run; this run fine-tuned the full model")

    model, tokenizer = rebuild_policy(config, ckpt, merge=not adapter_only)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_model(model, tokenizer, tmp, dtype, adapter_only)
        trainer = _run_info(run_dir).get("trainer", "ppo")
        shutil.copy(run_dir / "config.yaml", tmp / f"{trainer}_config.yaml")
        if trainer == "sft" and (run_dir / "metrics.json").is_file():  # read by the cards of policies started here
            shutil.copy(run_dir / "metrics.json", tmp / SFT_METRICS)
        plots = write_plots(run_dir, tmp / "plots")
        (tmp / "README.md").write_text(model_card(config, run_dir, ckpt, state, dtype, adapter_only, plots),
                                       encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def rebuild_policy(config: PolicyRun, checkpoint: Path, merge: bool = True):
    """The trained policy from a checkpoint: a plain causal LM (merged), or a PeftModel (merge=False)."""
    from rlhf.modeling import load_policy, load_tokenizer

    weights, adapter_alone = policy_weights(checkpoint)
    if not weights:
        raise UserError(f"{checkpoint}: checkpoint holds no policy weights")
    model = load_policy(config.policy, dtype="float32")
    if config.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config.lora, "CAUSAL_LM"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}  # tied to the embeddings
    if adapter_alone:  # the base weights are the policy's own, frozen: only the adapter's must all be there
        tied = {k for k in missing if "lora_" not in k}
    if set(missing) - tied or unexpected:
        raise UserError(f"{checkpoint}: weights do not fit the config's policy ({len(set(missing) - tied)} missing, "
                        f"{len(unexpected)} unexpected, e.g. {(sorted(set(missing) - tied) + list(unexpected))[:2]})")
    if config.lora.enabled and merge:
        model = model.merge_and_unload()
    model.eval()
    return model, load_tokenizer(config.policy, padding_side="left")


def _write_model(model, tokenizer, out: Path, dtype: str, adapter_only: bool) -> None:
    import torch
    from transformers import GenerationConfig

    model = model.to(getattr(torch, dtype))
    if adapter_only:
        model.save_pretrained(out, safe_serialization=True)  # adapter_config.json + adapter_model.safetensors
    else:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.bos_token_id = tokenizer.bos_token_id
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=256)
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)  # includes the chat template and the pad token distinct from EOS


# ---------------------------------------------------------------------------------------------------
# Plots and model card


def write_plots(run_dir: Path, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    trainer = _run_info(run_dir).get("trainer")
    for key, label in PLOTTED_DPO if trainer == "dpo" else PLOTTED_SFT if trainer == "sft" else PLOTTED:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_xlabel("update")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{key}.png", dpi=100)
        plt.close(fig)
        written.append(f"plots/{key}.png")
    return written


def _sha256(path: Path) -> str:
    if path.is_dir():
        return "(directory)"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _sample_lines(run_dir: Path) -> list[str]:
    """Greedy replies to the evaluation prompts at the last sampled update, with their scores."""
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    last = [r for r in rows if r["step"] == rows[-1]["step"]] if rows else []
    if not last:
        return []
    mean = sum(r["score"] for r in last) / len(last)
    # DPO has no reward model: its samples carry DPO's implicit reward, beta * log(pi / pi_ref).
    score = {"dpo": "implicit reward", "sft": "word F1 with the held-out demonstration"}.get(
        _run_info(run_dir).get("trainer"), "reward-model score")
    lines = [f"## Sample replies at update {last[0]['step']} (greedy; mean {score} {mean:+.3f})", ""]
    for r in last:
        prompt = r["prompt"].strip().splitlines()[-2] if "\n" in r["prompt"].strip() else r["prompt"].strip()
        lines += [f"- **{prompt[-160:]}** ({r['score']:+.3f}): {r['reply'].strip()[:400]!r}"]
    return lines + [""]


def _run_info(run_dir: Path) -> dict:
    """``run_info.json`` the trainer wrote (``trainer``: ppo, grpo, rloo or dpo; the reward model used)."""
    return json.loads((run_dir / "run_info.json").read_text()) if (run_dir / "run_info.json").is_file() else {}


def _sft_line(run_dir: Path, info: dict) -> str:
    """What an SFT run learned from, and its held-out loss before and after (``metrics.json``)."""
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    loss = lambda key: f"{metrics[key]:.4f}" if isinstance(metrics.get(key), (int, float)) else "n/a"  # noqa: E731
    return (f"- Reward model: none (supervised fine-tuning on demonstrations {', '.join(info.get('data') or [])}: "
            f"{info.get('train_rows', '?')} training rows, {info.get('heldout_rows', '?')} held-out rows (prompt-level "
            f"split), by source {info.get('by_source', {})}); held-out loss per reply token {loss('heldout_loss_before')} "
            f"before, {loss('heldout_loss_after')} after")


def _sft_privacy_line(run_dir: Path) -> str:
    """The SFT run's own differential privacy (``rlhf sft --dp``), from the ``dp`` record of its ``metrics.json``."""
    from rlhf.dp import privacy_text

    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    dp = metrics.get("dp")
    if not dp:
        return ("- Differential privacy: none (trained without --dp; the model may reproduce details of its "
                "demonstrations)")
    base = dp.get("baseline_heldout_loss_after")
    return (f"- Differential privacy: {privacy_text(dp, strong=True)}; trained: the LoRA adapter, by this project's "
            f"DP-SGD loop over TRL's SFT tokenisation and reply-only loss mask"
            + (f"; held-out loss without DP on the same schedule: {base:.4f}" if isinstance(base, (int, float)) else "")
            + "; not covered: the held-out demonstrations (scored, never trained on)")


def _start_privacy_line(base_dir: Path) -> list[str]:
    """A policy started from an exported SFT model: that model's differential privacy (its ``sft_metrics.json``);
    nothing for any other starting model."""
    from rlhf.dp import privacy_text

    if not (base_dir / SFT_METRICS).is_file():
        return []
    dp = json.loads((base_dir / SFT_METRICS).read_text()).get("dp")
    if not dp:
        return ["- Starting policy (SFT) privacy: no differential privacy"]
    return [f"- Starting policy (SFT) privacy: {privacy_text(dp)}; this run's own training is not covered by it"]


def _gate_line(gate: dict) -> str:
    """The reward-model gate as the trainer recorded it (``rlhf.gate.require_gate``)."""
    if gate.get("status") == "not measured":
        return "- Reward model gate: not measured (the reward model has no gate.json)"
    line = f"- Reward model gate: {gate.get('status')}: {gate.get('summary')}"
    if gate.get("overridden"):
        line += (" **Overridden with --allow-weak-reward-model: this policy was trained against a reward model that "
                 "did not clear chance on held-out pairs.**")
    return line


def _privacy_line(reward_model_path: str) -> str:
    """The reward model's differential privacy, from the ``dp`` record of its ``metrics.json``."""
    metrics = Path(reward_model_path) / "metrics.json"
    dp = json.loads(metrics.read_text()).get("dp") if metrics.is_file() else None
    if not dp:
        return "- Reward model privacy: no differential privacy" + ("" if metrics.is_file() else " recorded")
    return (f"- Reward model privacy: DP-SGD, epsilon {dp['epsilon_spent']:.3f} at delta {dp['delta']:.3g} per "
            f"unit ({dp.get('unit', 'unit')}); the policy's own training on prompts is not covered by it")


def model_card(config: PolicyRun, run_dir: Path, checkpoint: Path, state: dict, dtype: str, adapter_only: bool,
               plots: list[str]) -> str:
    from rlhf.modeling import resolve_model_path

    base_dir = Path(resolve_model_path(config.policy))
    source = json.loads((base_dir / "rlhf_source.json").read_text()) if (base_dir / "rlhf_source.json").is_file() else {}
    info = _run_info(run_dir)
    rows = read_metrics(run_dir)
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    trainer = info.get("trainer", "ppo")  # written into run_info.json by the trainer
    prompts = Path(config.prompts_file) if config.prompts_file else None
    manifest = prompts.parent / "manifest.json" if prompts else None
    fig = lambda row, key: f"{row[key]:.4g}" if isinstance(row.get(key), (int, float)) else "n/a"  # noqa: E731
    if trainer == "sft":
        reward_line = _sft_line(run_dir, info) + "\n" + _sft_privacy_line(run_dir)
    elif trainer == "dpo":
        reward_line = (f"- Reward model: none (DPO learns from the reviewers' pairs directly); preference data "
                       f"`{info.get('data')}`: {info.get('train_pairs', '?')} training pairs, "
                       f"{info.get('heldout_pairs', '?')} held-out pairs (prompt-level split)")
    else:
        reward_line = (f"- Reward model: `{info.get('reward_model_path', config.reward_model)}`; reward stats used for "
                       f"centring: {info.get('reward_stats')}")
    lines = [
        "---", f"license: {source.get('license', 'unknown')}", f"base_model: {source.get('base_model', config.policy)}",
        f"tags: [rlhf, {trainer}, trl]", "---", "",
        f"# {'SFT policy (supervised fine-tuning)' if trainer == 'sft' else trainer.upper() + '-aligned policy'} "
        f"({'LoRA adapter' if adapter_only else 'merged' if config.lora.enabled else 'full fine-tune'})",
        "",
        f"- Base model: `{source.get('base_model', config.policy)}` (licence {source.get('license', 'unknown')})"
        + (f", from `{source['source']}`" if source.get("source") else ""),
        f"- Algorithm: {ALGORITHMS.get(trainer, trainer)}",
        reward_line,
        *([_gate_line(info["reward_gate"])] if info.get("reward_gate") else []),
        *([_privacy_line(info["reward_model_path"])] if trainer != "dpo" and info.get("reward_model_path") else []),
        *_start_privacy_line(base_dir),
        *([f"- Prompts: `{prompts}` (sha256 {_sha256(prompts) if prompts.exists() else 'missing'}, "
           f"{info.get('num_prompts', '?')} usable)" + (f"; manifest `{manifest}`" if manifest.is_file() else "")]
          if prompts else []),
        f"- Checkpoint: `{checkpoint.name}` (update {state.get('step')} of {config.total_updates}, "
        f"{state.get('world_size', 1)} process(es), ZeRO stage {state.get('zero_stage', 0)})",
        f"- Weights dtype: {dtype}", "",
        "## Training figures", "",
        "| metric | first update | last update |", "|---|---|---|",
        *[f"| {k} | {fig(first, k)} | {fig(last, k)} |" for k in FIGURES.get(trainer, FIGURES["ppo"])],
        "", *[f"![{p}]({p})" for p in plots], "",
        *_sample_lines(run_dir),
        "## Config", "", "```yaml", (run_dir / "config.yaml").read_text(encoding="utf-8").rstrip(), "```", "",
        "Load with `AutoModelForCausalLM.from_pretrained(DIR)`; the tokenizer pads with a token distinct from EOS.",
    ]
    return "\n".join(lines) + "\n"

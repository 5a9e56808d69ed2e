"""Checkpoints, two kinds kept apart.

* Training state, for resume: everything needed to continue exactly (policy or adapter, value
  model, optimizer, scheduler, every process's random states, the data position), written by
  ``accelerator.save_state`` so that under ZeRO each process writes its own shard. A checkpoint
  is written into ``checkpoints/.tmp-step-N`` and renamed to ``checkpoints/step-N`` only when every
  process has finished and ``rlhf_state.json`` is in place: a SIGKILL mid-write leaves the previous
  checkpoint as the newest complete one.
* The consolidated policy weights of a checkpoint (``consolidated_state_dict``), gathered from
  ZeRO shards where needed, which ``rlhf.export`` turns into one Hugging Face model directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rlhf.errors import UserError

CHECKPOINTS = "checkpoints"
STATE_FILE = "rlhf_state.json"  # written last, before the rename: its presence marks a complete checkpoint
_PREFIX = "step-"
_TMP = ".tmp-"


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{_PREFIX}{step:06d}"


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and unmarked folders are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def describe_launch(world_size: int, stage: int) -> str:
    """``(2, 3)`` -> "2 processes under DeepSpeed ZeRO-3"; ``(1, 0)`` -> "1 process"."""
    processes = f"{world_size} process" + ("es" if world_size != 1 else "")
    return processes + (f" under DeepSpeed ZeRO-{stage}" if stage else " (DDP)" if world_size > 1 else "")


def read_state(checkpoint: str | os.PathLike, fingerprint: str | None = None,
               launch: tuple[int, int] | None = None) -> dict:
    """The metadata of a complete checkpoint; a clear UserError for a missing, partial or foreign one.

    ``launch``: this launch's ``(world_size, zero_stage)``. A checkpoint resumes only under the launch that
    wrote it: under ZeRO the optimizer state is one shard per process (the Trainer finds no ``optimizer.pt``
    elsewhere and silently starts AdamW afresh), every process restores its own random state, and the
    batch per update and each process's share of the data depend on the number of processes. Resuming a
    2-process ZeRO-3 DPO checkpoint in one process finished and ended 2.4e-3 away from the uninterrupted
    run (the tolerance is 1e-4), so it is refused before any model loads.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint not found")
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise UserError(f"{path}: incomplete checkpoint (no {STATE_FILE}; the run was stopped while writing it); "
                        f"resume from an earlier one")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{state_file}:{exc.lineno}: corrupt checkpoint metadata: {exc.msg}") from None
    if fingerprint is not None and state.get("config_fingerprint") != fingerprint:
        raise UserError(f"{path}: checkpoint comes from another config (fingerprint {state.get('config_fingerprint')} "
                        f"!= {fingerprint}); resume with the run's own config.yaml or start a new output_dir")
    saved = (state.get("world_size"), state.get("zero_stage"))
    if launch is not None and None not in saved and tuple(saved) != tuple(launch):  # older checkpoints lack them
        raise UserError(f"{path}: written by {describe_launch(*saved)}, but this launch is {describe_launch(*launch)}; "
                        f"resume under the launch that wrote it (same accelerate config and --num_processes), or "
                        f"'rlhf export' it and start a new run from the exported model")
    return state


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    found = complete_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir}: no complete checkpoint to resume from (looked in {Path(run_dir) / CHECKPOINTS})")
    return found[-1]


# ---------------------------------------------------------------------------------------------------
# Training state (all processes call these together)


def save_training_state(accelerator, run_dir: str | os.PathLike, step: int, meta: dict, keep: int) -> Path:
    """Write the training state of update ``step`` atomically; prune to the ``keep`` newest."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f"{_TMP}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-write
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Pickled rather than safetensors: tied embeddings share storage, which safetensors refuses.
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_checkpoint(tmp, run_dir, step, meta, keep)
    accelerator.wait_for_everyone()
    return final


def publish_checkpoint(written: Path, run_dir: str | os.PathLike, step: int, meta: dict, keep: int) -> Path:
    """Make a fully written checkpoint folder the complete ``step-N`` one (main process, after every
    process has written its part): metadata last, files flushed, one atomic rename, oldest pruned.

    Also used for the checkpoints Transformers' Trainer writes for the GRPO, RLOO and DPO runs.
    """
    final = checkpoint_dir(run_dir, step)
    (written / STATE_FILE).write_text(json.dumps({**meta, "step": step}, indent=2), encoding="utf-8")
    _fsync_tree(written)
    if final.exists():
        shutil.rmtree(final)
    os.replace(written, final)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(path: Path) -> None:
    """Flush every file before the rename, so a crash cannot leave a renamed but empty checkpoint."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def load_training_state(accelerator, checkpoint: Path) -> None:
    accelerator.load_state(str(checkpoint))


# ---------------------------------------------------------------------------------------------------
# Consolidated weights for export


def consolidated_state_dict(checkpoint: str | os.PathLike) -> dict:
    """All weights of the trained wrapper (``policy.*``, ``value_model.*``) as one full state dict.

    DeepSpeed checkpoints (one shard per process) are gathered with DeepSpeed's own
    ``zero_to_fp32``, offline and in one process; DDP and single-process ones are a single file.
    """
    import torch

    path = Path(checkpoint)
    if (path / "pytorch_model").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(path), tag="pytorch_model"))
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(path / "model.safetensors")
    raise UserError(f"{path}: checkpoint holds no model weights (pytorch_model.bin, model.safetensors or "
                    f"a DeepSpeed pytorch_model/ folder)")


def policy_weights(checkpoint: str | os.PathLike) -> tuple[dict, bool]:
    """The policy's weights in a checkpoint of any policy trainer, keyed as the policy's (peft-wrapped,
    adapter ``default``) state dict, and whether they are the adapter alone.

    * PPO (``accelerator.save_state``): the wrapper's ``policy.*`` weights, every one of them.
    * GRPO, RLOO, DPO (Transformers' Trainer layout, ``trainer_state.json``): ``adapter_model.safetensors``
      (the LoRA adapter alone, keys without the adapter's name) or ``model.safetensors`` (full model).
    """
    path = Path(checkpoint)
    if not (path / "trainer_state.json").is_file():
        return policy_state_dict(consolidated_state_dict(path)), False
    from safetensors.torch import load_file

    if (path / "adapter_model.safetensors").is_file():
        adapter = load_file(path / "adapter_model.safetensors")
        return {_with_adapter_name(k): v for k, v in adapter.items()}, True
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors"), False
    raise UserError(f"{path}: checkpoint holds no policy weights (adapter_model.safetensors or model.safetensors)")


def _with_adapter_name(key: str) -> str:
    """peft saves ``...q_proj.lora_A.weight``; the live model holds ``...q_proj.lora_A.default.weight``."""
    for part in (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B."):
        if part in key:
            head, tail = key.split(part, 1)
            return f"{head}{part}default.{tail}"
    return key


def policy_state_dict(state: dict) -> dict:
    """The policy's part of the wrapper's state dict, with the ``policy.`` prefix removed."""
    prefix = "policy."
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-wrapped keys
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

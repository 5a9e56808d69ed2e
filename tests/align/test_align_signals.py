"""SIGTERM and SIGKILL on a GRPO run (the resume machinery is the same for RLOO and DPO: rlhf/align/trainer.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.align.conftest import align_args
from tests.conftest import REPO, run_cli


def _start(args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlhf.cli", *args], cwd=REPO, **kwargs)


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, tiny_model_dir, tiny_reward_dir):
    out = tmp_path / "term"
    args = align_args("grpo", tiny_model_dir, out, tiny_reward_dir, None, "--save-every", "100",
                      "--total-updates", "50", "--num-eval-prompts", "0")
    proc = _start(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    saved = [p.name for p in (out / "checkpoints").iterdir()]
    assert len(saved) == 1 and saved[0].startswith("step-") and saved[0] != "step-000050"
    assert "continue with --resume" in err


def test_sigkill_while_writing_a_checkpoint_leaves_a_resumable_run(tmp_path, tiny_model_dir, tiny_reward_dir):
    out = tmp_path / "killed"
    args = align_args("grpo", tiny_model_dir, out, tiny_reward_dir, None, "--save-every", "1", "--total-updates",
                      "6", "--num-eval-prompts", "0")
    proc = _start(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = out / "checkpoints"
    killed_mid_write = False
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        # Kill while the Trainer writes checkpoint-N, after an earlier one was published as step-M.
        names = [p.name for p in ckpts.iterdir()] if ckpts.is_dir() else []
        if any(n.startswith("step-") for n in names) and any(n.startswith("checkpoint-") for n in names):
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_write = True
            break
        time.sleep(0.001)
    proc.wait()
    assert killed_mid_write, "the run finished before a checkpoint write could be interrupted"
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "update 6/6" in resumed.stderr
    assert (ckpts / "step-000006" / "rlhf_state.json").is_file()
    assert not [p for p in ckpts.iterdir() if p.name.startswith("checkpoint-")]

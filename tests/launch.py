"""Launch real multi-process runs from tests: accelerate (DDP, DeepSpeed) and two loopback "nodes".

Every launch goes through the real ``accelerate launch`` command line with a config from
``configs/accelerate/``, exactly as the README tells users, on a free port so tests never collide.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rlhf.runtime import free_port

REPO = Path(__file__).resolve().parents[1]


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    # Two processes on two cores: one thread each, or they slow each other down several times.
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def accelerate_launch(config: str, args: list[str], num_processes: int = 2, timeout: int = 900,
                      env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file configs/accelerate/<config> <args>`` on a free port.

    ``args`` is what follows the launcher: a script path, or ``-m module ...``.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / config), "--num_processes", str(num_processes),
           "--main_process_port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=cwd or REPO, env=_env(env), capture_output=True, text=True, timeout=timeout)


def launch_two_nodes(config: str, args: list[str], timeout: int = 900, env: dict | None = None,
                     cwd: Path | None = None) -> list[subprocess.CompletedProcess]:
    """The multi-node path for real: two single-process "machines" on 127.0.0.1 (ranks 0 and 1)."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / config), "--num_machines", "2", "--num_processes", "2",
               "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port, *args]
        procs.append(subprocess.Popen(cmd, cwd=cwd or REPO, env=_env(env), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    results = []
    for cmd_proc in procs:
        try:
            out, err = cmd_proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # One node died and the other waits for it: kill both, report what each printed.
            for p in procs:
                _kill_tree(p)
            out, err = cmd_proc.communicate()
            err += f"\n[timed out after {timeout} s]"
        results.append(subprocess.CompletedProcess(cmd_proc.args, cmd_proc.returncode, out, err))
    return results


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill a launcher and its workers (the launcher alone may ignore SIGTERM while waiting)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()

"""How a worker started by ``accelerate launch`` ends: exit code, output and exit hooks kept.

``python -m rlhf.cli`` and ``python -m reward.train`` in a multi-process launch leave through
``rlhf.runtime.exit_launched_worker`` (``os._exit`` after the Python-level exit steps) so a finished
run cannot abort in native teardown.
These run the real entry point in a subprocess with WORLD_SIZE=2, as the launcher sets it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], world_size: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORLD_SIZE": world_size}
    env.pop("PYTHONUNBUFFERED", None)  # output into a pipe is block-buffered: the exit must flush it
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_exit_keeps_code_output_threads_and_atexit_hooks(tmp_path):
    marker = tmp_path / "marks.txt"
    script = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from rlhf.runtime import exit_launched_worker
        log = open({str(marker)!r}, "a")
        atexit.register(lambda: (log.write("atexit\\n"), log.flush()))
        def late():
            time.sleep(0.5)
            log.write("thread\\n"); log.flush()
        threading.Thread(target=late).start()
        print("out-without-newline", end="")
        print("err-line", file=sys.stderr)
        exit_launched_worker(3)
        print("never reached")
    """)
    result = _run(["-c", script], "2", tmp_path)
    assert result.returncode == 3
    assert result.stdout == "out-without-newline"
    assert result.stderr == "err-line\n"
    # The non-daemon thread is waited for before the exit hooks run, as at a normal interpreter exit.
    assert marker.read_text() == "thread\natexit\n"


def test_user_error_in_a_launched_worker_is_one_line_and_exit_2(tmp_path):
    # Both modules the README launches: the rlhf command and the reward model's trainer.
    commands = [(["-m", "rlhf.cli", "export", str(tmp_path / "nope"), str(tmp_path / "x")], "not a PPO run directory"),
                (["-m", "reward.train", "--config", str(tmp_path / "none.yaml")], "config file not found")]
    for args, message in commands:
        for world_size in ("2", "1"):
            result = _run(args, world_size, tmp_path)
            assert result.returncode == 2, (args, world_size, result.stderr[-2000:])
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines

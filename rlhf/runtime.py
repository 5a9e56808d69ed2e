"""Process-wide settings every entry point applies first, and which process may log and write."""

from __future__ import annotations

import os
from typing import NoReturn

# No process of this project reaches a model hub or sends telemetry: these machines are offline,
# and a reviewer's data should never leave the host by accident.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DISABLE_VERSION_CHECK": "1",
}


def apply_offline_env() -> None:
    """Set the offline/telemetry variables unless the user already set them.

    Also points DeepSpeed's JIT-compiled extensions at the cache, so its first-run compile (about
    75 s on these machines) happens once per machine, not once per run.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(cache_home(), "torch_extensions"))
    _destroy_process_group_at_exit()


_exit_hook_registered = False


def _destroy_process_group_at_exit() -> None:
    """Tear down torch.distributed before the interpreter exits.

    Without it a gloo worker can abort at exit ("terminate called without an active exception");
    under a multi-node launch the other node's launcher then waits minutes in its exit barrier.
    Seen here with two loopback "nodes" in about one run in six.
    """
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    _exit_hook_registered = True
    import atexit
    import sys

    def _teardown() -> None:
        dist = sys.modules.get("torch.distributed")  # never import torch just for this
        if dist is not None and dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass

    atexit.register(_teardown)


def exit_launched_worker(code: int) -> NoReturn:
    """End a process started by ``accelerate launch`` with ``code``, skipping interpreter finalisation.

    The atexit teardown above is not enough. In two-process launches (reward training under DDP, GRPO
    under ZeRO-3) the gloo threads (pt_gloo_runloop, gloo_tcp_loop) still run after
    destroy_process_group, because objects of the finished run still hold the groups. A native
    thread that needs the GIL once the interpreter has begun finalising is ended by CPython 3.11
    with pthread_exit, and when
    that unwinds through a C++ noexcept destructor the C++ runtime aborts: "terminate called without
    an active exception" (pytorch/pytorch issue 38228; CPython 3.14 parks such threads instead). In
    about one launch in 25 rank 0 printed exactly that after the command had finished and its
    checkpoint was written, and died with SIGABRT, so the launcher exited 1. So this does what
    exit does at the Python level, in CPython's order (wait for non-daemon threads, run the atexit
    callbacks: the process-group teardown, logging's flush), flushes stdout/stderr, and leaves with
    ``os._exit``, which skips the interpreter's and the C++ runtime's destructors. Only through
    ``run_entry_point``: never from code that others call, such as tests calling main().
    """
    import atexit
    import sys
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe must not turn a success into a crash
            pass
    os._exit(code)


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE`` set by torchrun/accelerate); 1 when alone."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_launched_worker() -> bool:
    """True in a process that ``accelerate launch`` (or torchrun) started as one of several."""
    return world_size() > 1


FAILED_WORKER_GRACE_S = 30.0


def run_entry_point(main) -> NoReturn:
    """``if __name__ == "__main__": run_entry_point(main)`` for every module ``accelerate launch`` runs.

    ``main()`` returns the exit code; a launched worker then leaves through ``exit_launched_worker``
    (why: see there), any other process through ``sys.exit``. Never inside main(), which tests call.
    """
    import sys

    code = main()
    # Only a finished run skips finalisation (the abort only ever hit finished runs).
    if code == 0 and is_launched_worker():
        exit_launched_worker(code)
    # A failing rank other than 0 (every rank reads the same config and data, and only rank 0 says what
    # is wrong) waits for the launcher to stop it: had it exited first, the launcher would have killed
    # rank 0 before it printed the one error line (a ZeRO-3 refusal lost its message that way in CI,
    # twice, the second time with the worker leaving through sys.exit's slower teardown). When rank 0
    # exits, the launcher ends this process; if rank 0 has not failed, this one leaves after the grace.
    if code != 0 and is_launched_worker() and not is_main_process():
        import time

        time.sleep(FAILED_WORKER_GRACE_S)
    sys.exit(code)


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it back to the
    system (``mallopt``); False where the C library has no ``mallopt`` (musl, macOS) or refuses.

    By default glibc serves a block of more than 128 KB to 32 MB with a fresh ``mmap`` and returns it on
    ``free``, and trims the heap's free top: every large tensor a loop allocates again costs a page fault
    per 4 KB page and the kernel zeroing it. Packing the bundled model's LoRA policy for one rollout batch
    faulted 55,000 times (215 MB) and took 118 ms; with blocks up to ``mmap_threshold`` taken from the heap
    and up to ``trim_threshold`` of free heap kept, 4 faults and 74 ms. TRL's reference PPO set-up ran
    1.14x faster with it, its backward pass 1.36x (``bench/ppo_bench.py``, variant ``malloc_keep``). The
    process's resident memory then stays near its high-water mark instead of falling back between
    updates; the peak itself does not grow. Every command calls it first (``apply_memory_setting``)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def apply_memory_setting() -> None:
    """What every command's entry point (``rlhf``, and ``python -m reward.train`` under ``accelerate
    launch``) calls first: ``keep_freed_memory()`` unless ``RLHF_KEEP_FREED_MEMORY=0``."""
    if os.environ.get("RLHF_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()


def cache_home() -> str:
    """Where converted models and compiled extensions are cached (``$RLHF_HOME`` or ~/.cache/rlhf)."""
    return os.environ.get("RLHF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "rlhf")


def process_rank() -> int:
    """Global rank of this process under torchrun/accelerate/deepspeed; 0 when alone."""
    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def is_main_process() -> bool:
    """Only the main process logs and writes shared files; the others stay quiet."""
    return process_rank() == 0


def zero_stage() -> int:
    """The DeepSpeed ZeRO stage of this launch; 0 when not launched with DeepSpeed.

    Asked of accelerate's own ``DeepSpeedPlugin``, which reads the variables ``accelerate launch``
    sets and resolves them as the trainers' Accelerator will: the DeepSpeed JSON's stage when a
    config file is given, else ``--zero_stage``, else accelerate's default. Reading the variables
    by hand gave 0 where accelerate ran stage 2 (DeepSpeed without a stage or file).
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return 0
    from accelerate.utils import DeepSpeedPlugin

    try:
        return int(DeepSpeedPlugin().zero_stage)
    except Exception:  # a config file accelerate cannot read: the trainer will say what is wrong with it
        return 0


# ---------------------------------------------------------------------------------------------------
# Local servers: the loop, the tests and the benchmarks start the app in a subprocess and wait for it.


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (the OS picks it; another process may take it later)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerNotUp(RuntimeError):
    """The server process exited, or did not answer in time; the message says which."""


def wait_for_http(url: str, process=None, timeout: float = 120.0, require_ok: bool = True) -> None:
    """Poll ``url`` until it answers (with 200 when ``require_ok``, else with any status).

    ``process`` (a ``subprocess.Popen``) is the server: if it exits first, waiting stops at once.
    Raises ``ServerNotUp``; callers turn it into their own error (``UserError``, a test failure).
    """
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerNotUp(f"the server exited with status {process.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=5).status_code == 200 or not require_ok:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise ServerNotUp(f"{url} did not answer within {timeout:g} s")

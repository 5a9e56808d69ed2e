"""rlhf.runtime.keep_freed_memory: a tensor allocated again after being freed reuses the memory instead of
faulting fresh pages in (each process is new, so malloc's state is its own)."""

import subprocess
import sys

SCRIPT = r"""
import resource, sys
import torch
from rlhf.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def round():  # eight 16 MB tensors alive at once (4,096 pages each), as a model's packed weights are
    tensors = [torch.empty(4 << 20).fill_(1.0) for _ in range(8)]
    del tensors
for _ in range(2):  # glibc raises its mmap threshold after the first free: measure the steady state
    round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_freed_tensors_are_reused_without_page_faults():
    plain, kept = _faults("plain"), _faults("keep")
    # without it rounds fault their memory in again (measured 37,000 to 330,000 pages over ten rounds):
    # glibc's first free raises its mmap threshold to the block's size, so the blocks come from the heap,
    # but it trims the heap's free top beyond twice that size
    assert plain > 20_000, plain
    # with it the blocks come back from the heap already mapped (measured 0 to 4,096: at most one block)
    assert kept <= 4096 + 100, (kept, plain)

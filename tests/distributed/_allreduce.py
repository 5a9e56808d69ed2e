"""Smallest real multi-process job: every rank contributes its rank; rank 0 checks the sum."""

import torch
from accelerate import Accelerator

# cpu=True on a machine without GPUs: accelerate then forms a gloo group over the launched processes.
accelerator = Accelerator(cpu=not torch.cuda.is_available())
value = torch.tensor([float(accelerator.process_index + 1)])
total = accelerator.reduce(value, reduction="sum")
expected = accelerator.num_processes * (accelerator.num_processes + 1) / 2
assert total.item() == expected, (total.item(), expected)
if accelerator.is_main_process:
    print(f"ALLREDUCE OK processes={accelerator.num_processes} backend={accelerator.state.backend}")
# Tear the process group down before exit: without it a gloo worker can abort at interpreter exit
# ("terminate called without an active exception"), and the other node's launcher then waits in its
# exit barrier for minutes.
accelerator.end_training()

"""The per-update log of a policy training run, ``RUN_DIR/metrics.jsonl``: one JSON object per
update, ``{"step": N, "reward": ..., "kl": ..., ...}``, written by the trainer's main process and
read by export (plots, model card) and the loop's report. ``MetricsWriter`` writes it (with the
sample replies and TensorBoard) for every policy trainer; it imports torch's TensorBoard writer only
when built, so reading stays standard library only."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of ``metrics.jsonl`` in step order; on a resumed run the last row per step wins."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


class MetricsWriter:
    """``metrics.jsonl`` + ``samples.jsonl`` + TensorBoard under the run directory (main process only).

    ``scope`` prefixes the TensorBoard tags of plain metric names (``ppo/reward``, ``grpo/kl``); names
    that already hold a ``/`` keep it.
    """

    def __init__(self, run_dir: str | Path, scope: str = "ppo"):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.scope = scope
        self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log_update(self, step: int, metrics: dict) -> None:
        row = {"step": step, **metrics}
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(key if "/" in key else f"{self.scope}/{key}", value, step)
        self.tb.flush()

    def log_samples(self, step: int, samples: list[dict]) -> None:
        with open(self.run_dir / "samples.jsonl", "a", encoding="utf-8") as handle:
            for sample in samples:
                handle.write(json.dumps({"step": step, **sample}, ensure_ascii=False) + "\n")
        table = "| prompt | reply | score |\n|---|---|---|\n" + "\n".join(
            f"| {s['prompt'][-200:]!r} | {s['reply']!r} | {s['score']:.3f} |" for s in samples)
        self.tb.add_text("samples", table, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()

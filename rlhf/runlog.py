"""The per-update log of a policy training run, ``RUN_DIR/metrics.jsonl``: one JSON object per
update, ``{"step": N, "reward": ..., "kl": ..., ...}``, written by the trainer's main process and
read by export (plots, model card) and the loop's report. Standard library only."""

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

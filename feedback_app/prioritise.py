"""``rlhf app prioritise``: hand reviewers first the items whose replies the reward model is least sure about.

The project's rankings so far (every reviewer's, gold and flagged items left out, as an export leaves
them) and the items still open (a slot without a ranking) go to ``rlhf reward prioritise`` in two
files, in a private temporary folder; it fits an ensemble of linear probes on the frozen policy's
mean-pooled last layer (the default reward model's features) and scores each open item by the
information its ranking would bring: how much the members disagree on its pairs of replies (BALD, in
nats, 0 to log 2; reward/active.py). The scores come back as the items' priorities: the store hands out
higher priority first and, at equal priority, oldest first (``store._Hot.pick``); items never scored
keep priority 0, and ``--clear`` sets every item back to 0.

Run it after a first batch of rankings (at least ``PRIORITY_MIN_RANKINGS`` with a pair), and again
whenever a few dozen more have come in. What it gains is measured in ``bench/active_bench.py`` (README
"Rankings where they teach most").
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from feedback_app.models import Assignment, GoldItem, Item
from feedback_app.store import Store
from rlhf.errors import UserError
from rlhf.schema import PRIORITY_MEMBERS, PRIORITY_MIN_PROMPTS, PRIORITY_MIN_RANKINGS, Ranking, prompt_key


@dataclass
class Prioritised:
    rankings: int  # rankings the ensemble learned from
    prompts: int
    members: int
    l2: float
    priorities: dict[int, float] = field(default_factory=dict)  # open item id -> information (nats)
    seconds: float = 0.0

    def summary(self) -> str:
        values = sorted(self.priorities.values(), reverse=True)
        top = sorted(self.priorities, key=lambda i: (-self.priorities[i], i))[:5]
        settled = sum(v < 1e-3 for v in values)
        return (f"prioritised {len(values)} open items by what their ranking would teach an ensemble of "
                f"{self.members} probes fitted to {self.rankings} rankings of {self.prompts} prompts (L2 {self.l2:g}): "
                f"information {values[0]:.3f} to {values[-1]:.3f} nats (median {values[len(values) // 2]:.3f}), "
                f"{settled} items settled (< 0.001, handed out last); first out: items "
                f"{', '.join(map(str, top))} ({self.seconds:.0f} s)")


def open_items(store: Store) -> list[tuple[int, Ranking]]:
    """Items with a slot no reviewer holds or filled (not gold), as ``(item id, Ranking)`` with every
    reply at rank 1: the rows the ensemble scores."""
    with store.sessions() as s:
        filled = (select(func.count(Assignment.id)).where(Assignment.item_id == Item.id, Assignment.slot.is_not(None))
                  .correlate(Item).scalar_subquery())
        query = (select(Item).where(Item.project_id == store.project.id, Item.id.not_in(select(GoldItem.item_id)),
                                    filled < store.project.reviewers_per_item).order_by(Item.id))
        return [(item.id, Ranking(item.prompt_row.prompt, [c.text for c in item.candidates],
                                  [1] * len(item.candidates)))
                for item in s.scalars(query)]


def prioritise_inputs(store: Store, members: int | None = None) -> tuple[list[dict], list[dict]]:
    """K-wise rows of the rankings to learn from and ``{item_id, prompt, completions}`` rows of the open
    items; a ``UserError`` (one line) when there are too few of either or ``members`` is below 2, before
    any model is loaded."""
    from feedback_app.export import ExportFilters, load_rankings

    if members is not None and members < 2:
        raise UserError(f"members: an ensemble needs at least 2 probes (got {members})")
    rows = [row.to_row() for r in load_rankings(store, ExportFilters()) if r.pairs() and (row := r.kwise()) is not None]
    prompts = {prompt_key(r["prompt"]) for r in rows}
    if len(rows) < PRIORITY_MIN_RANKINGS or len(prompts) < PRIORITY_MIN_PROMPTS:
        raise UserError(f"prioritise: {len(rows)} rankings with two distinct ranks over {len(prompts)} prompts; "
                        f"at least {PRIORITY_MIN_RANKINGS} over {PRIORITY_MIN_PROMPTS} prompts are needed before the "
                        f"reward model's uncertainty means anything (items go out oldest first until then)")
    todo = [{"item_id": item_id, **{k: v for k, v in r.kwise(include_flagged=True).to_row().items()
                                    if k in ("prompt", "completions")}} for item_id, r in open_items(store)]
    if not todo:
        raise UserError("prioritise: no open item (every item has its rankings); import or generate more first")
    return rows, todo


def prioritise(store: Store, model: str | None = None, members: int | None = None, seed: int = 0,
               inputs: tuple[list[dict], list[dict]] | None = None) -> Prioritised:
    """Score the open items with ``rlhf reward prioritise``, store their priorities (audited), return
    what was done. Refusals are ``UserError``s: this one's before any model is loaded, the command's
    (its one ``error:`` line) after. ``inputs``: ``prioritise_inputs``' result, when already read."""
    start = time.perf_counter()
    rows, todo = inputs or prioritise_inputs(store, members)
    members = members or PRIORITY_MEMBERS
    with tempfile.TemporaryDirectory(prefix="rlhf-prioritise-") as tmp:  # 0700: the texts are customers' words
        folder = Path(tmp)
        for name, data in (("rankings.jsonl", rows), ("items.jsonl", todo)):
            (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
        command = [sys.executable, "-m", "rlhf.cli", "reward", "prioritise", "--rankings", str(folder / "rankings.jsonl"),
                   "--items", str(folder / "items.jsonl"), "--output", str(folder / "priorities.json"),
                   "--model", str(model or "bundled"), "--members", str(members), "--seed", str(seed)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            error = next((line for line in reversed(lines) if line.startswith("error: ")), None)
            raise UserError(error.removeprefix("error: ") if error else
                            f"rlhf reward prioritise failed (exit {done.returncode}): {lines[-1] if lines else ''}")
        out = json.loads((folder / "priorities.json").read_text(encoding="utf-8"))
    priorities = {int(k): float(v) for k, v in out["priorities"].items()}
    store.set_priorities(priorities, action="prioritise",
                         detail={"items": len(priorities), "rankings": out["rankings"], "members": members,
                                 "model": str(model or "bundled"), "l2": out["l2"]})
    return Prioritised(out["rankings"], out["prompts"], members, out["l2"], priorities, time.perf_counter() - start)


def clear_priorities(store: Store) -> int:
    """Every item of the project back to priority 0 (oldest first); returns how many had another."""
    with store.sessions() as s:
        ids = list(s.scalars(select(Item.id).where(Item.project_id == store.project.id, Item.priority != 0)))
    store.set_priorities({i: 0.0 for i in ids}, action="prioritise cleared", detail={"items": len(ids)})
    return len(ids)

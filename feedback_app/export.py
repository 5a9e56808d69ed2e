"""Rankings -> TRL preference datasets (the layout in ``rlhf/schema.py``) and the PPO prompt file.

The pair and K-wise conversions are ``rlhf.schema.Ranking.pairs()`` / ``.kwise()`` (tested there);
this module only selects rankings, decides the format and the split, and writes the files.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import select

from feedback_app.models import Flag, Item, PromptRow, RankingRow, User
from feedback_app.store import Store
from rlhf.errors import UserError
from rlhf.schema import (EXPORT_KWISE, EXPORT_MANIFEST, EXPORT_PAIRWISE, Ranking, as_messages, is_conversational,
                         prompt_split)

SOURCES = ("all", "human", "simulated")


@dataclass
class ExportFilters:
    reviewers: list[str] | None = None  # usernames; None = everyone
    rounds: list[int] | None = None  # generation rounds; None = all
    source: str = "all"  # all | human | simulated
    include_flagged: bool = False  # keep flagged replies and flagged items

    def __post_init__(self):
        if self.source not in SOURCES:
            raise UserError(f"source: must be one of {', '.join(SOURCES)} (got {self.source!r})")


def load_rankings(store: Store, filters: ExportFilters) -> list[Ranking]:
    """The project's rankings that pass ``filters``, as ``rlhf.schema.Ranking`` records.

    A reply flagged by anyone goes into ``Ranking.flagged`` (left out of pairs unless asked); a
    ranking of an item flagged as a whole is left out unless ``include_flagged``.
    """
    with store.sessions() as s:
        query = (select(RankingRow).join(Item, RankingRow.item_id == Item.id).join(User, RankingRow.user_id == User.id)
                 .where(Item.project_id == store.project.id).order_by(RankingRow.id))
        if filters.reviewers is not None:
            query = query.where(User.username.in_(filters.reviewers))
        if filters.rounds is not None:
            query = query.where(Item.round.in_(filters.rounds))
        if filters.source != "all":
            query = query.where(RankingRow.simulated.is_(filters.source == "simulated"))
        rows = list(s.scalars(query))
        flagged_candidates: dict[int, set[int]] = defaultdict(set)
        flagged_items: set[int] = set()
        for item_id, candidate_id in s.execute(select(Flag.item_id, Flag.candidate_id)):
            if candidate_id is None:
                flagged_items.add(item_id)
            else:
                flagged_candidates[item_id].add(candidate_id)
        rankings = []
        for row in rows:
            if row.item_id in flagged_items and not filters.include_flagged:
                continue
            candidates = row.item.candidates  # ordered by position, as ranks are stored
            rankings.append(Ranking(
                prompt=row.item.prompt_row.prompt, completions=[c.text for c in candidates], ranks=list(row.ranks),
                reviewer=row.user.username, ranking_id=row.id, simulated=row.simulated, round=row.item.round,
                flagged=frozenset(c.position for c in candidates if c.id in flagged_candidates[row.item_id]),
            ))
        return rankings


def build_rows(rankings: list[Ranking], test_fraction: float, include_flagged: bool = False) -> dict:
    """``{"pairwise": {"train": [...], "test": [...]}, "kwise": {...}, "conversational": bool}``.

    All rows are plain text, or all conversational when any prompt is a message list (one Arrow type
    per column). The split follows a hash of the prompt as stored, so it never changes across exports.
    """
    conversational = any(is_conversational(r.prompt) for r in rankings)
    out = {EXPORT_PAIRWISE: {"train": [], "test": []}, EXPORT_KWISE: {"train": [], "test": []},
           "conversational": conversational}
    for r in rankings:
        split = prompt_split(r.prompt, test_fraction)
        if conversational and not is_conversational(r.prompt):
            r = Ranking(as_messages(r.prompt), r.completions, r.ranks, r.reviewer, r.ranking_id, r.flagged,
                        r.simulated, r.round)
        out[EXPORT_PAIRWISE][split] += [p.to_row() for p in r.pairs(include_flagged)]
        kwise = r.kwise(include_flagged)
        if kwise is not None:
            out[EXPORT_KWISE][split].append(kwise.to_row())
    return out


def _dataset_dict(splits: dict[str, list[dict]]):
    import datasets

    datasets.disable_progress_bars()
    filled = [rows for rows in splits.values() if rows]
    features = datasets.Dataset.from_list(filled[0]).features if filled else None
    def one(rows: list[dict]):
        if rows:
            return datasets.Dataset.from_list(rows, features=features)
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)  # empty split

    return datasets.DatasetDict({name: one(rows) for name, rows in splits.items()})


def export_rankings(store: Store, out_dir: str | os.PathLike, filters: ExportFilters, test_fraction: float) -> dict:
    """Write ``OUT/pairwise``, ``OUT/kwise`` (DatasetDicts with train/test) and ``OUT/manifest.json``."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_MANIFEST).is_file():
        raise UserError(f"{out}: exists and is not an earlier export; choose an empty or new folder")
    rankings = load_rankings(store, filters)
    if not rankings:
        raise UserError(f"no rankings match the filters ({_describe(filters)}); nothing exported")
    rows = build_rows(rankings, test_fraction, filters.include_flagged)
    if not any(rows[EXPORT_PAIRWISE].values()):
        raise UserError(f"{len(rankings)} rankings match, but every one is a full tie or flagged: no pairs")
    out.mkdir(parents=True, exist_ok=True)
    for name in (EXPORT_PAIRWISE, EXPORT_KWISE):
        # One shard per split, even an empty one: datasets cannot load back a split saved as 0 shards.
        _dataset_dict(rows[name]).save_to_disk(str(out / name), num_shards={"train": 1, "test": 1})
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "project": store.project.name,
        "filters": asdict(filters),
        "test_fraction": test_fraction,
        "conversational": rows["conversational"],
        "counts": {
            "rankings": len(rankings),
            "simulated_rankings": sum(r.simulated for r in rankings),
            "reviewers": len({r.reviewer for r in rankings}),
            EXPORT_PAIRWISE: {k: len(v) for k, v in rows[EXPORT_PAIRWISE].items()},
            EXPORT_KWISE: {k: len(v) for k, v in rows[EXPORT_KWISE].items()},
        },
        "ranking_ids": [r.ranking_id for r in rankings],
    }
    (out / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _describe(filters: ExportFilters) -> str:
    parts = [f"source={filters.source}"]
    if filters.reviewers is not None:
        parts.append(f"reviewers={','.join(filters.reviewers)}")
    if filters.rounds is not None:
        parts.append(f"rounds={','.join(map(str, filters.rounds))}")
    return ", ".join(parts)


def export_prompts(store: Store, path: str | os.PathLike) -> int:
    """Every prompt of the project as ``{"prompt": ...}`` lines: the prompt set PPO reads."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: give a file path (for example prompts.jsonl), not a folder")
    with store.sessions() as s:
        prompts = list(s.scalars(select(PromptRow.prompt).where(PromptRow.project_id == store.project.id)
                                 .order_by(PromptRow.id)))
    if not prompts:
        raise UserError(f"project '{store.project.name}' has no prompts; import some first (rlhf app import)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for prompt in prompts:
            handle.write(json.dumps({"prompt": prompt}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return len(prompts)

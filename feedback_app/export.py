"""Rankings -> TRL preference datasets (the layout in ``rlhf/schema.py``) and the PPO prompt file.

The pair and K-wise conversions are ``rlhf.schema.Ranking.pairs()`` / ``.kwise()`` (tested there);
this module only selects rankings, decides the format and the split, and writes the files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import select

from feedback_app.agent_replies import agent_texts, mark_agent_replies
from feedback_app.files import SHARED_FILE, path_error, prepare_parent, restrict_tree
from feedback_app.models import Flag, GoldItem, Item, PromptRow, RankingRow, User, privacy_unit
from feedback_app.store import Conflict, Invalid, Store
from rlhf.errors import UserError
from rlhf.schema import (EXPORT_KWISE, EXPORT_MANIFEST, EXPORT_PAIRWISE, Ranking, as_messages, is_conversational,
                         prompt_split, held_out_threshold)

SOURCES = ("all", "human", "simulated")
SFT_EXPORT = "sft"  # OUT/sft and OUT/sft.jsonl: demonstrations for `rlhf sft` (rlhf.align.demonstrations reads them)

# One path component: no separator, no "." or "..", not hidden, short enough for any file system.
_EXPORT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_export_name(name: str) -> str:
    """``name`` if it is a safe export folder name (letters, digits, ``-_.``, not starting with a dot,
    at most 100 characters); ``Invalid`` otherwise. The page, the REST API and the CLI all check here."""
    if not isinstance(name, str) or not _EXPORT_NAME.fullmatch(name):
        raise Invalid(f"name: {name!r} is not a valid export name (letters, digits, '-', '_' and '.', "
                      f"not starting with '.', at most 100 characters)")
    return name


def export_path(export_dir: str | os.PathLike, name: str | None) -> Path:
    """Where a server-side export goes: ``export_dir/name``, or a new unique default name
    (a timestamp plus a random suffix, so two exports in the same second get two folders)."""
    if name is None or not name.strip():
        name = time.strftime("export-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)
    return Path(export_dir) / check_export_name(name.strip())


@dataclass
class ExportFilters:
    reviewers: list[str] | None = None  # usernames; None = everyone
    rounds: list[int] | None = None  # generation rounds; None = all
    source: str = "all"  # all | human | simulated
    include_flagged: bool = False  # keep flagged replies and flagged items
    # Reviewer quality (feedback_app.reviewer_quality): leave out every ranking of a reviewer whose
    # gold accuracy, or agreement with the consensus of the others, is below the figure. A reviewer
    # with no figure yet (no gold ranked, no shared item) is kept, and the manifest says so.
    min_gold_accuracy: float | None = None
    min_agreement: float | None = None
    # Demonstrations (OUT/sft): accepted ones only, unless this also takes those still pending.
    include_pending_demonstrations: bool = False

    def __post_init__(self):
        if self.source not in SOURCES:
            raise UserError(f"source: must be one of {', '.join(SOURCES)} (got {self.source!r})")
        for name in ("min_gold_accuracy", "min_agreement"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise UserError(f"{name}: must be between 0 and 1 (got {value})")


def quality_filter(store: Store, filters: ExportFilters) -> tuple[set[str], dict]:
    """Reviewers the quality thresholds leave out, and the manifest's record of why: each reviewer's
    gold accuracy and agreement, the thresholds, who was dropped and who had no figure to judge by."""
    from feedback_app.reviewer_quality import quality_table

    table = quality_table(store)
    dropped, unscored = set(), set()
    for row in table:
        for floor, value in ((filters.min_gold_accuracy, row.gold_accuracy), (filters.min_agreement, row.agreement)):
            if floor is None:
                continue
            if value is None:
                unscored.add(row.reviewer)
            elif value < floor:
                dropped.add(row.reviewer)
    record = {"min_gold_accuracy": filters.min_gold_accuracy, "min_agreement": filters.min_agreement,
              "dropped_reviewers": sorted(dropped), "kept_without_figure": sorted(unscored - dropped),
              "reviewers": {r.reviewer: {"gold_accuracy": r.gold_accuracy, "gold_rankings": r.gold_rankings,
                                         "agreement": r.agreement, "compared_pairs": r.compared_pairs}
                            for r in table}}
    return dropped, record


def load_rankings(store: Store, filters: ExportFilters, exclude_reviewers: set[str] = frozenset()) -> list[Ranking]:
    """The project's rankings that pass ``filters``, as ``rlhf.schema.Ranking`` records.

    A reply flagged by anyone goes into ``Ranking.flagged`` (left out of pairs unless asked); a
    ranking of an item flagged as a whole is left out unless ``include_flagged``. Rankings of gold
    items are never exported (they test reviewers; every reviewer ranks them). ``exclude_reviewers``:
    reviewers the quality filter left out (``quality_filter``).
    """
    with store.sessions() as s:
        query = (select(RankingRow).join(Item, RankingRow.item_id == Item.id).join(User, RankingRow.user_id == User.id)
                 .where(Item.project_id == store.project.id, RankingRow.item_id.not_in(select(GoldItem.item_id)))
                 .order_by(RankingRow.id))
        if exclude_reviewers:
            query = query.where(User.username.not_in(sorted(exclude_reviewers)))
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
                unit=privacy_unit(row.item.prompt_row),
            ))
        return rankings


def build_rows(rankings: list[Ranking], test_fraction: float, include_flagged: bool = False,
               min_test_prompts: int = 0) -> dict:
    """``{"pairwise": {"train": [...], "test": [...]}, "kwise": {...}, "conversational": bool}``.

    All rows are plain text, or all conversational when any prompt is a message list (one Arrow type
    per column). The split follows a hash of the prompt as stored, so it never changes across exports
    (``rlhf.schema.held_out_threshold`` raises the fraction on small data when ``min_test_prompts`` asks,
    counting only prompts with at least one untied pair; ``"test_threshold"`` holds the fraction used).
    """
    # A prompt whose replies were all tied gives no pair: it neither trains nor tests. The minimum counts
    # prompts with a usable pair, so a rule most replies tie on still holds out what the gate needs.
    usable = [r.prompt for r in rankings if r.pairs(include_flagged)]
    test_fraction = held_out_threshold(usable, test_fraction, min_test_prompts)
    conversational = any(is_conversational(r.prompt) for r in rankings)
    out = {EXPORT_PAIRWISE: {"train": [], "test": []}, EXPORT_KWISE: {"train": [], "test": []},
           "conversational": conversational, "test_threshold": test_fraction}
    for r in rankings:
        split = prompt_split(r.prompt, test_fraction)
        if conversational and not is_conversational(r.prompt):
            r = Ranking(as_messages(r.prompt), r.completions, r.ranks, r.reviewer, r.ranking_id, r.flagged,
                        r.simulated, r.round, r.unit)
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


def export_rankings(store: Store, out_dir: str | os.PathLike, filters: ExportFilters, test_fraction: float,
                    by=None, min_test_prompts: int = 0) -> dict:
    """Write ``OUT/pairwise``, ``OUT/kwise`` (DatasetDicts with train/test) and ``OUT/manifest.json``.

    Everything is written into a hidden folder beside ``OUT`` and renamed to ``OUT`` at the end (an
    atomic step): a reader never sees half an export, and an existing ``OUT`` is never overwritten
    (``Conflict``), also when two exports race for the same name.

    The export is audit-logged here, as ``by`` (an ``Actor``; None is the CLI), just before the
    rename, and the manifest records who, when and that entry's id (``exported_by``, ``created_at``,
    ``audit_id``), so a folder found later leads back to its line in the audit log. An export that
    fails after that entry gets an ``export failed`` entry citing it.
    """
    out = Path(out_dir)
    check_export_name(out.name)
    _refuse_existing(out)
    prepare_parent(out)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.mkdir()  # first, so an unwritable OUT fails before the rankings are read
    except OSError as exc:
        raise path_error(out, exc) from None
    try:
        manifest, rows = _manifest_and_rows(store, filters, test_fraction, min_test_prompts)
        manifest["files"] = []
        for name in (EXPORT_PAIRWISE, EXPORT_KWISE):
            splits = _dataset_dict(rows[name])
            # One shard per split, even an empty one: datasets cannot load back a split saved as 0 shards.
            splits.save_to_disk(str(tmp / name), num_shards={"train": 1, "test": 1})
            # The same rows as plain files beside the folder, for tools that do not read `datasets`:
            # OUT/pairwise-train.jsonl, OUT/pairwise-train.parquet, ...
            for split, dataset in splits.items():
                for suffix, write in (("jsonl", dataset.to_json), ("parquet", dataset.to_parquet)):
                    file = f"{name}-{split}.{suffix}"
                    write(str(tmp / file), **({"lines": True, "force_ascii": False} if suffix == "jsonl" else {}))
                    manifest["files"].append(file)
        _write_demonstrations(store, tmp, filters, manifest["test_threshold"], manifest)
        manifest["exported_by"] = by.username if by is not None else "cli"
        manifest["audit_id"] = audit_id = store.audit(by, "export", str(out), manifest["counts"])
        try:
            (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            restrict_tree(tmp)
            try:
                os.rename(tmp, out)  # replaces only an empty folder; a non-empty one raises
            except OSError as exc:
                if out.exists():
                    raise Conflict(f"{out}: already exists (another export took the name); nothing overwritten, "
                                   f"choose another name") from None
                raise path_error(out, exc) from None
        except (OSError, Conflict, UserError) as exc:
            store.audit(by, "export failed", str(out), {"audit_id": audit_id, "error": str(exc)[:300]})
            raise
    except OSError as exc:
        raise path_error(out, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; left over only on failure
    return manifest


def _manifest_and_rows(store: Store, filters: ExportFilters, test_fraction: float,
                       min_test_prompts: int = 0) -> tuple[dict, dict]:
    quality = None
    dropped: set[str] = set()
    if filters.min_gold_accuracy is not None or filters.min_agreement is not None:
        dropped, quality = quality_filter(store, filters)
    rankings = load_rankings(store, filters, dropped)
    if not rankings:
        raise UserError(f"no rankings match the filters ({_describe(filters)}); nothing exported")
    rows = build_rows(rankings, test_fraction, filters.include_flagged, min_test_prompts)
    if not any(rows[EXPORT_PAIRWISE].values()):
        raise UserError(f"{len(rankings)} rankings match, but every one is a full tie or flagged: no pairs")
    # an agent's real reply among the candidates (generate --agent-reply-as-candidate) is marked in the rows
    agent = agent_texts(store, [r.ranking_id for r in rankings])
    if agent:
        mark_agent_replies(rows, agent)
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "project": store.project.name,
        "filters": asdict(filters),
        "test_fraction": test_fraction,
        # the fraction the split used: test_fraction, raised on small data to hold out min_test_prompts
        "test_threshold": rows["test_threshold"], "min_test_prompts": min_test_prompts,
        "conversational": rows["conversational"],
        "agent_replies": None if not agent else {
            "rankings": len(agent),
            "columns": {EXPORT_PAIRWISE: ["chosen_source", "rejected_source"], EXPORT_KWISE: ["sources"]},
            "values": "agent: a contact-centre agent's real reply (from the chat log); model: the policy's reply"},
        "counts": {
            "rankings": len(rankings),
            "simulated_rankings": sum(r.simulated for r in rankings),
            "reviewers": len({r.reviewer for r in rankings}),
            EXPORT_PAIRWISE: {k: len(v) for k, v in rows[EXPORT_PAIRWISE].items()},
            EXPORT_KWISE: {k: len(v) for k, v in rows[EXPORT_KWISE].items()},
        },
        "ranking_ids": [r.ranking_id for r in rankings],
        # reviewer quality: the thresholds, each reviewer's figures and who was left out (None: no filter)
        "quality": quality,
        # the privacy units (column `unit`) by kind: what `rlhf reward train --dp` samples and protects
        "privacy_units": {kind: len({r.unit for r in rankings if r.unit.startswith(kind + ":")})
                          for kind in ("customer", "conversation", "prompt")},
        # the project's redaction settings at export time (None: the defaults, redaction on)
        "redaction": store.refresh_project().redaction,
    }
    return manifest, rows


def _write_demonstrations(store: Store, tmp: Path, filters: ExportFilters, test_fraction: float,
                          manifest: dict) -> None:
    """``OUT/sft`` (DatasetDict train/test, the rankings' prompt-level split) and ``OUT/sft.jsonl`` (every
    row) from the demonstrations (contract in ``feedback_app.demonstrations``); nothing when there are
    none. The manifest's ``sft`` records the counts and ``demonstration_ids`` the rows used (erasure
    looks for them)."""
    from feedback_app.demonstrations import export_rows

    splits, info = export_rows(store, test_fraction, filters.include_pending_demonstrations, include_agent=False)
    manifest["sft"] = info["counts"]
    manifest["demonstration_ids"] = info["demonstration_ids"]
    if not any(splits.values()):
        return
    dataset = _dataset_dict(splits)
    dataset.save_to_disk(str(tmp / SFT_EXPORT), num_shards={"train": 1, "test": 1})
    with (tmp / f"{SFT_EXPORT}.jsonl").open("w", encoding="utf-8") as handle:
        for split in ("train", "test"):
            for row in splits[split]:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest["files"].append(f"{SFT_EXPORT}.jsonl")


def _refuse_existing(out: Path) -> None:
    try:
        if out.is_dir() and not any(out.iterdir()):
            return  # an empty folder made for the export is fine
    except OSError as exc:
        raise path_error(out, exc, "cannot read") from None
    if out.exists() or out.is_symlink():
        kind = "folder" if out.is_dir() else "file"
        raise Conflict(f"{out}: a {kind} of that name exists; exports never overwrite: choose a new name")


def _describe(filters: ExportFilters) -> str:
    parts = [f"source={filters.source}"]
    if filters.min_gold_accuracy is not None:
        parts.append(f"min_gold_accuracy={filters.min_gold_accuracy}")
    if filters.min_agreement is not None:
        parts.append(f"min_agreement={filters.min_agreement}")
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
    prepare_parent(path)
    with store.sessions() as s:
        prompts = list(s.scalars(select(PromptRow.prompt).where(PromptRow.project_id == store.project.id)
                                 .order_by(PromptRow.id)))
    if not prompts:
        raise UserError(f"project '{store.project.name}' has no prompts; import some first (rlhf app import)")
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            os.chmod(tmp, SHARED_FILE)
            for prompt in prompts:
                handle.write(json.dumps({"prompt": prompt}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)  # readers see the old file or the whole new one
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise path_error(path, exc) from None
    return len(prompts)


def export_agent_replies(store: Store, path: str | os.PathLike) -> int:
    """Agents' reference replies (chat-log imports, already redacted) as SFT prompt-completion lines:
    ``{"prompt": ..., "completion": reply, "source": "agent", "author": "agent", "prompt_key": ..., "unit": ...}``,
    the rows ``rlhf sft --data`` reads (its split keys on the prompt, as the rankings' split does; ``unit`` is the
    privacy unit ``rlhf sft --dp`` needs, as the rankings')."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: give a file path (for example agent_replies.jsonl), not a folder")
    prepare_parent(path)
    with store.sessions() as s:
        rows = list(s.execute(select(PromptRow.prompt, PromptRow.reference_reply, PromptRow.prompt_key,
                                     PromptRow.customer_key, PromptRow.conversation_key)
                              .where(PromptRow.project_id == store.project.id, PromptRow.reference_reply.is_not(None))
                              .order_by(PromptRow.id)))
    rows = [r for r in rows if r.reference_reply.strip()]
    if not rows:
        raise UserError(f"project '{store.project.name}' has no agent reference replies; import a chat log first "
                        f"(rlhf app import CHAT_LOG.csv)")
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            os.chmod(tmp, SHARED_FILE)
            for r in rows:
                handle.write(json.dumps({"prompt": r.prompt, "completion": r.reference_reply, "source": "agent",
                                         "author": "agent", "prompt_key": r.prompt_key, "unit": privacy_unit(r)},
                                        ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise path_error(path, exc) from None
    return len(rows)


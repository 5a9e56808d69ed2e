"""Erasure on request: remove one conversation's or one customer's data, and name the earlier exports
that held it (their manifests list the ranking ids they were built from), so the admin knows which
datasets, reward models and policies to rebuild."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from feedback_app.store import Store


@dataclass
class ErasureReport:
    prompts: int
    items: int
    rankings: int
    exports_with_data: list[str] = field(default_factory=list)  # export folders whose manifest lists a ranking
    exports_unreadable: list[str] = field(default_factory=list)  # audited exports whose manifest is gone
    demonstrations: int = 0  # reviewers' replies written for the erased prompts


def affected_exports(store: Store, ranking_ids: list[int], demonstration_ids: list[int] = ()
                     ) -> tuple[list[str], list[str]]:
    """Export folders (from the audit log's "export" entries) whose manifest.json lists any of
    ``ranking_ids`` or ``demonstration_ids``, and those whose manifest could not be read (moved or
    deleted since)."""
    wanted, wanted_demonstrations = set(ranking_ids), set(demonstration_ids)
    hit, unreadable = [], []
    entries = store.audit_log(limit=100000)
    # an export that failed after its entry was written (see export_rankings) left no folder behind
    failed = {e.detail.get("audit_id") for e in entries if e.action == "export failed"}
    for entry in reversed(entries):
        if entry.action != "export" or entry.id in failed or entry.target in hit or entry.target in unreadable:
            continue
        manifest = Path(entry.target) / "manifest.json"
        try:
            data = json.loads(manifest.read_text())
            listed, listed_demonstrations = set(data.get("ranking_ids", [])), set(data.get("demonstration_ids", []))
        except (OSError, ValueError, AttributeError, TypeError):
            unreadable.append(entry.target)
            continue
        if listed & wanted or listed_demonstrations & wanted_demonstrations:
            hit.append(entry.target)
    return hit, unreadable


def erase(store: Store, conversation: str | None = None, customer: str | None = None, by=None) -> ErasureReport:
    result = store.erase(conversation=conversation, customer=customer, by=by)
    held = result["ranking_ids"] or result["demonstration_ids"]
    hit, unreadable = (affected_exports(store, result["ranking_ids"], result["demonstration_ids"]) if held
                       else ([], []))
    report = ErasureReport(result["prompts"], result["items"], result["rankings"], hit, unreadable,
                           result["demonstrations"])
    store.audit(by, "erase exports", "", {"exports_with_data": hit, "exports_unreadable": unreadable})
    return report

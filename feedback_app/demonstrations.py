"""Demonstrations: the reply a reviewer wanted, written on /review; admins accept or reject them, and
``rlhf app export`` turns the accepted ones (and agents' reference replies) into a TRL prompt-completion
dataset for ``rlhf sft``.

The export's data contract, one row (``OUT/sft`` as a DatasetDict with train/test, and ``OUT/sft.jsonl``):
  prompt       str | [chat messages]   the prompt as stored (all rows conversational when any prompt is)
  completion   str                     the reply to learn
  source       "demonstration" | "agent"   written by a reviewer, or the agent's real reply from a chat log
  author       str                     the reviewer's username ("agent" for agents' replies)
  prompt_key   str                     rlhf.schema.prompt_key of the prompt (the split's key)
  unit         str                     the privacy unit for 'rlhf sft --dp', as the rankings' (customer:<hash>,
                                       else conversation:<hash>, else prompt:<key>)
The split is the rankings' prompt-level split (``rlhf.schema.prompt_split``): a prompt's rankings and
its demonstrations always land on the same side.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from feedback_app.auth import Actor
from feedback_app.models import (BASED_ON, DEMONSTRATION_STATUSES, Assignment, Candidate, Demonstration, Item,
                                 Project, PromptRow, User, privacy_unit)
from feedback_app.store import Forbidden, Invalid, NotFound, Store, _audit
from rlhf.schema import as_messages, is_conversational, prompt_key, prompt_split

MAX_TEXT = 8000  # characters of one demonstration (the REST body limit is far above it)
SOURCES = ("demonstration", "agent")


@dataclass
class DemonstrationView:
    id: int
    item_id: int | None
    prompt: object
    author: str
    text: str
    based_on: str  # "" (written from scratch) | "candidate" | "reference"
    based_on_candidate_id: int | None
    guideline_version: str
    status: str  # pending | accepted | rejected
    reviewed_by: str | None
    created_at: float


def check_text(text: object) -> str:
    """The demonstration's text, trimmed at both ends; ``Invalid`` naming the field when it is empty,
    over ``MAX_TEXT`` characters or holds control characters other than newlines and tabs."""
    if not isinstance(text, str) or not text.strip():
        raise Invalid("text: write the reply you wanted (it is empty)")
    text = text.strip()
    if len(text) > MAX_TEXT:
        raise Invalid(f"text: {len(text)} characters is over the limit of {MAX_TEXT}; shorten the reply")
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t\r" for ch in text):
        raise Invalid("text: holds a control character (for example a NUL byte); remove it")
    return text


def add(store: Store, author: Actor, item_id: int, text: str, based_on: str = "",
        based_on_candidate_id: int | None = None, redact=None) -> DemonstrationView:
    """Store ``author``'s reply for the prompt of ``item_id`` (pending until an admin decides).

    ``based_on``: "" (written from scratch), "candidate" (edited from ``based_on_candidate_id``, one
    of the item's replies) or "reference" (edited from the agent's reply). ``redact``: a function of
    (prompt, text) returning the text with personal data replaced, as generated replies are."""
    text = check_text(text)
    if based_on not in BASED_ON:
        raise Invalid(f"based_on: one of 'candidate', 'reference' or empty (got {str(based_on)[:40]!r})")
    if (based_on == "candidate") != (based_on_candidate_id is not None):
        raise Invalid("based_on_candidate_id: give it exactly when based_on is 'candidate'")

    def work(s: Session) -> DemonstrationView:
        item = s.get(Item, item_id)
        if item is None or item.project_id != store.project.id:
            raise NotFound(f"item_id: no item {item_id} in project '{store.project.name}'")
        prompt = item.prompt_row
        if based_on == "candidate":
            candidate = s.get(Candidate, based_on_candidate_id)
            if candidate is None or candidate.item_id != item.id:
                raise Invalid(f"based_on_candidate_id: {based_on_candidate_id} is not a reply of item {item_id}")
        if based_on == "reference" and not prompt.reference_reply:
            raise Invalid(f"based_on: item {item_id}'s prompt has no agent reply to start from")
        stored = redact(prompt.prompt, text) if redact is not None else text
        project = s.get(Project, store.project.id)  # the guideline version now, not at server start
        row = Demonstration(project_id=store.project.id, prompt_id=prompt.id, item_id=item.id, user_id=author.id,
                            text=stored, based_on=based_on, based_on_candidate_id=based_on_candidate_id,
                            guideline_version=project.guideline_version or "", status="pending",
                            created_at=store.clock())
        s.add(row)
        s.flush()
        return _view(row, prompt.prompt, author.username, None)

    return store.transaction(work)


def context(store: Store, reviewer: Actor, item_id: int) -> dict:
    """What the "Write a better reply" box starts from, for an item handed to ``reviewer``: its replies
    in the order this reviewer sees them (``[{"id", "text"}]``) and the agent's reply (or None).
    ``NotFound`` for an item never handed to them (no reading other reviewers' items by id)."""
    with store.sessions() as s:
        lease = s.scalars(select(Assignment).where(Assignment.item_id == item_id, Assignment.user_id == reviewer.id)
                          .order_by(Assignment.id.desc()).limit(1)).first()
        item = s.get(Item, item_id) if lease is not None else None
        if item is None or item.project_id != store.project.id:
            raise NotFound(f"item_id: item {item_id} was not handed to you")
        by_position = {c.position: c for c in item.candidates}
        order = lease.shown_order or sorted(by_position)
        return {"item_id": item.id,
                "candidates": [{"id": by_position[p].id, "text": by_position[p].text} for p in order if p in by_position],
                "reference": item.prompt_row.reference_reply or None}


def listing(store: Store, status: str | None = None, author: str | None = None,
            limit: int = 500) -> list[DemonstrationView]:
    """The project's demonstrations, newest first, optionally of one status and one author."""
    if status is not None and status not in DEMONSTRATION_STATUSES:
        raise Invalid(f"status: one of {', '.join(DEMONSTRATION_STATUSES)} (got {str(status)[:40]!r})")
    decider = aliased(User)
    reviewer = select(decider.username).where(decider.id == Demonstration.reviewed_by).scalar_subquery()
    query = (select(Demonstration, PromptRow.prompt, User.username, reviewer)
             .join(PromptRow, PromptRow.id == Demonstration.prompt_id).join(User, User.id == Demonstration.user_id)
             .where(Demonstration.project_id == store.project.id)
             .order_by(Demonstration.id.desc()).limit(limit))
    if status is not None:
        query = query.where(Demonstration.status == status)
    if author is not None:
        query = query.where(User.username == author)
    with store.sessions() as s:
        return [_view(row, prompt, name, by) for row, prompt, name, by in s.execute(query)]


def counts_by_author(store: Store) -> list[tuple[str, int, int, int]]:
    """(author, pending, accepted, rejected) per reviewer who wrote any, by name."""
    query = (select(User.username, Demonstration.status, func.count())
             .join(User, User.id == Demonstration.user_id)
             .where(Demonstration.project_id == store.project.id)
             .group_by(User.username, Demonstration.status))
    table: dict[str, dict[str, int]] = {}
    with store.sessions() as s:
        for name, status, n in s.execute(query):
            table.setdefault(name, {})[status] = n
    return [(name, c.get("pending", 0), c.get("accepted", 0), c.get("rejected", 0)) for name, c in sorted(table.items())]


def decide(store: Store, admin: Actor, demonstration_id: int, accept: bool) -> DemonstrationView:
    """Accept or reject one demonstration (a decision can be changed later); audit-logged."""
    if not admin.is_admin:
        raise Forbidden("admins only")

    def work(s: Session) -> DemonstrationView:
        row = s.get(Demonstration, demonstration_id)
        if row is None or row.project_id != store.project.id:
            raise NotFound(f"demonstration {demonstration_id}: not found in project '{store.project.name}'")
        before = row.status
        row.status, row.reviewed_by, row.reviewed_at = ("accepted" if accept else "rejected"), admin.id, store.clock()
        author = s.get(User, row.user_id).username
        _audit(s, admin, store.clock(), "demonstration " + row.status, f"demonstration {row.id}",
               {"author": author, "before": before})
        return _view(row, s.get(PromptRow, row.prompt_id).prompt, author, admin.username)

    return store.transaction(work)


def export_rows(store: Store, test_fraction: float, include_pending: bool = False,
                include_agent: bool = True) -> tuple[dict[str, list[dict]], dict]:
    """``({"train": rows, "test": rows}, counts)`` in the contract above: accepted demonstrations
    (and pending ones with ``include_pending``), then agents' reference replies (``include_agent``)."""
    wanted = ("accepted", "pending") if include_pending else ("accepted",)
    with store.sessions() as s:
        demos = list(s.execute(
            select(PromptRow.prompt, Demonstration.text, User.username, Demonstration.id, PromptRow.customer_key,
                   PromptRow.conversation_key, PromptRow.prompt_key)
            .join(PromptRow, PromptRow.id == Demonstration.prompt_id).join(User, User.id == Demonstration.user_id)
            .where(Demonstration.project_id == store.project.id, Demonstration.status.in_(wanted))
            .order_by(Demonstration.id)))
        agents = list(s.execute(
            select(PromptRow.prompt, PromptRow.reference_reply, PromptRow.customer_key, PromptRow.conversation_key,
                   PromptRow.prompt_key)
            .where(PromptRow.project_id == store.project.id, PromptRow.reference_reply.is_not(None),
                   PromptRow.reference_reply != "")
            .order_by(PromptRow.id))) if include_agent else []
    raw = [(d.prompt, d.text, "demonstration", d.username, privacy_unit(d)) for d in demos] + \
          [(a.prompt, a.reference_reply, "agent", "agent", privacy_unit(a)) for a in agents]
    conversational = any(is_conversational(p) for p, *_ in raw)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for prompt, text, source, author, unit in raw:
        splits[prompt_split(prompt, test_fraction)].append({
            "prompt": as_messages(prompt) if conversational else prompt, "completion": text,
            "source": source, "author": author, "prompt_key": prompt_key(prompt), "unit": unit})
    counts = {"demonstrations": len(demos), "agent_replies": len(agents),
              "train": len(splits["train"]), "test": len(splits["test"]),
              "statuses": list(wanted), "conversational": conversational}
    return splits, {"counts": counts, "demonstration_ids": [d.id for d in demos]}


def _view(row: Demonstration, prompt, author: str, reviewed_by: str | None) -> DemonstrationView:
    return DemonstrationView(row.id, row.item_id, prompt, author, row.text, row.based_on, row.based_on_candidate_id,
                             row.guideline_version, row.status, reviewed_by, row.created_at)

"""Blind A/B evaluation in the store: tables (revision 0003) and service functions.

An admin creates an A/B set: two policies (names only: the replies are generated before, e.g. with
``rlhf generate``) and items, each a held-out prompt with one reply from each policy. A reviewer
asks for the next item of a set: they get one they have not judged, picked at random, with the two
replies in a random left/right order, and no policy names. The order is drawn and stored when the
item is handed out (a row in ``ab_judgements`` with ``verdict`` NULL), so every verdict maps back
to a policy and the position-bias check can be computed. Each item is judged by up to
``judgements_per_item`` different reviewers. An unanswered judgement is a lease under the ranking
leases' rule (``Store.lease_expires_at``: ``lease_seconds`` after it was handed out); once expired it
is dropped and its item goes to someone else. Win rates and intervals come from ``feedback_app.ab``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from feedback_app.ab import VERDICTS, position_bias, win_rate, winner_of
from feedback_app.auth import Actor
from feedback_app.models import AbItem, AbJudgement, AbSet, AuditEntry, User
from feedback_app.store import Conflict, Forbidden, Invalid, LeaseExpired, NotFound, Store, _audit
from rlhf.schema import AbJudgementRecord, AbReport, validate_prompt

# Audit actions: a reviewer's verdict taken back, and a report written to a file (which then counts
# every verdict given so far, so none of those can be taken back any more).
UNDO_ACTION = "ab verdict undone"
REPORT_ACTION = "ab report written"

# ---------------------------------------------------------------------------------------------------
# What the service returns


@dataclass
class AbItemView:
    """An A/B item as a reviewer sees it: no policy names, replies in the stored blind order."""

    judgement_id: int
    set_id: int
    prompt: Any
    left: str
    right: str


@dataclass
class AbSetInfo:
    set_id: int
    name: str
    items: int
    judgements_per_item: int
    policy_a: str | None = None  # None for reviewers: the evaluation is blind
    policy_b: str | None = None


class AbService:
    """A/B operations for the project of ``store`` (its transactions, clock and lease rule)."""

    def __init__(self, store: Store, rng: random.Random | None = None):
        self.store = store
        self.rng = rng or random.Random()

    # -- admin ------------------------------------------------------------------------------------

    def create_set(self, actor: Actor, name: str, policy_a: str, policy_b: str, items: list[dict],
                   judgements_per_item: int = 1) -> AbSetInfo:
        """Store a set; ``items`` are ``{"prompt", "reply_a", "reply_b"}``. Nothing is stored on an error."""
        _admin(actor)
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise Invalid("name: give 1 to 200 characters")
        if not policy_a or not policy_b:
            raise Invalid("policy_a, policy_b: name both policies")
        if not 1 <= int(judgements_per_item) <= 50:
            raise Invalid("judgements_per_item: must be between 1 and 50")
        if not items:
            raise Invalid("items: give at least one prompt with a reply from each policy")
        rows = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise Invalid(f"items[{i}]: expected an object with prompt, reply_a, reply_b")
            try:
                prompt = validate_prompt(item.get("prompt"), f"items[{i}].prompt")
            except ValueError as exc:
                raise Invalid(str(exc)) from None
            for side in ("reply_a", "reply_b"):
                if not isinstance(item.get(side), str):
                    raise Invalid(f"items[{i}].{side}: must be text")
            rows.append((prompt, item["reply_a"], item["reply_b"]))

        def work(s: Session) -> AbSetInfo:
            pid = self.store.project.id
            if s.scalar(select(AbSet.id).where(AbSet.project_id == pid, AbSet.name == name)) is not None:
                raise Conflict(f"name: an A/B set '{name}' already exists")
            ab = AbSet(project_id=pid, name=name, policy_a=policy_a, policy_b=policy_b,
                       judgements_per_item=int(judgements_per_item), created_at=self.store.now())
            s.add(ab)
            s.flush()
            s.add_all([AbItem(set_id=ab.id, prompt=p, reply_a=a, reply_b=b) for p, a, b in rows])
            return AbSetInfo(ab.id, ab.name, len(rows), ab.judgements_per_item, ab.policy_a, ab.policy_b)

        return self.store.transaction(work)

    def report(self, actor: Actor, set_ref: int | str, confidence: float = 0.95) -> AbReport:
        """Win rate of policy A with its interval, position bias, and every judgement (admins)."""
        _admin(actor)
        with self.store.sessions() as s:
            ab = self._set(s, set_ref)
            rows = s.execute(select(AbJudgement, User.username).join(User, User.id == AbJudgement.user_id)
                             .join(AbItem, AbItem.id == AbJudgement.item_id)
                             .where(AbItem.set_id == ab.id).order_by(AbJudgement.id)).all()
            n_items = s.scalar(select(func.count(AbItem.id)).where(AbItem.set_id == ab.id))
            lengths = {i: (len(a), len(b)) for i, a, b in s.execute(
                select(AbItem.id, AbItem.reply_a, AbItem.reply_b).where(AbItem.set_id == ab.id)).all()}
        answered = [(j, u) for j, u in rows if j.verdict is not None]
        judgements = [AbJudgementRecord(j.id, j.item_id, u, j.left_is_a, j.verdict, j.winner, j.simulated,
                                        j.shown_at, j.answered_at) for j, u in answered]
        verdicts, sides = [j.verdict for j in judgements], [bool(j.left_is_a) for j in judgements]
        return AbReport(ab.id, ab.name, ab.policy_a, ab.policy_b, n_items, ab.judgements_per_item,
                        open=len(rows) - len(answered),
                        win_rate=win_rate([winner_of(v, a) for v, a in zip(verdicts, sides)], confidence),
                        position_bias=position_bias(verdicts, sides), judgements=judgements,
                        length_controlled=length_controlled(judgements, lengths, confidence))

    def list_sets(self, actor: Actor) -> list[AbSetInfo]:
        with self.store.sessions() as s:
            sets = s.scalars(select(AbSet).where(AbSet.project_id == self.store.project.id)
                             .order_by(AbSet.id)).all()
            counts = dict(s.execute(select(AbItem.set_id, func.count(AbItem.id)).group_by(AbItem.set_id)).all())
        return [AbSetInfo(a.id, a.name, counts.get(a.id, 0), a.judgements_per_item,
                          a.policy_a if actor.is_admin else None, a.policy_b if actor.is_admin else None)
                for a in sets]

    # -- reviewers --------------------------------------------------------------------------------

    def next_item(self, actor: Actor, set_ref: int | str) -> AbItemView | None:
        """The reviewer's open judgement in this set, else a random item they have not judged that
        still needs judgements, with a freshly drawn blind order. None when none is left."""

        def work(s: Session) -> AbItemView | None:
            ab, now = self._set(s, set_ref), self.store.now()
            # Walked-away reviewers: their unanswered judgements expire and the items open again. The
            # store's rule, lease_expired(lease_expires_at(shown_at), now), written as SQL.
            s.execute(delete(AbJudgement).where(AbJudgement.verdict.is_(None),
                                                AbJudgement.shown_at + self.store.lease_seconds <= now))
            held = s.scalar(select(AbJudgement).join(AbItem, AbItem.id == AbJudgement.item_id)
                            .where(AbItem.set_id == ab.id, AbJudgement.user_id == actor.id,
                                   AbJudgement.verdict.is_(None)).order_by(AbJudgement.id).limit(1))
            if held is not None:
                return _view(held, ab.id)
            taken = (select(AbJudgement.item_id, func.count(AbJudgement.id).label("n"))
                     .group_by(AbJudgement.item_id).subquery())
            mine = select(AbJudgement.item_id).where(AbJudgement.user_id == actor.id)
            open_items = s.scalars(select(AbItem.id).outerjoin(taken, taken.c.item_id == AbItem.id)
                                   .where(AbItem.set_id == ab.id, AbItem.id.not_in(mine),
                                          func.coalesce(taken.c.n, 0) < ab.judgements_per_item)).all()
            if not open_items:
                return None
            # Random item order and random sides, both stored in the judgement row (shown_at, left_is_a).
            item_id = self.rng.choice(sorted(open_items))
            judgement = AbJudgement(item_id=item_id, user_id=actor.id, left_is_a=self.rng.random() < 0.5,
                                    shown_at=now)
            s.add(judgement)
            s.flush()  # a second hand-out of the same item to this reviewer fails here (unique) and retries
            return _view(judgement, ab.id)

        return self.store.transaction(work, attempts=10)

    def judge(self, actor: Actor, judgement_id: int, verdict: str, seconds: float | None = None,
              simulated: bool = False) -> dict:
        """Record ``verdict`` (left, right, tie, both_bad, as seen on the screen). Repeating the same
        verdict is a no-op (a retried request); a different one is refused."""
        if verdict not in VERDICTS:
            raise Invalid(f"verdict: must be one of {', '.join(VERDICTS)} (got {verdict!r})")
        if seconds is not None and not (0 <= seconds < 1e7):
            raise Invalid("seconds: must be between 0 and 1e7")

        def work(s: Session) -> dict:
            j = s.get(AbJudgement, judgement_id)
            if j is None:
                raise NotFound(f"judgement {judgement_id}: not found (an unanswered one expires after "
                               f"{self.store.lease_seconds:.0f} s; fetch the next item again)")
            if j.user_id != actor.id:
                raise Forbidden(f"judgement {judgement_id}: handed to another reviewer")
            now = self.store.now()
            if j.verdict is None and self.store.lease_expired(self.store.lease_expires_at(j.shown_at), now):
                raise LeaseExpired(f"judgement {judgement_id}: your lease expired; fetch the next item again")
            if j.verdict is not None:
                if j.verdict != verdict:
                    raise Conflict(f"judgement {judgement_id}: already answered '{j.verdict}'")
                return {"judgement_id": j.id, "verdict": j.verdict, "replayed": True}
            j.verdict, j.winner = verdict, winner_of(verdict, j.left_is_a)
            j.seconds, j.simulated, j.answered_at = seconds, bool(simulated), now
            return {"judgement_id": j.id, "verdict": j.verdict, "replayed": False}

        return self.store.transaction(work)

    def undo_last(self, actor: Actor, set_ref: int | str) -> AbItemView:
        """Take back the reviewer's latest verdict in this set: its pair comes back to them, in the same
        blind order, to judge again. Only their latest verdict, and once: a second undo before judging
        again is refused (409), as is taking back a verdict that a written report already counted
        (``report_written``). Audited with the verdict taken back."""

        def work(s: Session) -> AbItemView:
            ab, now = self._set(s, set_ref), self.store.now()
            j = s.scalar(select(AbJudgement).join(AbItem, AbItem.id == AbJudgement.item_id)
                         .where(AbItem.set_id == ab.id, AbJudgement.user_id == actor.id,
                                AbJudgement.verdict.is_not(None))
                         .order_by(AbJudgement.answered_at.desc(), AbJudgement.id.desc()).limit(1))
            target = _set_target(ab.id)
            undone = s.scalar(select(func.max(AuditEntry.at)).where(
                AuditEntry.action == UNDO_ACTION, AuditEntry.actor == actor.username, AuditEntry.target == target))
            if undone is not None and (j is None or undone >= j.answered_at):
                raise Conflict("undo: you already took back your last verdict; judge that pair again first")
            if j is None:
                raise NotFound("undo: you have no verdict in this set to take back")
            reported = s.scalar(select(func.max(AuditEntry.at)).where(
                AuditEntry.action == REPORT_ACTION, AuditEntry.target == target))
            if reported is not None and reported >= j.answered_at:
                raise Conflict("undo: your last verdict is already counted in a written report of this set")
            _audit(s, actor, now, UNDO_ACTION, target, {"judgement_id": j.id, "verdict": j.verdict})
            # Handed out again now, so the lease rule gives the reviewer the usual time to judge it.
            j.verdict, j.winner, j.seconds, j.answered_at, j.simulated, j.shown_at = None, None, None, None, False, now
            s.flush()
            return _view(j, ab.id)

        return self.store.transaction(work)

    def report_written(self, actor: Actor, set_ref: int | str, path: str) -> None:
        """Record (audit) that the set's report went to a file: its verdicts can no longer be taken back."""
        _admin(actor)

        def work(s: Session) -> None:
            ab = self._set(s, set_ref)
            _audit(s, actor, self.store.now(), REPORT_ACTION, _set_target(ab.id), {"path": path})

        self.store.transaction(work)

    # -- helpers ----------------------------------------------------------------------------------

    def _set(self, s: Session, set_ref: int | str) -> AbSet:
        ref = str(set_ref)
        # An id is ASCII digits within BIGINT ("²" passes str.isdigit, int() refuses it); else a name.
        numeric = ref.isascii() and ref.isdigit() and len(ref) <= 18
        where = AbSet.id == int(ref) if numeric else AbSet.name == ref
        ab = s.scalar(select(AbSet).where(AbSet.project_id == self.store.project.id, where))
        if ab is None:
            raise NotFound(f"A/B set {set_ref!r}: not found")
        return ab


def _view(j: AbJudgement, set_id: int) -> AbItemView:
    item = j.item
    left, right = (item.reply_a, item.reply_b) if j.left_is_a else (item.reply_b, item.reply_a)
    return AbItemView(j.id, set_id, item.prompt, left, right)


def _set_target(set_id: int) -> str:
    return f"ab set {set_id}"


def _admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden("admins only")


def length_controlled(judgements: list[AbJudgementRecord], lengths: dict[int, tuple[int, int]],
                      confidence: float) -> dict[str, Any]:
    """Policy A's win rate with the length difference (characters, A minus B) regressed out, as
    length-controlled AlpacaEval does (``rlhf.bias.length_controlled_win_rate``), beside the raw one."""
    from dataclasses import asdict

    from rlhf.bias import length_controlled_win_rate

    verdict = {"a": "win", "b": "loss", "tie": "tie", "both_bad": "both_bad"}
    lc = length_controlled_win_rate([verdict[j.winner] for j in judgements],
                                    [lengths[j.item_id][0] for j in judgements],
                                    [lengths[j.item_id][1] for j in judgements], confidence)
    return asdict(lc)

"""Small helpers shared by the feedback tests."""

from __future__ import annotations

from feedback_app.db import open_store
from feedback_app.store import ImportRow, Store


def new_store(url: str, k: int = 3, reviewers_per_item: int = 2, project: str = "p", **kw) -> Store:
    _, sessions = open_store(url)
    return Store(sessions, project, k=k, reviewers_per_item=reviewers_per_item, guideline="g",
                 guideline_version="1", **kw)


def items(store: Store, prompts_and_replies: list[tuple], round: int = 0) -> None:
    store.import_rows([ImportRow(p, list(r), model="m") for p, r in prompts_and_replies], round=round)


def rank_by_text(store: Store, actor, wanted: dict[str, int], key: str, simulated: bool = False):
    """Fetch the next item and rank it so the reply with text T gets ``wanted[T]``."""
    item = store.next_item(actor)
    assert item is not None
    assert {c.text for c in item.candidates} == set(wanted), (item, wanted)
    ranks = [wanted[c.text] for c in item.candidates]
    return item, store.submit_ranking(actor, item.item_id, ranks, key, simulated=simulated)

"""Export: rankings of known shape give exactly the pairs and K-wise rows worked out by hand."""

from __future__ import annotations

import json

import datasets
import pytest

from feedback_app.export import ExportFilters, build_rows, export_prompts, export_rankings, load_rankings
from rlhf.errors import UserError
from rlhf.schema import prompt_split
from tests.feedback.helpers import items, new_store, rank_by_text


@pytest.fixture
def ranked(sqlite_url):
    """Two items; alice and bob rank A; alice ranks B as a full tie (simulated); bob flags reply a2."""
    store = new_store(sqlite_url, k=3, reviewers_per_item=2)
    items(store, [("prompt A", ["a0", "a1", "a2"])])
    items(store, [("prompt B", ["b0", "b1", "b2"])], round=1)
    alice, bob = store.add_user("alice", "plum-otter-41"), store.add_user("bob", "plum-otter-41")
    rank_by_text(store, alice, {"a0": 1, "a1": 2, "a2": 2}, "k1")  # a tie between a1 and a2
    rank_by_text(store, alice, {"b0": 1, "b1": 1, "b2": 1}, "k2", simulated=True)  # a full tie
    item, _ = rank_by_text(store, bob, {"a0": 3, "a1": 1, "a2": 2}, "k3")
    a2 = next(c.id for c in item.candidates if c.text == "a2")
    store.flag(bob, item.item_id, "broken", "cut off", candidate_id=a2)
    return store


def _pairs(rows):
    return sorted((r["reviewer"], r["chosen"], r["rejected"]) for r in rows)


def test_pairs_and_kwise_rows_by_hand(ranked):
    rows = build_rows(load_rankings(ranked, ExportFilters()), test_fraction=0.0)
    # a2 is flagged (by bob): left out of everyone's pairs. alice: a0 > a1. bob: a1 > a0. B: ties only.
    assert _pairs(rows["pairwise"]["train"]) == [("alice", "a0", "a1"), ("bob", "a1", "a0")]
    assert rows["pairwise"]["test"] == []
    kwise = sorted((r["reviewer"], r["prompt"], tuple(r["completions"]), tuple(r["ranks"]))
                   for r in rows["kwise"]["train"])
    assert kwise == [("alice", "prompt A", ("a0", "a1"), (1, 2)),
                     ("alice", "prompt B", ("b0", "b1", "b2"), (1, 1, 1)),
                     ("bob", "prompt A", ("a0", "a1"), (3, 1))]
    assert rows["conversational"] is False


def test_flagged_replies_come_back_when_asked(ranked):
    rows = build_rows(load_rankings(ranked, ExportFilters(include_flagged=True)), 0.0, include_flagged=True)
    # alice [1,2,2]: a0>a1, a0>a2 (a1=a2 tie). bob [3,1,2]: a1>a0, a2>a0, a1>a2.
    assert _pairs(rows["pairwise"]["train"]) == [("alice", "a0", "a1"), ("alice", "a0", "a2"),
                                                 ("bob", "a1", "a0"), ("bob", "a1", "a2"), ("bob", "a2", "a0")]


def test_filters_reviewer_round_and_source(ranked):
    def ids(**kw):
        return sorted((r.reviewer, r.round, r.simulated) for r in load_rankings(ranked, ExportFilters(**kw)))

    assert ids(reviewers=["bob"]) == [("bob", 0, False)]
    assert ids(rounds=[1]) == [("alice", 1, True)]
    assert ids(source="simulated") == [("alice", 1, True)]
    assert ids(source="human") == [("alice", 0, False), ("bob", 0, False)]
    with pytest.raises(UserError, match="source"):
        ExportFilters(source="robots")


def test_an_item_flagged_as_a_whole_is_left_out(ranked):
    alice = next(a for a in ranked.list_users() if a.username == "alice")
    b_item = [r for r in ranked.my_rankings(alice) if len(set(r.ranks)) == 1][0].item_id
    ranked.flag(alice, b_item, "off-topic")
    assert sorted(r.reviewer + r.prompt for r in load_rankings(ranked, ExportFilters())) == \
        ["aliceprompt A", "bobprompt A"]


def test_export_writes_the_layout_and_a_manifest(ranked, tmp_path):
    manifest = export_rankings(ranked, tmp_path / "out", ExportFilters(), test_fraction=0.0)
    pairwise = datasets.load_from_disk(str(tmp_path / "out" / "pairwise"))
    kwise = datasets.load_from_disk(str(tmp_path / "out" / "kwise"))
    assert set(pairwise) == {"train", "test"} and pairwise["train"].num_rows == 2 and pairwise["test"].num_rows == 0
    assert pairwise["train"].column_names == ["prompt", "chosen", "rejected", "reviewer", "ranking_id", "unit"]
    assert kwise["train"].column_names == ["prompt", "completions", "ranks", "reviewer", "ranking_id", "unit"]
    # Plain-prompt imports: the prompt is the privacy unit, so both reviewers' rankings of a prompt share it.
    # (the K-wise rows also hold prompt B's full tie, which gives no pair)
    units = dict(zip(kwise["train"]["prompt"], kwise["train"]["unit"]))
    assert set(pairwise["train"]["unit"]) == {units["prompt A"]} and units["prompt B"] != units["prompt A"]
    assert all(u.startswith("prompt:") for u in units.values())
    assert manifest["privacy_units"] == {"customer": 0, "conversation": 0, "prompt": 2}
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["ranking_ids"] == manifest["ranking_ids"] and len(on_disk["ranking_ids"]) == 3
    assert on_disk["counts"]["pairwise"] == {"train": 2, "test": 0}
    # JSONL and Parquet beside the folders, the same rows.
    assert on_disk["files"] == [f"{n}-{s}.{x}" for n in ("pairwise", "kwise") for s in ("train", "test")
                                for x in ("jsonl", "parquet")]
    lines = (tmp_path / "out" / "pairwise-train.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == pairwise["train"].to_list()
    assert (tmp_path / "out" / "pairwise-test.jsonl").read_text() == ""
    from_parquet = datasets.Dataset.from_parquet(str(tmp_path / "out" / "kwise-train.parquet"))
    assert from_parquet.to_list() == kwise["train"].to_list()
    with pytest.raises(UserError, match="no rankings match"):
        export_rankings(ranked, tmp_path / "none", ExportFilters(reviewers=["nobody"]), 0.0)


def test_chat_prompts_make_the_whole_export_conversational(sqlite_url):
    store = new_store(sqlite_url, k=2, reviewers_per_item=1)
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    items(store, [("plain", ["p0", "p1"]), (chat, ["c0", "c1"])])
    alice = store.add_user("alice", "plum-otter-41")
    rank_by_text(store, alice, {"p0": 2, "p1": 1}, "a")
    rank_by_text(store, alice, {"c0": 1, "c1": 2}, "b")
    rows = build_rows(load_rankings(store, ExportFilters()), 0.0)
    assert rows["conversational"] is True
    by_prompt = {json.dumps(r["prompt"]): (r["chosen"], r["rejected"]) for r in rows["pairwise"]["train"]}
    assert by_prompt == {
        json.dumps([{"role": "user", "content": "plain"}]):
            ([{"role": "assistant", "content": "p1"}], [{"role": "assistant", "content": "p0"}]),
        json.dumps(chat): ([{"role": "assistant", "content": "c0"}], [{"role": "assistant", "content": "c1"}]),
    }


def _twenty_ranked_prompts(sqlite_url):
    """20 prompts with two replies each, every one ranked by alice: (store, prompts)."""
    store = new_store(sqlite_url, k=2, reviewers_per_item=1)
    prompts = [f"question {i}" for i in range(20)]
    items(store, [(p, [f"{p} x", f"{p} yy"]) for p in prompts])
    alice = store.add_user("alice", "plum-otter-41")
    for i, p in enumerate(prompts):
        rank_by_text(store, alice, {f"{p} x": 1, f"{p} yy": 2}, f"k{i}")
    return store, prompts


def test_the_split_follows_the_prompt_hash_and_is_stable(sqlite_url, tmp_path):
    store, prompts = _twenty_ranked_prompts(sqlite_url)
    first = build_rows(load_rankings(store, ExportFilters()), 0.5)
    for split in ("train", "test"):
        assert all(prompt_split(r["prompt"], 0.5) == split for r in first["pairwise"][split])
    assert first["pairwise"]["test"] and first["pairwise"]["train"]
    again = build_rows(load_rankings(store, ExportFilters()), 0.5)
    assert first == again


def test_min_test_prompts_holds_out_enough_prompts_on_small_data(sqlite_url, tmp_path):
    """20 ranked prompts at test_fraction 0.1 hold out about 2; min_test_prompts 8 holds out exactly 8 (the
    real export, its manifest and its datasets), and the plain split's test prompts are among them."""
    store, prompts = _twenty_ranked_prompts(sqlite_url)
    plain = {p for p in prompts if prompt_split(p, 0.1) == "test"}
    assert len(plain) < 8
    manifest = export_rankings(store, tmp_path / "out", ExportFilters(), 0.1, min_test_prompts=8)
    test = datasets.load_from_disk(str(tmp_path / "out" / "kwise"))["test"]
    assert len(test) == 8 and plain <= set(test["prompt"])
    assert manifest["min_test_prompts"] == 8 and manifest["test_fraction"] == 0.1
    assert {p for p in prompts if prompt_split(p, manifest["test_threshold"]) == "test"} == set(test["prompt"])


def test_min_test_prompts_counts_only_prompts_with_a_usable_pair(sqlite_url):
    """Half the prompts ranked as a tie (no pair): min_test_prompts 4 holds out exactly 4 prompts that have a
    pair, whatever the tied ones do (found in the efficacy suite: 20 held-out prompts, 8 with a pair)."""
    store = new_store(sqlite_url, k=2, reviewers_per_item=1)
    prompts = [f"question {i}" for i in range(20)]
    items(store, [(p, [f"{p} x", f"{p} yy"]) for p in prompts])
    alice = store.add_user("alice", "plum-otter-41")
    tied = set(prompts[::2])
    for i, p in enumerate(prompts):
        rank_by_text(store, alice, {f"{p} x": 1, f"{p} yy": 1 if p in tied else 2}, f"k{i}")
    rows = build_rows(load_rankings(store, ExportFilters()), 0.01, min_test_prompts=4)
    held = {r["prompt"] for r in rows["kwise"]["test"]}
    assert len(held - tied) == 4 and {r["prompt"] for r in rows["pairwise"]["test"]} == held - tied
    assert all(prompt_split(p, rows["test_threshold"]) == ("test" if p in held else "train") for p in prompts)


def test_prompt_file_for_ppo(ranked, tmp_path):
    out = tmp_path / "prompts.jsonl"
    assert export_prompts(ranked, out) == 2
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"prompt": "prompt A"},
                                                                           {"prompt": "prompt B"}]
    with pytest.raises(UserError, match="not a folder"):
        export_prompts(ranked, tmp_path)

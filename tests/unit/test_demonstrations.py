"""Demonstration rows and the sample replies' score: pure functions, hand-computed values."""

from __future__ import annotations

import json

import pytest

from rlhf.align.demonstrations import parse_row, read_demonstrations, word_f1
from rlhf.errors import UserError


def test_word_f1_by_hand():
    # reply words: please(1) send(1) the(2) number(1) = 5; reference: send(1) the(1) order(1) number(1) = 4
    # overlap: send, the (once), number = 3 -> precision 3/5, recall 3/4, F1 = 2 * 0.6 * 0.75 / 1.35 = 2/3
    assert word_f1("Please send the the number", "Send the order number.") == pytest.approx(2 / 3)
    assert word_f1("", "anything") == 0.0 and word_f1("Yes.", "No.") == 0.0
    assert word_f1("Refund: 3-5 days", "refund 3 5 DAYS") == pytest.approx(1.0)


def test_rows_become_conversational_prompt_completion():
    plain = parse_row({"prompt": "Hi?", "completion": "Hello.", "source": "agent"}, "f:1")
    assert plain.row() == {"prompt": [{"role": "user", "content": "Hi?"}],
                           "completion": [{"role": "assistant", "content": "Hello."}]}
    assert plain.source == "agent"
    chat = parse_row({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo."}]}, "f:2")
    assert chat.prompt == [{"role": "user", "content": "Hi?"}] and chat.completion == "Yo." and \
        chat.source == "demonstration"
    listed = parse_row({"prompt": [{"role": "user", "content": "Hi?"}],
                        "completion": [{"role": "assistant", "content": "Yo."}]}, "f:3")
    assert listed.completion == "Yo."


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "Hi", "completion": ""}, "f:7: field 'completion': empty"),
    ({"prompt": "Hi", "completion": 3}, "f:7: field 'completion': must be text"),
    ({"prompt": [], "completion": "x"}, "f:7: field 'prompt': missing or empty"),
    ({"prompt": [{"role": "assistant", "content": "x"}], "completion": "x"}, "f:7: field 'prompt': prompt must not end"),
    ({"messages": [{"role": "user", "content": "x"}]}, "f:7: field 'messages': the last message must be"),
    (["not", "an", "object"], "f:7: expected an object"),
])
def test_bad_rows_name_the_place_and_field(row, message):
    with pytest.raises(UserError) as caught:
        parse_row(row, "f:7")
    assert str(caught.value).startswith(message)


def test_split_by_prompt_hash_and_export_splits_kept(tmp_path):
    import datasets

    from rlhf.schema import prompt_split

    rows = [{"prompt": f"question {i}?", "completion": f"answer {i}."} for i in range(40)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    demos = read_demonstrations([path], 0.25)
    expected_test = {r["prompt"] for r in rows if prompt_split(r["prompt"], 0.25) == "test"}
    assert {d.prompt[0]["content"] for d in demos.test} == expected_test and 0 < len(expected_test) < 40
    assert len(demos.train) + len(demos.test) == 40 and demos.train[0].where == f"{path}:1"

    export = tmp_path / "export"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:4])}
                         ).save_to_disk(str(export / "sft"))
    kept = read_demonstrations([export, path], 0.25)  # the export's own split is kept; the file is split by hash
    assert len(kept.test) == 1 + len(expected_test) and kept.sources == [str(export), str(path)]
    assert kept.test[0].where == f"{export / 'sft'} [test] row 0"

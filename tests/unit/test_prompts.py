"""Prompt files: every accepted format, and errors that name the line."""

import json

import pytest

from rlhf.errors import UserError
from rlhf.prompts import read_prompts


def test_jsonl_plain_and_chat(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "a?"}, {"prompt": [{"role": "user", "content": "b?"}]},
            {"messages": [{"role": "user", "content": "c?"}, {"role": "assistant", "content": "old"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_prompts(path) == ["a?", [{"role": "user", "content": "b?"}], [{"role": "user", "content": "c?"}]]


def test_txt(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\n\n two \n")
    assert read_prompts(path) == ["one", "two"]


def test_datasets_directory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["x", "y"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_prompts(tmp_path / "ds") == ["x", "y"]


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "ok"}\n{"prompt": "broken"\n', r"p.jsonl:2: malformed JSON"),
    ('{"prompt": "ok"}\n{"question": "x"}\n', r"p.jsonl:2: no 'prompt' or 'messages' field \(fields: question\)"),
    ('{"prompt": ""}\n', r"p.jsonl:1: prompt is empty"),
    ('[1, 2]\n', r"p.jsonl:1: expected an object"),
    ('\n\n', r"p.jsonl: no prompts found"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_prompts(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="prompts file not found"):
        read_prompts(tmp_path / "none.jsonl")


def test_binary_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not a UTF-8"):
        read_prompts(path)


def test_plain_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a dataset"):
        read_prompts(tmp_path)

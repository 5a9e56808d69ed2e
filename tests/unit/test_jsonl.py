"""The one JSONL reader (rlhf/jsonl.py): rows with where they came from, one-line errors."""

import pytest

from rlhf.errors import UserError
from rlhf.jsonl import jsonl_rows, read_text


def test_rows_skip_blank_lines_and_keep_their_line_numbers():
    text = '{"prompt": "a"}\n\n   \n[1, 2]\n"text"\n'
    assert list(jsonl_rows(text, "f.jsonl")) == [("f.jsonl:1", {"prompt": "a"}), ("f.jsonl:4", [1, 2]),
                                                 ("f.jsonl:5", "text")]
    assert list(jsonl_rows("", "empty.jsonl")) == []


def test_a_line_that_is_not_json_names_the_file_and_line():
    rows = jsonl_rows('{"prompt": "a"}\n\n{"prompt": \n', "dir/f.jsonl")
    assert next(rows) == ("dir/f.jsonl:1", {"prompt": "a"})
    with pytest.raises(UserError) as err:
        next(rows)
    assert str(err.value) == ("dir/f.jsonl:3: malformed JSON: Expecting value (each line must be one JSON value; "
                              "this one is not JSON)")


def test_read_text_drops_a_byte_order_mark_and_refuses_other_encodings(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n')
    assert list(jsonl_rows(read_text(tmp_path / "bom.jsonl"), "bom.jsonl")) == [("bom.jsonl:1", {"prompt": "a"})]
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.jsonl: not a UTF-8 text file"):
        read_text(tmp_path / "latin1.jsonl")

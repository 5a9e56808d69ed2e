"""Loading preference data: the export layout, TRL files, validation, counted drops, tokenization."""

import json

import pytest

from reward.data import (agreement_weights, load_preference_data, pair_agreement, reply_ids, tokenize_kwise,
                         tokenize_pairwise)
from rlhf.errors import UserError
from rlhf.schema import Ranking, prompt_key
from tests.reward.conftest import planted_rankings, write_export


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_export_layout_loads_with_its_split(planted_export):
    data = load_preference_data(planted_export)
    train, test = data.kwise["train"], data.kwise["test"]
    assert len(train) + len(test) == 48 and len(test) > 0
    assert not {prompt_key(p) for p in train["prompt"]} & {prompt_key(p) for p in test["prompt"]}
    assert len(data.pairwise["train"]) == 6 * len(train)  # K=4, no ties: 4*3/2 pairs per ranking
    assert "rankings" in data.manifest


def test_rankings_with_ties_to_kwise_and_pairs_exactly(tmp_path):
    rankings = [
        Ranking(prompt="p1", completions=["a", "b", "c"], ranks=[2, 1, 2], reviewer="ann", ranking_id=1),
        Ranking(prompt="p2", completions=["x", "y"], ranks=[1, 1], reviewer="ann", ranking_id=2),  # all tied
    ]
    path = _write_jsonl(tmp_path / "k.jsonl", [r.kwise().to_row() for r in rankings])
    data = load_preference_data(path, test_fraction=0.0)
    assert data.kwise["train"].to_list() == [
        {"prompt": "p1", "completions": ["a", "b", "c"], "ranks": [2, 1, 2], "reviewer": "ann", "ranking_id": 1}
    ]
    assert [(r["chosen"], r["rejected"]) for r in data.pairwise["train"]] == [("b", "a"), ("b", "c")]


def test_all_tied_rankings_are_counted(tmp_path, capsys):
    rows = [{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]},
            {"prompt": "q", "completions": ["a", "b"], "ranks": [1, 2]}]
    load_preference_data(_write_jsonl(tmp_path / "k.jsonl", rows), test_fraction=0.0)
    assert "dropped 1 of 2 rankings" in capsys.readouterr().err


def test_trl_pairwise_jsonl_plain_and_implicit_prompt(tmp_path):
    rows = [{"prompt": f"q{i} ", "chosen": "good", "rejected": "bad"} for i in range(20)]
    data = load_preference_data(_write_jsonl(tmp_path / "p.jsonl", rows), test_fraction=0.3)
    assert len(data.pairwise["train"]) + len(data.pairwise["test"]) == 20
    assert data.kwise["train"][0]["ranks"] == [1, 2]
    implicit = [{"chosen": "Q: hi A: good", "rejected": "Q: hi A: bad"}]
    data = load_preference_data(_write_jsonl(tmp_path / "i.jsonl", implicit), test_fraction=0.0)
    assert data.pairwise["train"][0] == {"prompt": "Q: hi A:", "chosen": " good", "rejected": " bad",
                                         "reviewer": "", "ranking_id": None}


def test_conversational_parquet_and_datasets_dir(tmp_path):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "y"}],
             "rejected": [{"role": "assistant", "content": "n"}]} for i in range(10)]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "dsdir"))
    for path in (tmp_path / "c.parquet", tmp_path / "dsdir"):
        data = load_preference_data(path, test_fraction=0.2)
        assert len(data.kwise["train"]) + len(data.kwise["test"]) == 10


@pytest.mark.parametrize("content, message", [
    ("", "the dataset is empty"),
    ('{"prompt": "p", "answer": "x"}\n', "columns answer, prompt: expected prompt, chosen, rejected"),
    ('{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]}\n', "no ranking has two replies"),
    ('{"prompt": "p", "completions": ["a", "b"], "ranks": [1]}\n', "row 0: 'completions' and 'ranks'"),
    ('{"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]}\n', "row 0: ranks must be integers >= 1"),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}\n', "row 0: empty prompt"),
    ('{"prompt": "p", "chosen": 3, "rejected": "b"}\n', "a reply must be text"),
    ('{"prompt": "p", "chosen": "a"\n', "cannot read preference data"),
])
def test_bad_data_is_a_user_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        load_preference_data(path, test_fraction=0.0)
    assert "bad.jsonl" in str(info.value)


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_preference_data(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unknown data format"):
        load_preference_data(tmp_path / "x.csv")


def test_reviewer_agreement_weights():
    a = {"prompt": "p", "completions": ["x", "y", "z"], "ranks": [1, 2, 3], "reviewer": "ann"}
    b = {"prompt": "p", "completions": ["y", "x", "z"], "ranks": [1, 2, 2], "reviewer": "bob"}  # x,y flipped; x,z tied
    agreement = pair_agreement([a, b])
    assert agreement[(prompt_key("p"), '"x"', '"y"')] == (1, 2)
    assert agreement[(prompt_key("p"), '"y"', '"x"')] == (1, 2)
    assert agreement[(prompt_key("p"), '"x"', '"z"')] == (1, 2)  # bob tied them: asked, not agreeing
    assert agreement[(prompt_key("p"), '"y"', '"z"')] == (2, 2)
    assert agreement_weights(a, agreement) == [[0.0, 0.5, 0.5], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_tokenize_counts_long_replies(tiny_model_dir, capsys):
    from datasets import Dataset

    from rlhf.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    limit = len(reply_ids(tok, "Hi ", "")) + 12  # the template's prompt, a short reply, not 50 words
    rows = [{"prompt": "Hi ", "completions": ["short", "long " * 50, "mid reply"], "ranks": [1, 2, 3]},
            {"prompt": "Yo ", "completions": ["ok", "long " * 50], "ranks": [1, 2]}]
    out = tokenize_kwise(Dataset.from_list(rows), tok, max_length=limit, weights=None)
    assert len(out) == 1 and out[0]["ranks"] == [1, 3]
    err = capsys.readouterr().err
    assert f"dropped 2 of 5 train replies: longer than {limit} tokens; 1 rankings lost every pair" in err
    pairs = Dataset.from_list([{"prompt": "Hi ", "chosen": "a", "rejected": "long " * 50},
                               {"prompt": "Hi ", "chosen": "a", "rejected": "b"}])
    assert len(tokenize_pairwise(pairs, tok, max_length=limit)) == 1
    assert f"dropped 1 of 2 train pairs: longer than {limit} tokens" in capsys.readouterr().err
    with pytest.raises(UserError, match="raise max_length"):
        tokenize_pairwise(pairs.select([0]), tok, max_length=limit)


def test_reward_model_reads_a_reply_as_ppo_hands_it_over(tiny_model_dir):
    """``reply_ids``: the prompt as the policy sees it (chat template, assistant turn opened), the
    reply's tokens and the end token, nothing after; a chat export's assistant message the same."""
    from rlhf.generation import render_prompt
    from rlhf.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    query = tok(render_prompt(tok, "Hi "), add_special_tokens=False)["input_ids"]
    reply = tok("short reply", add_special_tokens=False)["input_ids"]
    ids = reply_ids(tok, "Hi ", "short reply")
    assert ids == query + reply + [tok.eos_token_id]
    assert tok.decode(ids).endswith("<|im_start|>assistant\nshort reply<|im_end|>")
    chat = reply_ids(tok, [{"role": "user", "content": "Hi "}], [{"role": "assistant", "content": "short reply"}])
    assert chat == ids
    # the template's own rendering of the whole conversation, less the newline it puts after the end token
    full = tok.apply_chat_template([{"role": "user", "content": "Hi "}, {"role": "assistant", "content": "short reply"}],
                                   tokenize=True, return_dict=True)["input_ids"]
    assert full[:len(ids)] == ids and tok.decode(full[len(ids):]) == "\n"


def test_export_helper_matches_schema_counts(tmp_path):
    out = write_export(tmp_path / "e", planted_rankings(8, k=3, reviewers=("ann", "bob")))
    data = load_preference_data(out)
    assert len(data.kwise["train"]) + len(data.kwise["test"]) == 16


def test_split_half_partitions_the_prompts_and_keeps_a_prompt_on_one_side():
    from datasets import Dataset

    from reward.data import split_half

    prompts = [f"question {i}" for i in range(40) for _ in range(2)]  # two rankings per prompt
    train = Dataset.from_dict({"prompt": prompts, "ranking_id": list(range(len(prompts)))})
    first, second = split_half(train, "first"), split_half(train, "second")
    assert split_half(train, "all") is train
    assert sorted(list(first["ranking_id"]) + list(second["ranking_id"])) == list(range(len(prompts)))
    assert not set(first["prompt"]) & set(second["prompt"])
    assert 10 <= len(set(second["prompt"])) <= 30  # a hash: about half of 40 prompts
    assert list(split_half(train, "second")["ranking_id"]) == list(second["ranking_id"])  # the same every time

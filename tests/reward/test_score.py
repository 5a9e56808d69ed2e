"""``rlhf reward score`` for real: a tiny reward model trained on the planted preference scores the
replies of an ``rlhf generate --output`` file; the file it writes matches scoring in-process."""

import json

import pytest

from rlhf.schema import ScoredReplies
from tests.conftest import run_cli
from tests.reward.conftest import FILLER


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory, tiny_model_dir, planted_export):
    out = tmp_path_factory.mktemp("rm") / "rm"
    result = run_cli("reward", "train", "--config", "configs/reward/tiny.yaml", "--model", str(tiny_model_dir),
                     "--policy-model", str(tiny_model_dir), "--data", str(planted_export),
                     "--output-dir", str(out), "--max-steps", "24")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_score_writes_every_reply_s_reward_and_length(tmp_path, tiny_reward_model):
    from reward.data import reply_ids
    from reward.evaluate import score_ids
    from rlhf.modeling import load_score_model, load_tokenizer

    # Replies in the planted data's form: filler plus one quality word ("excellent" beats "awful").
    filler = " ".join(FILLER[:5])
    rows = [{"prompt": f"Question {i} about my refund: what should I do?",
             "replies": [f"{filler} excellent {filler}", f"{filler} awful {filler}"]} for i in range(6)]
    rows.append({"prompt": [{"role": "user", "content": "Where is my order?"}], "replies": ["It ships today."]})
    replies = tmp_path / "eval" / "aligned.jsonl"
    replies.parent.mkdir()
    replies.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval" / "aligned.scores.json"
    result = run_cli("reward", "score", "--reward-model", str(tiny_reward_model), "--replies", str(replies),
                     "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "13 replies to 7 prompts" in result.stdout

    scored = ScoredReplies.from_dict(json.loads(out.read_text()))
    assert scored.prompts == [r["prompt"] for r in rows] and scored.replies == [r["replies"] for r in rows]
    assert scored.max_length == 128 and scored.left_out == 0  # configs/reward/tiny.yaml trains with 128
    assert (tmp_path / "eval" / "aligned.scores.config.yaml").is_file()
    # The reward model learned the planted preference: "excellent" above "awful" on every prompt.
    assert all(s[0] > s[1] for s in scored.scores[:6]), scored.scores
    # The same numbers as scoring in this process; lengths are the reply's own tokens.
    tokenizer = load_tokenizer(str(tiny_reward_model), padding_side="right")
    model = load_score_model(str(tiny_reward_model))
    ids = [reply_ids(tokenizer, r["prompt"], [{"role": "assistant", "content": reply}] if isinstance(r["prompt"], list)
                     else reply) for r in rows for reply in r["replies"]]
    assert scored.flat_scores() == pytest.approx(score_ids(model, ids, tokenizer.pad_token_id), abs=1e-5)
    assert scored.lengths[-1] == [len(tokenizer("It ships today.", add_special_tokens=False)["input_ids"])]


def test_score_leaves_out_replies_longer_than_max_length(tmp_path, tiny_reward_model):
    replies = tmp_path / "r.jsonl"
    replies.write_text(json.dumps({"prompt": "Hi", "replies": ["ok", "word " * 40]}) + "\n")
    out = tmp_path / "s.json"
    result = run_cli("reward", "score", "--reward-model", str(tiny_reward_model), "--replies", str(replies),
                     "--output", str(out), "--max-length", "60")
    assert result.returncode == 0, result.stderr[-3000:]
    scored = ScoredReplies.from_dict(json.loads(out.read_text()))
    assert scored.scores[0][0] is not None and scored.scores[0][1] is None and scored.left_out == 1
    assert scored.flat_scores() == [scored.scores[0][0]] and "1 too long" in result.stdout


@pytest.mark.parametrize("content, flags, message", [
    ('{"prompt": "a", "replies": ["x"]}\n{not json\n', [], "r.jsonl:2"),
    ('{"prompt": "a", "replies": "x"}\n', [], "r.jsonl:1: expected"),
    ('{"prompt": "a", "replies": ["x"]}\n', ["--batch-size", "0"], "batch_size"),
    ('{"prompt": "a", "replies": ["x"]}\n', ["--reward-model", "/nonexistent"], "not a reward model checkpoint"),
])
def test_score_bad_input_is_one_line(tmp_path, tiny_reward_model, content, flags, message):
    replies = tmp_path / "r.jsonl"
    replies.write_text(content)
    result = run_cli("reward", "score", "--reward-model", str(tiny_reward_model), "--replies", str(replies),
                     "--output", str(tmp_path / "s.json"), *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and not (tmp_path / "s.json").exists()


def test_score_needs_its_three_paths(tmp_path):
    result = run_cli("reward", "score", "--replies", str(tmp_path / "r.jsonl"), "--output", str(tmp_path / "s.json"))
    assert result.returncode == 2 and result.stderr.strip() == "error: give --reward-model (see rlhf reward score --help)"

"""The bundled model converts, reloads, and talks; tiny models share its tokenizer and pad policy."""

import torch

from rlhf import modeling
from rlhf.generation import SamplingSettings, generate_replies


def test_bundled_model_is_a_plain_cached_directory(bundled_model_dir):
    files = {p.name for p in bundled_model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= files
    assert modeling.is_complete(bundled_model_dir)
    # idempotent: a second prepare returns the same folder without converting again
    mtime = (bundled_model_dir / "model.safetensors").stat().st_mtime
    assert modeling.prepare_bundled_model(progress=False) == bundled_model_dir
    assert (bundled_model_dir / "model.safetensors").stat().st_mtime == mtime


def test_pad_differs_from_eos_and_padding_sides_are_independent(bundled_model_dir):
    left = modeling.load_tokenizer(bundled_model_dir, padding_side="left")
    right = modeling.load_tokenizer(bundled_model_dir, padding_side="right")
    assert left.pad_token_id != left.eos_token_id
    assert left.pad_token == "<empty_output>"  # an unused special token, no new embedding row
    assert len(left) == 49152
    assert left.padding_side == "left" and right.padding_side == "right"
    assert left is not right
    assert left.chat_template


def test_bundled_model_answers_a_support_question(bundled_model_dir):
    tokenizer = modeling.load_tokenizer(bundled_model_dir, padding_side="left")
    model = modeling.load_policy(bundled_model_dir)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    [[reply]] = generate_replies(model, tokenizer, ["How do I reset my password?"],
                                 sampling=SamplingSettings(max_new_tokens=24, temperature=0), progress=False)
    words = reply.split()
    assert len(words) >= 5
    english = {"the", "you", "your", "to", "a", "and", "password", "can", "i", "reset", "is", "of"}
    assert sum(w.lower().strip(".,!:") in english for w in words) >= 2, reply


def test_tiny_model_loads_as_policy_and_scorer_with_the_same_tokenizer(tiny_model_dir, bundled_model_dir):
    policy = modeling.load_policy(tiny_model_dir)
    scorer = modeling.load_score_model(tiny_model_dir)
    tok = modeling.load_tokenizer(tiny_model_dir, padding_side="right")
    modeling.check_same_vocabulary(modeling.load_tokenizer(bundled_model_dir), tok)
    assert sum(p.numel() for p in policy.parameters()) < 5_000_000
    assert scorer.config.num_labels == 1 and scorer.config.pad_token_id == tok.pad_token_id
    batch = tok(["short", "a somewhat longer text here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = scorer(**batch).logits
    assert scores.shape == (2, 1)
    # padding must not change a sequence's score: the head reads the last non-pad token
    with torch.no_grad():
        alone = scorer(**tok(["short"], return_tensors="pt")).logits
    assert torch.allclose(alone[0], scores[0], atol=1e-5)
    # left-padded generation works on the tiny policy too
    gen_tok = modeling.load_tokenizer(tiny_model_dir, padding_side="left")
    out = generate_replies(policy, gen_tok, ["hi", "hello there"], num_replies=2,
                           sampling=SamplingSettings(max_new_tokens=4), progress=False)
    assert [len(r) for r in out] == [2, 2]

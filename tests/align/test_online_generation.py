"""GRPO's (and RLOO's: the same build code) groups of replies sampled by rlhf.decode's loop, on tiny models:
the log says which path ran, TRL's sampling settings reach the loop, and the replies it hands TRL end at
an EOS followed by padding. The fallback under ZeRO-3 is checked by the 2-process launch
(tests/align/test_align_distributed.py); the loop's log-probabilities by tests/ppo/test_decode.py."""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig

from tests.align.conftest import REPO


def _config(policy, reward, out, **overrides):
    from rlhf.align.config import GRPORunConfig
    from rlhf.config import load_config

    return load_config(GRPORunConfig, REPO / "configs" / "grpo" / "tiny.yaml",
                       {"policy": str(policy), "reward_model": str(reward), "output_dir": str(out),
                        "num_eval_prompts": 0, **overrides})


def _count_decode_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every call of the real rlhf.decode.decode (a counting wrapper around it)."""
    import rlhf.decode

    calls, real = [], rlhf.decode.decode

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(rlhf.decode, "decode", counted)
    return calls


def test_grpo_samples_its_groups_with_the_fast_loop_and_replies_end_with_eos_then_pad(
        tmp_path, tiny_model_dir, tiny_reward_dir, capfd, monkeypatch):
    from rlhf.align import online

    calls = _count_decode_calls(monkeypatch)
    trainer = online.build_trainer(_config(tiny_model_dir, tiny_reward_dir, tmp_path / "run", total_updates=1))
    assert trainer.train() == 1
    assert "generation: the fast decode loop (rlhf.decode)" in capfd.readouterr().err
    tok = trainer.processing_class
    # TRL's sampling settings reached the loop: temperature, top-k/top-p, reply length, EOS, pad
    assert calls and all(c["do_sample"] and c["temperature"] == 0.7 and c["top_k"] == 0 and c["top_p"] == 1.0
                         and c["max_new_tokens"] == 8 and c["eos_token_id"] == tok.eos_token_id
                         and c["pad_token_id"] == tok.pad_token_id for c in calls)

    # TRL's own call shape, on the trained policy: greedy first, then TRL's config with top_k=1 (sampling
    # that can only follow the greedy path) and a second stop token taken from row 0's greedy reply.
    policy = trainer.accelerator.unwrap_model(trainer.model)
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in ("Where is my parcel?", "Hi", "My card was charged twice, please help me now", "Refund?")]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    n = enc["input_ids"].shape[1]
    greedy = policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             generation_config=GenerationConfig(max_new_tokens=8, do_sample=False,
                                                                pad_token_id=tok.pad_token_id,
                                                                eos_token_id=tok.eos_token_id))[:, n:]
    stop = int(greedy[0, 2])
    config = copy.deepcopy(trainer.generation_config)
    config.top_k, config.eos_token_id = 1, [tok.eos_token_id, stop]
    before = len(calls)
    replies = policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                              generation_config=config)[:, n:]
    assert len(calls) == before + 1 and calls[-1]["top_k"] == 1
    assert replies.shape[1] <= 8
    ended = 0
    for row, path in zip(replies.tolist(), greedy.tolist()):
        hits = [i for i, t in enumerate(row) if t in (tok.eos_token_id, stop)]
        end = hits[0] if hits else len(row) - 1
        assert row[:end + 1] == path[:end + 1]  # top_k=1 follows the greedy path up to its stop token
        assert all(t == tok.pad_token_id for t in row[end + 1:])  # then padding only
        assert tok.pad_token_id not in row[:end + 1]
        ended += bool(hits)
    assert ended >= 1 and replies[0, min(2, replies.shape[1] - 1)] != tok.pad_token_id


def test_generation_backend_transformers_keeps_generate(tmp_path, tiny_model_dir, tiny_reward_dir, capfd,
                                                        monkeypatch):
    from rlhf.align import online

    calls = _count_decode_calls(monkeypatch)
    trainer = online.build_trainer(_config(tiny_model_dir, tiny_reward_dir, tmp_path / "run",
                                           generation_backend="transformers"))
    assert "generation: transformers' generate() (generation_backend: transformers)" in capfd.readouterr().err
    tok = trainer.processing_class
    enc = tok(["Hello there"], return_tensors="pt", add_special_tokens=False)
    out = trainer.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 generation_config=GenerationConfig(max_new_tokens=3, do_sample=False,
                                                                    pad_token_id=tok.pad_token_id))
    assert out.shape == (1, enc["input_ids"].shape[1] + 3) and not calls
    assert torch.equal(out[:, :enc["input_ids"].shape[1]], enc["input_ids"])

"""DPO's loss as `rlhf dpo` wires TRL's DPOTrainer, on a hand-made pair batch against values worked out by hand.

A policy whose weights are all zero gives every token the same logit, so each of the V vocabulary
tokens has log-probability -ln V after any prefix: a reply of n tokens has log-probability -n ln V,
under the policy and under the reference (the same weights with the LoRA adapter off, whose B starts
at zero). The implicit rewards are then 0, their margin 0, and the loss -log sigmoid(0) = ln 2.
"""

from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def uniform_policy_dir(tmp_path_factory, tiny_model_dir):
    from rlhf.modeling import load_policy, load_tokenizer

    model = load_policy(tiny_model_dir)
    for param in model.parameters():
        param.data.zero_()
    out = tmp_path_factory.mktemp("uniform") / "policy"
    model.save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    return out


def test_loss_and_log_probs_on_a_hand_made_batch(uniform_policy_dir, tiny_export_dir, tmp_path):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from rlhf.align.config import DPORunConfig
    from rlhf.align.dpo import build_trainer

    config = DPORunConfig(policy=str(uniform_policy_dir), data=str(tiny_export_dir), output_dir=str(tmp_path / "run"),
                          beta=0.1, num_eval_prompts=0, lora={"r": 4, "alpha": 8})
    trainer = build_trainer(config)
    vocab = trainer.accelerator.unwrap_model(trainer.model).config.vocab_size
    # Two pairs: replies of 3 and 1 tokens after a 3-token prompt; of 1 and 2 tokens after a 2-token prompt.
    batch = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)([
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5, 6], "rejected_ids": [7]},
        {"prompt_ids": [8, 9], "chosen_ids": [10], "rejected_ids": [11, 12]},
    ])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    ln_v = math.log(vocab)
    assert metrics["logps/chosen"] == pytest.approx(-(3 + 1) / 2 * ln_v, rel=1e-5)  # mean over the two pairs
    assert metrics["logps/rejected"] == pytest.approx(-(1 + 2) / 2 * ln_v, rel=1e-5)
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    loss.backward()  # the loss reaches the adapter: its A matrices get gradients (B is zero, so A's are zero too)
    assert any(p.grad is not None for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert all(p.grad is None for n, p in trainer.model.named_parameters() if "lora_" not in n)

"""Pure pieces of the PPO stage against hand-computed values."""

import numpy as np
import pytest
import torch

from rlhf.errors import UserError
from rlhf.ppo.config import PPORunConfig
from rlhf.ppo.data import batch_indices
from rlhf.ppo.metrics import reply_stats
from rlhf.ppo.trainer import centred_head, check_run_config


def test_centred_head_outputs_standardised_score():
    w, b = torch.tensor([[2.0, -1.0]]), None
    new_w, new_b = centred_head(w, b, mean=1.0, std=2.0)
    h = torch.tensor([3.0, 1.0])  # raw score 2*3 - 1 = 5 -> (5 - 1) / 2 = 2
    assert torch.allclose(new_w @ h + new_b, torch.tensor([2.0]))
    assert torch.allclose(new_w, torch.tensor([[1.0, -0.5]])) and torch.allclose(new_b, torch.tensor([-0.5]))


def test_batch_indices_cover_each_epoch_once_and_are_reproducible():
    first = [batch_indices(10, 4, u, seed=3) for u in range(2)]  # 2 batches per epoch, 2 prompts dropped
    assert len(set(np.concatenate(first))) == 8
    assert all(np.array_equal(a, batch_indices(10, 4, u, seed=3)) for u, a in enumerate(first))
    assert not np.array_equal(batch_indices(10, 4, 2, seed=3), first[0])  # a new epoch, a new order
    with pytest.raises(UserError, match="fewer than one rollout batch"):
        batch_indices(3, 4, 0, seed=0)


def test_reply_stats_by_hand():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    ids = torch.tensor([[5, 2, 9, 9], [5, 6, 7, 8]])  # EOS id 2 ends the first reply only
    assert reply_stats(mask, ids, eos_token_id=2) == (3.5, 0.5)


def _config(**kw):
    return PPORunConfig(reward_model="r", prompts_file="p", **kw)


def test_whitening_needs_minibatches_of_eight():
    with pytest.raises(UserError, match="at least 8"):
        check_run_config(_config(whiten_rewards=True, per_device_batch_size=4), 1, 0)
    check_run_config(_config(whiten_rewards=True, per_device_batch_size=8), 1, 0)


def test_zero3_refuses_lora_modules_to_save():
    config = _config(lora={"modules_to_save": ["lm_head"]})
    with pytest.raises(UserError, match="ZeRO-3"):
        check_run_config(config, 2, 3)
    check_run_config(config, 2, 2)


def test_value_adapter_layers_need_the_value_adapter():
    with pytest.raises(UserError, match="value_lora_top_layers .* needs value_lora: true"):
        check_run_config(_config(value_lora_top_layers=8), 1, 0)
    check_run_config(_config(value_lora=True, value_lora_top_layers=8), 1, 0)


def test_fingerprint_ignores_only_invocation_fields():
    base = _config()
    assert base.fingerprint() == _config(stop_after_updates=2, save_every=1, output_dir="x").fingerprint()
    assert base.fingerprint() != _config(learning_rate=2e-5).fingerprint()


def test_value_adapter_in_the_top_layers_only_and_no_gradient_below_them(tiny_reward_dir):
    """value_lora_top_layers: the adapter sits in the last layers, and the backward pass never reaches
    the layers under it (nothing there needs a gradient)."""
    from rlhf.modeling import load_score_model
    from rlhf.ppo.config import LoraSettings
    from rlhf.ppo.trainer import add_value_adapter

    model = load_score_model(tiny_reward_dir)  # 2 layers
    add_value_adapter(model, LoraSettings(r=2, alpha=4), top_layers=1)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith("score.") or ".layers.1." in name for name in trainable)
    assert any(".layers.1." in name and "lora_A" in name for name in trainable)
    in_graph = []  # whether each layer's output takes part in the backward pass
    for layer in model.model.layers:
        layer.register_forward_hook(lambda m, a, out: in_graph.append((out[0] if isinstance(out, tuple) else out)
                                                                      .requires_grad))
    ids = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    assert in_graph == [False, True]
    assert all(p.grad is not None for name, p in model.named_parameters() if p.requires_grad and "lora_A" in name)

    full = load_score_model(tiny_reward_dir)
    add_value_adapter(full, LoraSettings(r=2, alpha=4))
    assert any(".layers.0." in name for name, p in full.named_parameters() if p.requires_grad)

"""One LoRA section for every stage (stage defaults for ``enabled``), and one ZeRO-stage reader."""

from __future__ import annotations

import pytest

from reward.config import RewardTrainConfig
from rlhf.config import validate
from rlhf.lora import LoraSettings, lora_config
from rlhf.ppo.config import PPORunConfig
from rlhf.runtime import zero_stage
from tests.conftest import REPO

PPO_REQUIRED = {"reward_model": "rm", "prompts_file": "p.jsonl"}


@pytest.mark.parametrize("lora, ppo, reward", [
    (None, True, False),                   # no section: the stage's default
    ({"r": 4}, True, False),               # a section without 'enabled': still the stage's default
    ({"enabled": True}, True, True),
    ({"enabled": False}, False, False),
])
def test_enabled_takes_the_stage_default_only_when_unset(lora, ppo, reward):
    extra = {"lora": lora} if lora is not None else {}
    assert validate(PPORunConfig, {**PPO_REQUIRED, **extra}, "t").lora.enabled is ppo
    assert validate(RewardTrainConfig, extra, "t").lora.enabled is reward


def test_unknown_lora_key_is_refused_with_the_known_ones():
    from rlhf.errors import UserError

    with pytest.raises(UserError, match=r"unknown field 'lora.rank' \(known: alpha, dropout, enabled, modules_to_save"):
        validate(RewardTrainConfig, {"lora": {"rank": 3}}, "t")


def test_lora_config_carries_every_setting():
    settings = LoraSettings(enabled=True, r=4, alpha=8, dropout=0.1, target_modules=["q_proj"],
                            modules_to_save=["lm_head"])
    config = lora_config(settings, "CAUSAL_LM")
    assert (config.task_type, config.r, config.lora_alpha, config.lora_dropout) == ("CAUSAL_LM", 4, 8, 0.1)
    assert set(config.target_modules) == {"q_proj"} and config.modules_to_save == ["lm_head"]
    reward = lora_config(LoraSettings(), "SEQ_CLS")
    assert reward.task_type == "SEQ_CLS" and reward.modules_to_save is None  # peft adds the score head itself


@pytest.mark.parametrize("env, stage", [
    ({}, 0),                                                                      # not under DeepSpeed
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, 0),                                # a stray variable alone
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, 3),  # --zero_stage 3
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, 2),                                    # accelerate's default
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/deepspeed/zero3.json"}, 3),
    # the JSON file wins over --zero_stage, as it does for the DeepSpeed engine the trainer builds
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
      "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/deepspeed/zero2.json"}, 2),
])
def test_zero_stage_as_accelerate_launch_sets_it(env, stage, monkeypatch):
    monkeypatch.chdir(REPO)
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                "ACCELERATE_CONFIG_DS_FIELDS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert zero_stage() == stage

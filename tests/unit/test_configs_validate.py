"""Every YAML file shipped in configs/ validates against the config it belongs to."""

from pathlib import Path

import pytest
import yaml

from rlhf.config import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))


def _config_class(path: Path):
    """The config class for a file, by its folder. Stage issues add their folders here."""
    rel = path.relative_to(REPO / "configs")
    if rel.parts[0] == "generate.yaml":
        from rlhf.commands import GenerateConfig

        return GenerateConfig
    if rel.parts[0] == "app":
        from feedback_app.config import AppConfig, DemoConfig

        return DemoConfig if rel.name == "demo.yaml" else AppConfig  # `rlhf app demo --config` reads it
    if rel.parts[0] == "ppo":
        from rlhf.ppo.config import PPORunConfig

        return PPORunConfig
    if rel.parts[0] in ("grpo", "rloo", "dpo", "sft"):
        from rlhf.align.config import CONFIGS

        return CONFIGS[rel.parts[0]]
    if rel.parts[0] == "quickstart":
        from rlhf.pipeline import QuickstartConfig

        return QuickstartConfig
    if rel.parts[0] == "reward":
        from reward.config import RewardTrainConfig

        return RewardTrainConfig
    return None


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_config_file_validates(path):
    rel = path.relative_to(REPO / "configs")
    if rel.parts[0] == "accelerate":
        from accelerate.commands.config.config_args import load_config_from_file

        cfg = load_config_from_file(str(path))
        assert cfg.num_processes >= 1
        ds = (cfg.deepspeed_config or {}).get("deepspeed_config_file")
        if ds:
            assert (REPO / ds).is_file(), f"{path} points at missing {ds}"
        return
    cls = _config_class(path)
    assert cls is not None, f"{rel}: no config class registered for this file (tests/unit/test_configs_validate.py)"
    load_config(cls, path)

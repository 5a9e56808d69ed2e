"""Typed configs: YAML then flags; errors name the file and the field."""

import argparse

import pytest
from pydantic import Field

from rlhf.config import Config, add_config_flags, config_from_args, load_config, save_resolved
from rlhf.errors import UserError


class Lora(Config):
    r: int = Field(8, ge=1)
    alpha: float = 16.0


class Demo(Config):
    model: str = "bundled"
    steps: int = Field(10, ge=1)
    lora: Lora | None = None
    tags: list[str] = Field(default_factory=list)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Demo)
    return config_from_args(Demo, parser.parse_args(argv))


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m1\nsteps: 3\nlora:\n  r: 4\n")
    cfg = _parse(["--config", str(path), "--steps", "7", "--lora.alpha", "2", "--tags", "[a, b]"])
    assert cfg.model == "m1" and cfg.steps == 7 and cfg.lora.r == 4 and cfg.lora.alpha == 2.0
    assert cfg.tags == ["a", "b"]


def test_string_flag_stays_string():
    assert _parse(["--model", "true"]).model == "true"


def test_unknown_key_names_file_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stepz: 3\n")
    with pytest.raises(UserError, match=r"c.yaml: unknown field 'stepz' \(known: lora, model, steps, tags\)"):
        load_config(Demo, path)


def test_nested_unknown_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora:\n  rank: 3\n")
    with pytest.raises(UserError, match=r"unknown field 'lora.rank' \(known: alpha, r\)"):
        load_config(Demo, path)


def test_bad_value_names_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: many\n")
    with pytest.raises(UserError, match=r"c.yaml: field 'steps': .*integer.*'many'"):
        load_config(Demo, path)


def test_out_of_range_flag():
    with pytest.raises(UserError, match=r"command line: field 'steps': .*greater than or equal to 1"):
        _parse(["--steps", "0"])


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: ok\nsteps: [1, 2\n")
    with pytest.raises(UserError, match=r"c.yaml:\d+: malformed YAML"):
        load_config(Demo, path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(Demo, tmp_path / "nope.yaml")


def test_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_config(Demo, path)


def test_resolved_config_round_trips(tmp_path):
    cfg = Demo(steps=5, lora=Lora(r=2))
    written = save_resolved(cfg, tmp_path / "run")
    assert load_config(Demo, written) == cfg

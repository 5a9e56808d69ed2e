"""A checkpoint resumes only under the launch that wrote it (rlhf.checkpoint.read_state's ``launch``):
hand-made ``rlhf_state.json`` files, no model."""

from __future__ import annotations

import json

import pytest

from rlhf.checkpoint import describe_launch, read_state
from rlhf.errors import UserError


def _checkpoint(tmp_path, **meta):
    path = tmp_path / "checkpoints" / "step-000002"
    path.mkdir(parents=True)
    (path / "rlhf_state.json").write_text(json.dumps({"config_fingerprint": "abc", "step": 2, **meta}))
    return path


@pytest.mark.parametrize("world, stage, text", [
    (1, 0, "1 process"),
    (2, 0, "2 processes (DDP)"),
    (2, 2, "2 processes under DeepSpeed ZeRO-2"),
    (2, 3, "2 processes under DeepSpeed ZeRO-3"),
])
def test_describe_launch(world, stage, text):
    assert describe_launch(world, stage) == text


def test_the_launch_that_wrote_it_resumes(tmp_path):
    path = _checkpoint(tmp_path, world_size=2, zero_stage=3)
    assert read_state(path, fingerprint="abc", launch=(2, 3))["step"] == 2
    assert read_state(path)["step"] == 2  # export reads it without a launch


@pytest.mark.parametrize("launch, said", [
    ((1, 0), "this launch is 1 process;"),                          # accelerate launch forgotten
    ((2, 2), "this launch is 2 processes under DeepSpeed ZeRO-2;"),  # another stage: other shards
    ((4, 3), "this launch is 4 processes under DeepSpeed ZeRO-3;"),  # another world size
])
def test_another_launch_is_refused_in_one_line(tmp_path, launch, said):
    path = _checkpoint(tmp_path, world_size=2, zero_stage=3)
    with pytest.raises(UserError) as caught:
        read_state(path, fingerprint="abc", launch=launch)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: written by 2 processes under DeepSpeed ZeRO-3, but {said}")
    assert "resume under the launch that wrote it" in message


def test_a_checkpoint_without_launch_metadata_is_not_refused(tmp_path):
    # Written before world_size and zero_stage were recorded: nothing to compare.
    assert read_state(_checkpoint(tmp_path), fingerprint="abc", launch=(2, 3))["step"] == 2

"""Bad input to `rlhf grpo|rloo|dpo`: one line naming the field, exit 2, before TRL or any model is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.align.conftest import align_args
from tests.conftest import REPO

# Runs the real CLI in a fresh interpreter, then reports whether TRL (hence any trainer or model) was imported.
PROBE = """
import json, sys
from rlhf.cli import main
code = main(json.loads(sys.argv[1]))
print(json.dumps({"code": code, "trl": "trl" in sys.modules, "torch": "torch" in sys.modules}))
"""


def _refused(argv: list[str], env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    err = proc.stderr.strip().splitlines()
    assert report == {"code": 2, "trl": False, "torch": False}, (report, proc.stderr[-2000:])
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
    return err[0]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_one_reply_per_prompt(algorithm, tmp_path):
    line = _refused(align_args(algorithm, tmp_path / "policy", tmp_path / "o", tmp_path / "reward", None,
                               "--num-generations", "1"))
    assert "field 'num_generations'" in line and "at least 2" in line


def test_generation_batch_not_made_of_whole_groups(tmp_path):
    line = _refused(align_args("grpo", tmp_path / "policy", tmp_path / "o", tmp_path / "reward", None,
                               "--num-generations", "3"))
    assert "field 'num_generations'" in line and "= 4 replies is not divisible by num_generations=3" in line


def test_generation_batch_counts_every_process(tmp_path):
    """Under 'accelerate launch' the generation batch spans the processes (WORLD_SIZE)."""
    line = _refused(align_args("rloo", tmp_path / "policy", tmp_path / "o", tmp_path / "reward", None,
                               "--num-generations", "3"), env={"WORLD_SIZE": "2"})
    assert "= 4 x 2 x 1 = 8 replies is not divisible by num_generations=3" in line


def test_checkpoints_must_fall_where_replies_are_sampled(tmp_path):
    """num_iterations 3: tiny.yaml's 4 updates and checkpoints every 2 would cut a batch of replies."""
    line = _refused(align_args("rloo", tmp_path / "policy", tmp_path / "o", tmp_path / "reward", None,
                               "--num-iterations", "3"))
    assert "field 'total_updates': 4 is not a multiple of num_iterations=3" in line
    line = _refused(align_args("grpo", tmp_path / "policy", tmp_path / "o", tmp_path / "reward", None,
                               "--num-iterations", "2", "--stop-after-updates", "3"))
    assert "field 'stop_after_updates': 3 is not a multiple of num_iterations=2" in line


def test_dpo_given_a_reward_model(tmp_path):
    line = _refused(align_args("dpo", tmp_path / "policy", tmp_path / "o", tmp_path / "reward", tmp_path / "data"))
    assert "field 'reward_model'" in line and "DPO uses no reward model" in line


def test_beta_zero_is_refused(tmp_path):
    """TRL's GRPO default beta=0 would drop the reference entirely."""
    line = _refused(align_args("grpo", tmp_path / "policy", tmp_path / "o", tmp_path / "reward", None,
                               "--beta", "0"))
    assert "field 'beta'" in line


def test_dpo_data_errors_name_the_file(capsys, tmp_path):
    from rlhf.cli import main

    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"question": "q", "good": "a"}) + "\n")
    code = main(align_args("dpo", tmp_path / "policy", tmp_path / "o", None, bad))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and str(bad) in err[-1] and "expected prompt, chosen" in err[-1]
    code = main(align_args("dpo", tmp_path / "policy", tmp_path / "o", None, tmp_path / "missing"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "preference data not found" in err[-1]

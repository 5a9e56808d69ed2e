"""The loop's --algorithm: each algorithm's training command as the loop builds it, checked by that command
itself (--validate-only, as the loop does before any stage runs), and a bad override refused up front."""

from __future__ import annotations

import pytest

from rlhf.errors import UserError


def _run(tmp_path, **fields):
    from rlhf.pipeline import QuickstartConfig, Run

    config = QuickstartConfig(rule="-text.lower().count('sorry')", **fields)
    return Run(config, tmp_path)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "dpo"])
def test_the_loop_builds_a_valid_training_command(algorithm, tmp_path):
    from rlhf.pipeline import check_stage_settings, policy_args

    run = _run(tmp_path, algorithm=algorithm, align_flags={"total_updates": 3})
    args = policy_args(run)
    assert args[:3] == [algorithm, "--config", f"configs/{algorithm}/default.yaml"]
    assert ("--data" in args) == (algorithm == "dpo") and ("--reward-model" in args) == (algorithm != "dpo")
    assert args[args.index("--output-dir") + 1] == str(tmp_path / algorithm)
    check_stage_settings(run, "test config")  # runs 'rlhf reward train' and 'rlhf <algorithm>' --validate-only


def test_an_override_the_algorithm_cannot_use_is_refused_before_any_stage(tmp_path):
    from rlhf.pipeline import check_stage_settings

    run = _run(tmp_path, algorithm="grpo", align_flags={"num_generations": 1})
    with pytest.raises(UserError, match=r"align_config \+ align_flags: .*num_generations"):
        check_stage_settings(run, "test config")


def test_ppo_stays_the_default(tmp_path):
    from rlhf.pipeline import policy_args

    assert policy_args(_run(tmp_path))[0] == "ppo"

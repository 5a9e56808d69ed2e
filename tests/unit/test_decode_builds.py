"""Old builds of the decode step's C++ extension are pruned, the current one and recent ones kept."""

from __future__ import annotations

import os
import time

from rlhf.decode_native import prune_builds


def test_builds_unused_for_two_weeks_are_removed_the_rest_kept(tmp_path):
    now = time.time()
    ages = {"rlhf_decode_step_current": 40, "rlhf_decode_step_old": 15, "rlhf_decode_step_recent": 2,
            "deepspeed_shm_comm": 400}
    for name, days in ages.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "step.so").write_bytes(b"x")
        os.utime(tmp_path / name, (now - days * 86400, now - days * 86400))
    (tmp_path / "rlhf_decode_step_file").write_text("not a folder")
    os.utime(tmp_path / "rlhf_decode_step_file", (now - 90 * 86400, now - 90 * 86400))

    assert prune_builds(str(tmp_path), keep="rlhf_decode_step_current") == ["rlhf_decode_step_old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "deepspeed_shm_comm", "rlhf_decode_step_current", "rlhf_decode_step_file", "rlhf_decode_step_recent"]
    assert prune_builds(str(tmp_path / "missing"), keep="x") == []

"""`rlhf loop` (and its wrapper `scripts/quickstart.sh`) on a tiny model: every stage runs for real and
leaves its artefact; bad settings fail before any stage starts."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import datasets
import pytest

from tests.conftest import REPO


def test_small_quickstart_produces_every_artefact(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    # A random tiny model never apologises; its replies differ in length, so the reviewers rank by that.
    config = tmp_path / "small.yaml"
    config.write_text((REPO / "configs" / "quickstart" / "small.yaml").read_text()
                      .replace("rule: \"-text.lower().count('sorry')\"", "rule: \"len(text)\""))
    assert 'rule: "len(text)"' in config.read_text()
    result = subprocess.run([str(REPO / "scripts" / "quickstart.sh"), "--config", str(config), "--policy",
                             str(tiny_model_dir), "--run-dir", str(run)], cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # dataset of the reviewers' rankings, reward model with its held-out evaluation
    pairs = datasets.load_from_disk(str(run / "export" / "pairwise"))
    assert len(pairs["train"]) > 0
    assert (run / "reward" / "config.json").is_file()
    assert 0.0 <= json.loads((run / "reward" / "eval" / "eval.json").read_text())["accuracy"] <= 1.0
    # PPO run and the exported aligned checkpoint
    assert len((run / "ppo" / "metrics.jsonl").read_text().splitlines()) == 3
    assert (run / "aligned" / "model.safetensors").is_file() and (run / "aligned" / "config.json").is_file()
    # blind A/B: every held-out reply pair judged, order recorded
    ab = json.loads((run / "ab.json").read_text())
    assert ab["items"] == 8 and ab["open"] == 0 and len(ab["judgements"]) == 8
    assert all(isinstance(j["left_is_a"], bool) and j["simulated"] for j in ab["judgements"])
    assert ab["win_rate"]["total"] == 8
    # the report, its plots and the stage table
    report = (run / "REPORT.md").read_text()
    for png in ("training_curves.png", "heldout.png"):
        assert (run / png).stat().st_size > 1000 and png in report
    summary = json.loads((run / "summary.json").read_text())
    assert {"start app", "train reward model", "PPO", "blind A/B judgement"} <= set(summary["times"])
    assert "aligned win rate, non-tied" in result.stdout and "total" in result.stdout
    commands = (run / "commands.sh").read_text()
    for command in ("rlhf app import", "rlhf simulate", "rlhf reward train", "rlhf ppo", "rlhf export",
                    "rlhf app ab create", "rlhf app ab report"):
        assert command in commands
    # held-out replies scored by the reward model's own command, not inside the loop's process
    assert commands.count("rlhf reward score") == 2
    assert summary["heldout"]["aligned"]["length_mean"] > 0 and len(summary["heldout"]["base"]["rewards"]) == 8
    # the default reward model is a probe: which held-out replies lay outside what it was fitted on
    assert len(summary["heldout"]["aligned"]["outside"]) == len(summary["heldout"]["base"]["outside"]) == 8
    assert "held-out replies outside the reward model's support" in report

    # Interrupted while exporting the aligned model: later stages never ran, the export is half written.
    for stage in ("PPO", "export_aligned", "held-out_replies", "blind_A/B_judgement", "score_held-out_replies"):
        (run / ".done" / stage).unlink()
    with sqlite3.connect(run / "feedback.db") as db:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("DELETE FROM ab_sets")
    weights = run / "aligned" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:1000])
    (run / "REPORT.md").unlink()
    again = subprocess.run([sys.executable, "-m", "rlhf.cli", "loop", "--config", str(config), "--policy",
                            str(tiny_model_dir), "--run-dir", str(run), "--resume"], cwd=REPO, capture_output=True,
                           text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "== train reward model: done before" in again.stdout
    assert f"removing {run / 'aligned'}" in again.stdout
    assert "resumed from" in (run / "stages.log").read_text()  # PPO continued from its last checkpoint
    assert len((run / "ppo" / "metrics.jsonl").read_text().splitlines()) == 3
    assert weights.stat().st_size == size and (run / "REPORT.md").is_file()
    assert json.loads((run / "ab.json").read_text())["win_rate"]["total"] == 8


def test_quickstart_refuses_a_used_run_folder_and_a_bad_config(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep me")
    result = subprocess.run([str(REPO / "scripts" / "quickstart.sh"), "--small", "--run-dir", str(tmp_path / "used")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "run folder exists" in result.stderr
    assert (tmp_path / "used" / "x").read_text() == "keep me"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rule: len(text)\nk: 9\n")
    result = subprocess.run([str(REPO / "scripts" / "quickstart.sh"), "--config", str(bad)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "k" in result.stderr and result.stderr.startswith("error: ")


@pytest.mark.parametrize("old, new, field", [
    ("reward_flags: {max_steps: 10", "reward_flags: {max_stepz: 10", "--max-stepz"),  # a typo in a field name
    ("ppo_flags: {total_updates: 3", "ppo_flags: {total_updates: three", "total_updates"),  # a bad value
    ("reward_config: configs/reward/default.yaml", "reward_config: configs/reward/nope.yaml", "nope.yaml"),
])
def test_a_bad_stage_setting_fails_before_any_stage_runs(tmp_path, old, new, field):
    small = (REPO / "configs" / "quickstart" / "small.yaml").read_text()
    assert old in small
    config = tmp_path / "bad.yaml"
    config.write_text(small.replace(old, new))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rlhf.cli", "loop", "--config", str(config), "--run-dir",
                             str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: {config}: ") and len(result.stderr.strip().splitlines()) == 1
    assert field in result.stderr and ("reward_flags" in result.stderr or "ppo_flags" in result.stderr)
    assert result.stdout == "" and not (tmp_path / "run").exists()  # no stage started, no run folder made
    assert seconds < 30, seconds  # the stage commands' parsers, not a model or the app


def test_loop_is_an_rlhf_command():
    listed = subprocess.run([sys.executable, "-m", "rlhf.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    assert listed.returncode == 0 and "    loop " in listed.stdout
    own = subprocess.run([sys.executable, "-m", "rlhf.cli", "loop", "--help"], cwd=REPO, capture_output=True, text=True)
    assert own.returncode == 0 and "--resume" in own.stdout and "--reward-flags" in own.stdout

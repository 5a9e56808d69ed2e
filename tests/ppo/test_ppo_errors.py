"""Bad input to `rlhf ppo` and `rlhf export`: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rlhf.cli import main
from tests.conftest import REPO
from tests.ppo.conftest import tiny_args


def _error_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture(scope="module")
def bad_reward_dirs(tmp_path_factory, tiny_reward_dir):
    from rlhf.modeling import load_tokenizer

    root = tmp_path_factory.mktemp("bad-rewards")
    other_vocab = root / "other-vocab"
    shutil.copytree(tiny_reward_dir, other_vocab)
    tokenizer = load_tokenizer(tiny_reward_dir)
    tokenizer.add_tokens(["<a-token-the-policy-lacks>"])
    tokenizer.save_pretrained(other_vocab)
    adapter = root / "adapter"
    shutil.copytree(tiny_reward_dir, adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return {"other_vocab": other_vocab, "adapter": adapter}


def test_reward_model_with_other_vocabulary(capsys, tmp_path, tiny_model_dir, bad_reward_dirs):
    line = _error_line(capsys, ["ppo", *tiny_args(tiny_model_dir, bad_reward_dirs["other_vocab"], tmp_path / "o")])
    assert "vocabulary" in line


def test_reward_model_wrapped_in_an_adapter(capsys, tmp_path, tiny_model_dir, bad_reward_dirs):
    assert "adapter" in _error_line(capsys, ["ppo", *tiny_args(tiny_model_dir, bad_reward_dirs["adapter"], tmp_path / "o")])


def test_reward_model_that_is_a_causal_lm(capsys, tmp_path, tiny_model_dir):
    assert "sequence-classification" in _error_line(capsys, ["ppo", *tiny_args(tiny_model_dir, tiny_model_dir, tmp_path / "o")])


def test_zero3_with_lora_modules_to_save(capsys, tmp_path, tiny_model_dir, tiny_reward_dir, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(REPO / "configs/deepspeed/zero3.json"))
    line = _error_line(capsys, ["ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, tmp_path / "o"),
                                "--lora.modules-to-save", "[lm_head]"])
    assert "ZeRO-3" in line


def test_prompt_file_with_no_usable_prompt(capsys, tmp_path, tiny_model_dir, tiny_reward_dir):
    line = _error_line(capsys, ["ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, tmp_path / "o"),
                                "--max-prompt-tokens", "3"])
    assert "no usable prompt" in line and "support_prompts.jsonl" in line


def test_whitening_with_small_minibatches(capsys, tmp_path, tiny_model_dir, tiny_reward_dir):
    line = _error_line(capsys, ["ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, tmp_path / "o"),
                                "--whiten-rewards", "true"])
    assert "at least 8" in line


def test_resume_without_checkpoint_partial_or_foreign(capsys, tmp_path, tiny_model_dir, tiny_reward_dir):
    out = tmp_path / "run"
    args = ["ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out)]
    assert "no complete checkpoint" in _error_line(capsys, [*args, "--resume"])
    partial = out / "checkpoints" / "step-000002"
    partial.mkdir(parents=True)
    (partial / "pytorch_model.bin").write_bytes(b"half")
    assert "incomplete checkpoint" in _error_line(capsys, [*args, "--resume", str(partial)])
    (partial / "rlhf_state.json").write_text(json.dumps({"step": 2, "config_fingerprint": "0" * 16}))
    assert "another config" in _error_line(capsys, [*args, "--resume"])
    assert "already holds checkpoints" in _error_line(capsys, args)


def test_export_of_a_missing_or_checkpointless_run(capsys, tmp_path):
    assert "not a PPO run directory" in _error_line(capsys, ["export", str(tmp_path / "nope"), str(tmp_path / "x")])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("reward_model: r\nprompts_file: p\n")
    assert "no complete checkpoint" in _error_line(capsys, ["export", str(tmp_path / "run"), str(tmp_path / "x")])


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, tiny_model_dir, tiny_reward_dir):
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "rlhf.cli", "ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, out),
           "--save-every", "100", "--total-updates", "50", "--num-eval-prompts", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    saved = [p.name for p in (out / "checkpoints").iterdir()]
    assert len(saved) == 1 and saved[0] != "step-000050" and "continue with --resume" in err

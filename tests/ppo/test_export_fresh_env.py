"""The exported model loads and generates in a fresh virtual environment holding only transformers and torch."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, run_cli
from tests.ppo.conftest import tiny_args

LOAD_AND_GENERATE = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
text = tok.apply_chat_template([{"role": "user", "content": "Where is my order?"}], tokenize=False,
                               add_generation_prompt=True)
ids = tok(text, return_tensors="pt")
out = model.generate(**ids, max_new_tokens=6, do_sample=False)
assert tok.pad_token_id != tok.eos_token_id == model.generation_config.eos_token_id
print("GENERATED", out.shape[1] - ids["input_ids"].shape[1])
"""


def test_export_loads_in_a_fresh_venv(tmp_path, tiny_model_dir, tiny_reward_dir):
    run = tmp_path / "run"
    result = run_cli("ppo", *tiny_args(tiny_model_dir, tiny_reward_dir, run), "--total-updates", "2",
                     "--num-eval-prompts", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    exported = tmp_path / "exported"
    result = run_cli("export", str(run), str(exported), "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr[-3000:]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # no system site-packages
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch first, alone (a CPU build from local disk); then transformers with torch held at its pin.
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=600)
    constraint = tmp_path / "torch.txt"
    constraint.write_text("torch==2.13.0\n")
    subprocess.run([*pip, "-c", str(constraint), "transformers==5.23.0"], check=True, timeout=600)
    check = subprocess.run([str(venv / "bin" / "python"), "-c", LOAD_AND_GENERATE, str(exported)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert check.returncode == 0, check.stderr[-3000:]
    assert "GENERATED" in check.stdout
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout
    assert "rlhf" not in listed and "peft" not in listed and "trl" not in listed

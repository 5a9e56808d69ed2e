"""Single-process training for real: tiny model, real TRL trainers, checkpoint reload, planted preference."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from reward.config import RewardTrainConfig
from reward.train import train
from rlhf.cli import main as cli_main
from rlhf.config import load_config
from rlhf.errors import UserError
from tests.conftest import REPO, run_cli
from tests.reward.conftest import planted_rankings, write_export


def _reloaded_scores(out, ids):
    from reward.evaluate import score_ids
    from rlhf.modeling import load_score_model, load_tokenizer

    model = load_score_model(out)
    return score_ids(model, ids, load_tokenizer(out, padding_side="right").pad_token_id)


def _check_checkpoint(out, base_dir, exact: bool):
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"][0].endswith("ForSequenceClassification") and len(config["id2label"]) == 1
    assert config["pad_token_id"] != config["eos_token_id"]
    for name in ("model.safetensors", "tokenizer.json", "config.yaml", "manifest.json", "reward_stats.json",
                 "eval/eval.json", "eval/calibration.png", "eval/margins.png"):
        assert (out / name).is_file(), name
    assert list((out / "logs" / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["std"] > 0 and set(stats) >= {"mean", "std"}
    # the loss falls
    losses = metrics["loss_history"]
    assert len(losses) >= 3 and losses[-1] < 0.7 * losses[0], losses
    # the weights changed
    trained, base = load_file(out / "model.safetensors"), load_file(base_dir / "model.safetensors")
    assert not any("lora" in k for k in trained), "LoRA not merged"
    changed = [k for k in base if k in trained and not torch.equal(base[k], trained[k])]
    assert any("self_attn.q_proj" in k for k in changed), changed
    # the checkpoint reloads and scores as before saving
    probe = metrics["probe"]
    after = _reloaded_scores(out, probe["ids"])
    tol = 0.0 if exact else 1e-4
    assert max(abs(a - b) for a, b in zip(after, probe["before_save"])) <= tol, (after, probe["before_save"])
    return metrics


def test_kwise_full_finetune_learns_planted_preference(tmp_path, tiny_model_dir, planted_export):
    out = tmp_path / "rm"
    result = run_cli("reward", "train", "--config", "configs/reward/tiny.yaml", "--model", str(tiny_model_dir),
                     "--policy-model", str(tiny_model_dir), "--data", str(planted_export),
                     "--output-dir", str(out), "--max-steps", "24",
                     "--validation-fraction", "0")  # the whole schedule (early stopping is tested in test_gate_train)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = _check_checkpoint(out, tiny_model_dir, exact=True)
    assert metrics["mode"] == "kwise" and metrics["steps"] == 24
    held_out = json.loads((out / "eval" / "eval.json").read_text())
    assert held_out["pairs"] >= 30
    assert held_out["accuracy"] > 0.85, held_out  # chance is 0.5
    assert held_out["ci95_bootstrap_prompts"][0] > 0.6
    assert "held-out pairwise accuracy" in result.stderr
    assert json.loads((out / "manifest.json").read_text())["data"] == str(planted_export)


def test_pairwise_lora_on_chat_data_is_merged_and_reloads(tmp_path, tiny_model_dir):
    data = write_export(tmp_path / "chat", planted_rankings(40, seed=3, chat=True))
    config = load_config(RewardTrainConfig, REPO / "configs/reward/tiny.yaml").model_copy(update=dict(
        model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "rm"), mode="pairwise",
        batch_size=8, max_steps=20, learning_rate=0.005, max_length=256,
        # The whole schedule, so the loss history has its 4 points: with ~25 training rankings a validation
        # check runs every step and early stopping may end the run before the second log.
        validation_fraction=0.0))
    config.lora.enabled = True
    metrics = train(config)
    _check_checkpoint(tmp_path / "rm", tiny_model_dir, exact=False)
    assert metrics["lora"] and metrics["mode"] == "pairwise"
    assert metrics["held_out"]["accuracy"] > 0.6


def test_kwise_weighted_by_agreement_runs_and_eval_reports_reviewers(tmp_path, tiny_model_dir):
    rankings = planted_rankings(16, k=4, seed=5, reviewers=("ann", "bob", "eve"), noise_reviewer="eve")
    data = write_export(tmp_path / "multi", rankings, test_fraction=0.3)
    out = tmp_path / "rm"
    config = load_config(RewardTrainConfig, REPO / "configs/reward/tiny.yaml").model_copy(update=dict(
        model=str(tiny_model_dir), data=str(data), output_dir=str(out), max_steps=4, report_to=["none"],
        weight_by_agreement=True, allow_weak_reward_model=True))  # 5 held-out prompts: too few for the gate
    train(config)
    result = run_cli("reward", "eval", str(out), str(data), "--output", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pairwise accuracy" in result.stdout and "reviewer eve" in result.stdout
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(report["per_reviewer"]) == {"ann", "bob", "eve"}
    assert report["agreed_pairs"]["pairs"] > 0  # ann and bob agree; eve reverses them
    assert (tmp_path / "ev" / "calibration.png").stat().st_size > 1000


def test_vocabulary_mismatch_is_refused(tmp_path, tiny_model_dir, planted_export, capsys, monkeypatch):
    from rlhf.modeling import load_tokenizer

    other = tmp_path / "other-tok"
    tok = load_tokenizer(tiny_model_dir)
    tok.add_tokens(["<not-in-policy>"])
    tok.save_pretrained(other)
    shutil.copy(tiny_model_dir / "config.json", other / "config.json")
    code = cli_main(["reward", "train", "--config", "configs/reward/tiny.yaml", "--model", str(tiny_model_dir),
                     "--policy-model", str(other), "--data", str(planted_export), "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: the reward model") and "vocabulary" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    ((), "no training data"),
    (("--data", "/nonexistent/data"), "preference data not found"),
    (("--mode", "listwise"), "field 'mode'"),
    (("--config", "configs/reward/missing.yaml"), "config file not found"),
    (("--data", "x", "--mode", "pairwise", "--weight-by-agreement", "true"), "needs mode kwise"),
])
def test_train_bad_input_one_line_errors(args, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli_main(["reward", "train", "--config", "configs/reward/tiny.yaml", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_eval_bad_checkpoint(tmp_path, planted_export, capsys):
    assert cli_main(["reward", "eval", str(tmp_path), str(planted_export)]) == 2
    assert "not a reward model checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    ((), "field 'checkpoint': Field required"),
    (("ckpt", "data", "--split", "bogus"), "field 'split'"),
    (("ckpt", "data", "--batch-size", "0"), "field 'batch_size'"),
])
def test_eval_config_errors_are_one_line(args, message, capsys):
    assert cli_main(["reward", "eval", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_eval_reads_its_fields_from_yaml(tmp_path, planted_export, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"checkpoint: {tmp_path}\ndataset: {planted_export}\nsplit: all\n")
    assert cli_main(["reward", "eval", "--config", str(config)]) == 2
    assert f"{tmp_path}: not a reward model checkpoint" in capsys.readouterr().err

"""The gate on real tiny reward models (issue 14): a reward model trained on shuffled rankings is
refused, one trained on a planted preference passes; `rlhf ppo` refuses the failed one with exit 2 and
the paragraph, and the override is recorded; the schedule is chosen on validation; bad input is one
line before any training."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from reward.schedule import Check, best_check, should_stop
from rlhf.cli import main as cli_main
from tests.conftest import run_cli
from tests.ppo.conftest import tiny_args
from tests.reward.conftest import planted_rankings, write_export

TINY = "configs/reward/tiny.yaml"


@pytest.fixture(scope="module")
def gate_exports(tmp_path_factory):
    """64 prompts x K=4 with the planted preference, and the same rankings with every ranking's ranks
    shuffled (no preference left): about 17 held-out prompts, 100 pairs, enough for the interval."""
    root = tmp_path_factory.mktemp("gate")
    # Every third prompt names someone, for the counterfactual probe to swap.
    rankings = [replace(r, prompt=r.prompt + " My husband James placed it.") if i % 3 == 0 else r
                for i, r in enumerate(planted_rankings(64, seed=11))]
    planted = write_export(root / "planted", rankings, test_fraction=0.3)
    rng = random.Random(0)
    for r in rankings:
        rng.shuffle(r.ranks)
    return planted, write_export(root / "shuffled", rankings, test_fraction=0.3)


@pytest.fixture(scope="module")
def probe_models(tmp_path_factory, tiny_model_dir, gate_exports):
    """``rlhf reward train --method probe`` on both exports (no fine-tuning: seconds of CPU)."""
    root = tmp_path_factory.mktemp("gate-models")
    out = {}
    for name, data in zip(("planted", "shuffled"), gate_exports):
        result = run_cli("reward", "train", "--config", TINY, "--model", str(tiny_model_dir), "--data", str(data),
                         "--output-dir", str(root / name), "--method", "probe")
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = (root / name, result.stderr)
    return out


def test_gate_passes_planted_and_refuses_shuffled(probe_models):
    planted, stderr = probe_models["planted"]
    gate = json.loads((planted / "gate.json").read_text())
    assert gate["passed"] and gate["measured"] and gate["interval"][0] > 0.5 and gate["advice"] is None
    # the permutation test, cross-fitted over every prompt: probes fitted to the rankings shuffled stay
    # well below the real rankings' cross-fit
    chance = gate["chance"]
    assert chance["passed"] and chance["shuffles"] == len(chance["accuracies"]) == 99 and chance["folds"] == 5
    assert chance["prompts"] == 64 and chance["bar"] < chance["accuracy"] and chance["reached"] == 0
    assert "passes the gate" in stderr
    metrics = json.loads((planted / "metrics.json").read_text())
    assert metrics["method"] == "probe" and metrics["steps"] == 0
    schedule = metrics["schedule"]
    assert [c["rankings"] for c in schedule["learning_curve"]][-1] == metrics["train_rows"]
    assert len(schedule["learning_curve"]) == 3 and schedule["probe_l2"] in [s["l2"] for s in schedule["probe_selection"]]
    # the default probe_depth (a quarter, rounded up) keeps 1 of the tiny model's 2 layers, and so does the checkpoint
    assert schedule["probe_feature"] == "mean@1" and schedule["probe_depth"] == 0.25
    assert json.loads((planted / "config.json").read_text())["num_hidden_layers"] == 1
    assert "reads layer 1 of 2" in stderr
    pairs = json.loads((planted / "held_out_pairs.json").read_text())
    assert len(pairs["credits"]) == len(pairs["prompts"]) == gate["n_pairs"] >= 30
    assert sum(pairs["credits"]) / len(pairs["credits"]) == pytest.approx(gate["accuracy"])
    # Where the probe is trusted: every reply it was fitted on lies inside its bound (config.json, which
    # every loader reads; PPO's value model goes without), the held-out ones mostly too.
    support = metrics["support"]
    config = json.loads((planted / "config.json").read_text())
    assert config["score_support"]["bound"] == support["bound"] > 0
    assert len(config["score_support"]["mean"]) == len(config["score_support"]["worst"]) == config["hidden_size"]
    outside, held_out = support["held_out_outside"]
    assert 0 <= outside <= held_out // 4 and support["replies"] > held_out > 0
    card = (planted / "README.md").read_text()
    assert f"{outside} of the {held_out} held-out replies lie outside" in card
    assert "## Learning curve" in card and "passes the gate" in card and "of the last kept layer (mean@1" in card
    # Bias audit on the held-out rankings: length bias over every held-out pair, the counterfactual probe
    # (the same replies under prompts with "husband James" swapped) scored by the same model.
    bias = metrics["bias"]
    assert bias["length"]["pairs"] == gate["n_pairs"] and bias["length"]["accuracy"] == pytest.approx(gate["accuracy"])
    assert bias["counterfactual"]["probes"] > 0 and set(bias["counterfactual"]["by_category"]) == {"names", "gender"}
    assert bias["counterfactual"]["mean_abs_change"] >= 0 and "Counterfactual prompts (" in card

    shuffled, stderr = probe_models["shuffled"]
    gate = json.loads((shuffled / "gate.json").read_text())
    assert not gate["passed"] and gate["interval"][0] <= 0.5
    assert "does not pass the gate" in stderr
    # The paragraph: what was measured, the learning curve, reviewers, replies.
    advice = gate["advice"]
    for part in ("held-out pairs like the reviewers", "Held-out accuracy by training rankings", "Reviewers:",
                 "Replies:"):
        assert part in advice, advice
    assert "What to do:" in (shuffled / "README.md").read_text()


def test_score_marks_the_replies_outside_the_probe_s_support(tmp_path, probe_models, gate_exports):
    """``rlhf reward score`` with a probe: a reply it was fitted on lies inside its support, a string of
    one emoji outside, scored as the worst fitted reply; the file and the printed line say how many."""
    import torch
    from datasets import load_from_disk

    from rlhf.modeling import load_score_model
    from rlhf.schema import EXPORT_KWISE, ScoredReplies

    planted, _ = probe_models["planted"]
    row = load_from_disk(str(gate_exports[0] / EXPORT_KWISE))["train"][0]
    fitted = row["completions"][0]
    replies = tmp_path / "replies.jsonl"
    replies.write_text(json.dumps({"prompt": row["prompt"], "replies": [fitted, "\U0001F60A" * 10]}) + "\n")
    out = tmp_path / "scores.json"
    result = run_cli("reward", "score", "--reward-model", str(planted), "--replies", str(replies), "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 outside the reward model's support (scored as the worst reviewed reply)" in result.stdout
    scored = ScoredReplies.from_dict(json.loads(out.read_text()))
    assert scored.outside_support == [[False, True]]
    model = load_score_model(str(planted))
    with torch.no_grad():
        worst = model.score(torch.tensor(model.config.score_support["worst"])).item()
    assert scored.scores[0][1] == pytest.approx(worst, abs=1e-4) and scored.scores[0][0] >= worst - 1e-4


def test_ppo_refuses_a_failed_gate_and_the_override_is_recorded(tmp_path, capsys, tiny_model_dir, probe_models):
    shuffled, _ = probe_models["shuffled"]
    code = cli_main(["ppo", *tiny_args(tiny_model_dir, shuffled, tmp_path / "refused")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    assert "does not clear 50%" in err[-1] and "--allow-weak-reward-model" in err[-1]
    assert not any((tmp_path / "refused").glob("checkpoints/step-*"))

    out = tmp_path / "overridden"
    result = run_cli("ppo", *tiny_args(tiny_model_dir, shuffled, out), "--allow-weak-reward-model", "true",
                     "--total-updates", "1", "--save-every", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--allow-weak-reward-model: training against a reward model that did not pass" in result.stderr
    gate = json.loads((out / "run_info.json").read_text())["reward_gate"]
    assert gate["status"] == "failed" and gate["overridden"] is True
    result = run_cli("export", str(out), str(tmp_path / "aligned"))
    assert result.returncode == 0, result.stderr[-3000:]
    card = (tmp_path / "aligned" / "README.md").read_text()
    assert "Reward model gate: failed" in card and "Overridden with --allow-weak-reward-model" in card


def test_schedule_selection_picks_the_better_check():
    # Validation loss falls to its lowest at step 20, then rises: the second schedule (20 steps) wins
    # over the first (40 steps), and three checks without improvement stop the run.
    checks = [Check(0, 0.69, 0.50), Check(10, 0.52, 0.70), Check(20, 0.41, 0.80), Check(30, 0.45, 0.80),
              Check(40, 0.60, 0.75)]
    assert best_check(checks).step == 20
    assert not should_stop(checks, patience=3)
    assert should_stop([*checks, Check(50, 0.62, 0.70)], patience=3)
    # A tie in loss goes to the higher accuracy, then the earlier step.
    assert best_check([Check(5, 0.4, 0.6), Check(9, 0.4, 0.7)]).step == 9
    assert best_check([Check(5, 0.4, 0.7), Check(9, 0.4, 0.7)]).step == 5


def test_probe_then_finetune_keeps_the_best_validation_check(tmp_path, tiny_model_dir, gate_exports):
    planted, _ = gate_exports
    out = tmp_path / "lpft"
    result = run_cli("reward", "train", "--config", TINY, "--model", str(tiny_model_dir), "--data", str(planted),
                     "--output-dir", str(out), "--method", "probe_then_finetune", "--max-steps", "6",
                     "--validation-every", "2", "--report-to", "[none]")
    assert result.returncode == 0, result.stderr[-3000:]
    schedule = json.loads((out / "metrics.json").read_text())["schedule"]
    checks = schedule["validation_checks"]
    assert checks[0]["step"] == 0  # the probe alone, before any fine-tuning step
    best = min(checks, key=lambda c: (c["val_loss"], -c["val_accuracy"], c["step"]))
    assert schedule["kept_step"] == best["step"]
    assert f"kept the weights after {best['step']} steps" in result.stderr
    assert json.loads((out / "gate.json").read_text())["passed"]


def test_bad_input_is_one_line_before_training(tmp_path, capsys, tiny_model_dir):
    # Every ranking ties all its replies: no usable pair.
    data = tmp_path / "tied.jsonl"
    data.write_text("".join(json.dumps({"prompt": r.prompt, "completions": r.completions, "ranks": [1] * 4}) + "\n"
                            for r in planted_rankings(12, seed=2)))
    assert cli_main(["reward", "train", "--config", TINY, "--model", str(tiny_model_dir), "--data", str(data),
                     "--output-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no ranking has two replies with distinct ranks" in err[-1], err
    # A held-out split too small for an interval: refused before training, unless overridden.
    small = write_export(tmp_path / "small", planted_rankings(12, seed=2))
    assert cli_main(["reward", "train", "--config", TINY, "--model", str(tiny_model_dir), "--data", str(small),
                     "--output-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "too small for an interval" in err[-1] and "--allow-weak-reward-model" in err[-1], err
    assert not (tmp_path / "b").exists()

"""`rlhf sft` on the tiny model: the loss mask and loss on a hand-made batch, a LoRA run that moves the
adapter and lowers the held-out loss, resume after update 2 equal to the uninterrupted run, export that
reloads and generates, bad demonstrations refused in one line before any model loads."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

DEMOS = REPO / "configs" / "sft" / "contact_centre_demos.jsonl"
HAND_MADE = [  # two rows of different lengths: the shorter one is padded
    {"prompt": "Where is my parcel?", "completion": "Please send me your order number and I'll check it."},
    {"prompt": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello, how can I help?"},
                {"role": "user", "content": "Refund?"}], "completion": "Refunds take 3 to 5 working days."},
]


def sft_args(policy: Path, out: Path, *extra: str) -> list[str]:
    return ["sft", "--config", str(REPO / "configs" / "sft" / "tiny.yaml"), "--policy", str(policy),
            "--data", str(DEMOS), "--output-dir", str(out), *extra]


def _config(policy, out, **overrides):
    from rlhf.align.config import SFTRunConfig
    from rlhf.config import load_config

    return load_config(SFTRunConfig, REPO / "configs" / "sft" / "tiny.yaml",
                       {"policy": str(policy), "output_dir": str(out), "data": [str(DEMOS)], **overrides})


def _adapter(run: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step:06d}" / "adapter_model.safetensors")


# ---------------------------------------------------------------------------------------------------
# The loss mask


def test_labels_mask_prompt_and_padding_and_the_loss_is_the_reply_tokens_cross_entropy(tmp_path, tiny_model_dir):
    from rlhf.align.sft import build_trainer, completion_loss

    data = tmp_path / "hand.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in HAND_MADE))
    # test_fraction 0: both rows train; full fine-tuning so the model is the plain causal LM
    config = _config(tiny_model_dir, tmp_path / "run", data=[str(data)], test_fraction=0.0, lora={"enabled": False},
                     num_eval_prompts=0)
    trainer = build_trainer(config)
    tok = trainer.processing_class
    rows = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer.data_collator([{k: r[k] for k in ("input_ids", "labels")} for r in rows])

    for b, raw in enumerate(HAND_MADE):
        prompt = raw["prompt"] if isinstance(raw["prompt"], list) else [{"role": "user", "content": raw["prompt"]}]
        prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        full_ids = tok.apply_chat_template(prompt + [{"role": "assistant", "content": raw["completion"]}],
                                           tokenize=True, return_dict=True)["input_ids"]
        n_prompt, n_full = len(prompt_ids), len(full_ids)
        assert batch["input_ids"][b, :n_full].tolist() == full_ids
        labels = batch["labels"][b].tolist()
        assert labels[:n_prompt] == [-100] * n_prompt  # the prompt teaches nothing
        assert labels[n_prompt:n_full] == full_ids[n_prompt:]  # the reply (with its end-of-turn token) does
        assert labels[n_full:] == [-100] * (len(labels) - n_full)  # padding neither
        assert batch["attention_mask"][b].tolist() == [1] * n_full + [0] * (len(labels) - n_full)
        assert tok.decode(full_ids[n_prompt:]).startswith(raw["completion"])
    assert batch["input_ids"].shape[1] > min(int(m.sum()) for m in batch["attention_mask"])  # one row is padded

    # Cross-entropy by hand: -log softmax(logits at t-1)[token t], averaged over every reply token of the batch.
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        terms = []
        for b in range(2):
            for t in range(1, batch["input_ids"].shape[1]):
                if batch["labels"][b, t] == -100:
                    continue
                row = logits[b, t - 1].tolist()
                top = max(row)
                log_z = top + math.log(sum(math.exp(x - top) for x in row))
                terms.append(log_z - row[int(batch["labels"][b, t])])
        by_hand = sum(terms) / len(terms)
        trainer_loss = trainer.compute_loss(model, dict(batch)).item()
    assert len(terms) == sum(int((batch["labels"][b] != -100).sum()) for b in range(2))
    assert trainer_loss == pytest.approx(by_hand, rel=1e-5)
    held, tokens = completion_loss(model, [batch])
    assert tokens == len(terms) and held == pytest.approx(by_hand, rel=1e-5)


def test_padding_free_batches_give_the_padded_loss_and_no_row_attends_to_another(tmp_path, tiny_model_dir):
    """padding_free lays the micro-batch end to end in one row with no attention mask: correct on CPU
    (sdpa/eager, no FlashAttention) only because transformers builds a block-diagonal causal mask from
    the position ids that restart at each demonstration. Same rows, same reply tokens, same loss as the
    padded batch; the same row with one running position sequence (rows attending to each other) is not."""
    from rlhf.align.sft import build_trainer, heldout_loss

    data = tmp_path / "hand.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in HAND_MADE))
    padded_trainer = build_trainer(_config(tiny_model_dir, tmp_path / "padded", data=[str(data)], test_fraction=0.0,
                                           lora={"enabled": False}, num_eval_prompts=0))
    trainer = build_trainer(_config(tiny_model_dir, tmp_path / "free", data=[str(data)], test_fraction=0.0,
                                    lora={"enabled": False}, num_eval_prompts=0, padding_free=True))
    rows = [{k: trainer.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(2)]
    padded = padded_trainer.data_collator(rows)
    free = trainer.data_collator(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert "attention_mask" not in free and free["input_ids"].shape == (1, sum(lengths))  # no pad token at all
    assert free["position_ids"][0].tolist() == list(range(lengths[0])) + list(range(lengths[1]))
    assert int((free["labels"] != -100).sum()) == int((padded["labels"] != -100).sum())  # the same reply tokens

    model = trainer.model.eval()
    with torch.no_grad():
        loss_padded = trainer.compute_loss(model, dict(padded)).item()
        loss_free = trainer.compute_loss(model, dict(free)).item()
        leaking = trainer.compute_loss(model, {"input_ids": free["input_ids"], "labels": free["labels"],
                                               "position_ids": torch.arange(sum(lengths))[None]}).item()
    assert loss_free == pytest.approx(loss_padded, rel=1e-5)
    assert abs(leaking - loss_padded) > 1e-3  # the check above would see a leak between rows
    # held-out loss is measured on padded batches whatever the training batches are
    trainer.eval_dataset = trainer.train_dataset
    assert heldout_loss(trainer)[0] == pytest.approx(loss_padded, rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# A real run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    """A 4-update LoRA run on the shipped demonstrations, in this process."""
    from rlhf.align import sft

    out = tmp_path_factory.mktemp("sft") / "run"
    config = _config(tiny_model_dir, out)
    captured = {}
    build = sft.build_trainer

    def keep(*args, **kwargs):  # the live trainer, to compare base weights before and after
        trainer = build(*args, **kwargs)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        captured["policy"] = policy
        captured["sampler"] = type(trainer._get_train_sampler()).__name__
        captured["before"] = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" not in k}
        return trainer

    sft.build_trainer = keep
    try:
        assert sft.run_sft(config) == 4
    finally:
        sft.build_trainer = build
    after = {k: v for k, v in captured["policy"].state_dict().items() if "lora_" not in k}
    # the default batches demonstrations of similar length (fewer pad tokens); resume below must hold with it
    assert captured["sampler"] == "LengthGroupedSampler"
    return out, captured["before"], after


def test_training_moves_the_adapter_and_lowers_the_heldout_loss(uninterrupted):
    out, before, after = uninterrupted
    for name, value in before.items():  # LoRA: the base weights stay as they were
        assert torch.equal(value, after[name]), name
    lora_b = [v for k, v in _adapter(out, 4).items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(isinstance(r["loss"], float) and isinstance(r["mean_token_accuracy"], float) for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_rows"] > 0 and metrics["train_rows"] + metrics["heldout_rows"] == 120
    assert metrics["heldout_tokens"] > 0
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sum(s["step"] == 4 for s in samples) == 2 and all(0.0 <= s["score"] <= 1.0 for s in samples)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    state = json.loads((out / "checkpoints" / "step-000004" / "rlhf_state.json").read_text())
    assert state["algorithm"] == "sft" and state["step"] == 4
    info = json.loads((out / "run_info.json").read_text())
    assert info["trainer"] == "sft" and info["by_source"] == {"demonstration": 120}


def test_resume_after_update_2_matches_the_uninterrupted_run(uninterrupted, tmp_path, tiny_model_dir):
    from rlhf.align.sft import run_sft

    reference_run = uninterrupted[0]
    out = tmp_path / "resumed"
    assert run_sft(_config(tiny_model_dir, out, stop_after_updates=2)) == 2  # here; the resume is a new process
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    assert not (out / "metrics.json").exists()  # written when the run is complete
    second = run_cli(*sft_args(tiny_model_dir, out, "--resume"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "update 4/4" in second.stderr
    resumed, expected = _adapter(out, 4), _adapter(reference_run, 4)
    assert resumed.keys() == expected.keys()
    # A resume that lost the optimizer state, the RNG or the data order moves weights by about the learning
    # rate (1e-3) per update; float noise between processes stays far below 1e-4.
    for key in resumed:
        assert (resumed[key] - expected[key]).abs().max().item() < 1e-4, key
    assert max((_adapter(out, 2)[k] - resumed[k]).abs().max().item() for k in resumed) > 5e-4
    mine, theirs = (json.loads((run / "metrics.json").read_text()) for run in (out, reference_run))
    assert mine["heldout_loss_before"] == pytest.approx(theirs["heldout_loss_before"], abs=1e-6)
    assert mine["heldout_loss_after"] == pytest.approx(theirs["heldout_loss_after"], abs=1e-4)


def test_export_reloads_generates_and_names_sft(uninterrupted, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = uninterrupted[0]
    from rlhf.export import export_run

    exported = export_run(out, tmp_path / "exported")
    tokenizer = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("Where is my parcel?", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    card = (exported / "README.md").read_text()
    assert "# SFT policy (supervised fine-tuning) (merged)" in card and "TRL 1.12 SFTTrainer" in card
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['heldout_loss_before']:.4f} before, {metrics['heldout_loss_after']:.4f} after" in card
    assert (exported / "sft_config.yaml").is_file() and (exported / "plots" / "loss.png").is_file()


# ---------------------------------------------------------------------------------------------------
# Bad input


BAD = [
    ('{"prompt": "Where is my parcel?", "completion": "   "}', 2, "field 'completion': empty"),
    ('{"completion": "Here you go."}', 2, "field 'prompt': missing"),
    ('{"prompt": "", "completion": "Here you go."}', 2, "field 'prompt': missing or empty"),
    ('{"prompt": "Hi", "reply": "Hello"}', 2, "field 'completion': missing"),
    ('{"prompt": "Hi", "completion": "' + "word " * 400 + '"}', 2, "longer than max_length=384"),
]


@pytest.mark.parametrize(("line", "lineno", "message"), BAD, ids=["empty", "no-prompt", "empty-prompt",
                                                                   "no-completion", "too-long"])
def test_bad_demonstrations_are_one_line_naming_file_line_and_field(line, lineno, message, tmp_path, tiny_model_dir,
                                                                    capsys):
    """The real command line in this process (``rlhf.cli.main``); the next test runs one in a subprocess."""
    import sys

    from rlhf.cli import main

    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt": "Hello?", "completion": "Hi, how can I help?"}\n' + line + "\n")
    fresh = "trl" not in sys.modules
    assert main(sft_args(tiny_model_dir, tmp_path / "run", "--data", str(data))) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}:{lineno}: ") and message in lines[0], lines
    assert not (tmp_path / "run").exists()
    if fresh:  # refused before TRL (and the model) were imported
        assert "trl" not in sys.modules


def test_too_long_rows_are_counted_in_one_line_before_the_model_loads(tmp_path, tiny_model_dir):
    data = tmp_path / "demos.jsonl"
    long = json.dumps({"prompt": "Hi", "completion": "word " * 400})
    data.write_text("\n".join([long, '{"prompt": "Hello?", "completion": "Hi."}', long, long]) + "\n")
    started = time.monotonic()
    result = run_cli(*sft_args(tiny_model_dir, tmp_path / "run", "--data", str(data)))
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: {data}:1: field 'completion': prompt + completion is ")
    assert "(3 of 4 rows are;" in lines[0] and "never cut" in lines[0]
    assert time.monotonic() - started < 120


def test_validate_only_prints_the_resolved_config(tmp_path):
    result = run_cli("sft", "--config", str(REPO / "configs" / "sft" / "default.yaml"), "--validate-only",
                     "--data", "a.jsonl", "--lora.enabled", "false")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["data"] == ["a.jsonl"] and resolved["lora"]["enabled"] is False
    bad = run_cli("sft", "--config", str(REPO / "configs" / "sft" / "default.yaml"), "--validate-only",
                  "--beta", "0.1")
    assert bad.returncode == 2 and "unrecognized arguments: --beta" in bad.stderr


# ---------------------------------------------------------------------------------------------------
# Two processes, as the README launches them


# ZeRO-2 and ZeRO-3 (partitioned weights: the held-out loss, sample replies and the saved adapter gather
# them); DDP runs the same Trainer path (it passed here with "ddp.yaml" in this list), and
# tests/align/test_align_distributed.py launches RLOO under DDP.
@pytest.mark.parametrize("launcher", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"], ids=["zero2", "zero3"])
def test_two_processes_finish_measure_and_export(launcher, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rlhf.export import export_run
    from tests.launch import accelerate_launch

    out = tmp_path / "run"
    args = sft_args(tiny_model_dir, out, "--total-updates", "2", "--num-eval-prompts", "1")
    result = accelerate_launch(launcher, ["-m", "rlhf.cli", *args], timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("update 2/2") == 1 and result.stderr.count("held-out loss after SFT") == 1
    ckpt = out / "checkpoints" / "step-000002"
    assert sorted(p.name for p in ckpt.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    if launcher != "ddp.yaml":  # every process wrote its own optimizer shard
        assert len(list(ckpt.glob("global_step*/*optim_states.pt"))) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"]
    model = AutoModelForCausalLM.from_pretrained(export_run(out, tmp_path / "exported"))
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape[1] == 6

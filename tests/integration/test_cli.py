"""The real `rlhf` command: help everywhere, a generation run, and one-line errors for bad input."""

import json

import pytest

from tests.conftest import run_cli


def _subcommands(prefix=()):
    from rlhf.cli import build_parser
    import argparse

    def walk(parser, path):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, path + (name,))
    return list(walk(build_parser(), ()))


def test_help_on_every_subcommand():
    for path in _subcommands():
        result = run_cli(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        assert "usage: rlhf" in result.stdout


def test_generate_writes_replies_and_resolved_config(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Where is my order?"}\n{"prompt": [{"role": "user", "content": "Refund?"}]}\n')
    out = tmp_path / "out" / "replies.jsonl"
    result = run_cli("generate", "--model", str(tiny_model_dir), "--prompts-file", str(prompts),
                     "--num-replies", "2", "--max-new-tokens", "5", "--output", str(out), "--prompt", "hello")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["replies"]) for r in rows] == [2, 2, 2]
    assert rows[2]["prompt"] == "hello"
    assert (out.parent / "replies.config.yaml").is_file()


def test_doctor_reports(tmp_path):
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["packages"]["trl"] == "1.12.0"
    assert report["trl_ppo"].startswith("available")
    assert report["deepspeed"].startswith("ok")


@pytest.mark.parametrize("case", ["missing_config", "malformed_config", "unknown_key", "bad_value",
                                  "missing_model", "broken_prompts", "no_prompts", "bad_flag_value"])
def test_user_errors_are_one_line_with_nonzero_exit(tmp_path, case):
    cfg = tmp_path / "gen.yaml"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    args, expected = {
        "missing_config": (["generate", "--config", str(tmp_path / "nope.yaml")], "nope.yaml: config file not found"),
        "malformed_config": (["generate", "--config", str(cfg)], "gen.yaml:2: malformed YAML"),
        "unknown_key": (["generate", "--config", str(cfg)], "gen.yaml: unknown field 'temprature'"),
        "bad_value": (["generate", "--config", str(cfg)], "gen.yaml: field 'num_replies'"),
        "missing_model": (["generate", "--model", str(tmp_path / "no-model"), "--prompt", "x"], "model path does not exist"),
        "broken_prompts": (["generate", "--prompts-file", str(prompts)], "p.jsonl:2: malformed JSON"),
        "no_prompts": (["generate"], "no prompts"),
        "bad_flag_value": (["generate", "--max-new-tokens", "lots", "--prompt", "x"], "field 'max_new_tokens'"),
    }[case]
    cfg.write_text({"malformed_config": "model: x\n  bad: [\n", "unknown_key": "temprature: 0.5\n",
                    "bad_value": "num_replies: -1\n"}.get(case, "model: bundled\n"))
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr

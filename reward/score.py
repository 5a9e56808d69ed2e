"""``rlhf reward score``: a reward model's score of every reply in an ``rlhf generate --output`` file.

  rlhf reward score --reward-model runs/reward --replies eval/aligned.jsonl --output eval/aligned.scores.json

The result is one JSON file, ``rlhf.schema.ScoredReplies``: per reply its reward and its length in
tokens. The loop (``rlhf loop``) compares the base and aligned policies' held-out replies with it, so
the reward model is loaded by this command, never inside the loop's own process.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from rlhf.config import Config, save_resolved
from rlhf.errors import UserError
from rlhf.schema import ScoredReplies, is_conversational


class ScoreConfig(Config):
    """``rlhf reward score``: reward-model scores and token lengths of generated replies."""

    reward_model: str | None = Field(None, description="reward model directory written by 'rlhf reward train'")
    replies: str | None = Field(None, description="'rlhf generate --output' JSONL file: {prompt, replies}")
    output: str | None = Field(None, description="JSON file to write (and OUTPUT.config.yaml beside it)")
    max_length: int | None = Field(
        None, ge=8, description="prompt+reply tokens at most; longer replies get no score (default: the "
        "reward model's training max_length)")
    batch_size: int = Field(16, ge=1, description="replies per forward pass")


def read_replies(path: Path) -> tuple[list, list[list[str]]]:
    """Prompts and replies of an ``rlhf generate --output`` file; a bad line is a ``UserError`` naming it."""
    from rlhf.jsonl import jsonl_rows, read_text

    if not path.is_file():
        raise UserError(f"{path}: replies file not found (write one with `rlhf generate --output FILE.jsonl`)")
    prompts, replies = [], []
    for where, row in jsonl_rows(read_text(path), path):
        if not isinstance(row, dict) or "prompt" not in row or not isinstance(row.get("replies"), list) \
                or not row["replies"] or not all(isinstance(r, str) for r in row["replies"]):
            raise UserError(f"{where}: expected {{\"prompt\": ..., \"replies\": [text, ...]}}")
        prompts.append(row["prompt"])
        replies.append(row["replies"])
    if not prompts:
        raise UserError(f"{path}: no rows")
    return prompts, replies


def score_replies_file(config: ScoreConfig) -> ScoredReplies:
    """Score every reply of ``config.replies``; write ``config.output``; return what was written."""
    for name in ("reward_model", "replies", "output"):
        if not getattr(config, name):
            raise UserError(f"give --{name.replace('_', '-')} (see rlhf reward score --help)")
    checkpoint, output = Path(config.reward_model), Path(config.output)
    if not (checkpoint / "config.json").is_file():
        raise UserError(f"{checkpoint}: not a reward model checkpoint (no config.json)")
    if output.is_dir():
        raise UserError(f"{output}: output must be a file path, not a directory")
    prompts, replies = read_replies(Path(config.replies))

    from reward.evaluate import by_slot, reply_slots, score_ids, trained_max_length
    from reward.probe import support_features
    from rlhf.modeling import load_score_model, load_tokenizer, outside_support

    max_length = config.max_length or trained_max_length(checkpoint)

    tokenizer = load_tokenizer(str(checkpoint), padding_side="right")
    model = load_score_model(str(checkpoint))
    # A chat prompt's reply is scored as one assistant message, the form the reward model trained on.
    rows = [{"prompt": p, "completions": [[{"role": "assistant", "content": t}] for t in r] if is_conversational(p)
             else r} for p, r in zip(prompts, replies)]
    ids, slots = reply_slots(tokenizer, rows, max_length, what="generated")
    flat = score_ids(model, ids, tokenizer.pad_token_id, config.batch_size)
    scores = by_slot(flat, slots)
    outside = None
    support = getattr(model.config, "score_support", None)
    if support:  # which replies the probe scored as the worst reviewed one, for being unlike all it was fitted on
        measured = support_features(load_score_model(str(checkpoint), with_pooling=False), ids, tokenizer.pad_token_id,
                                    support, config.batch_size)
        flags = outside_support(support, measured).tolist()
        outside = by_slot(flags, slots)
    lengths = [[len(tokenizer(reply, add_special_tokens=False)["input_ids"]) for reply in row] for row in replies]
    result = ScoredReplies(str(checkpoint), str(config.replies), max_length, prompts, replies, scores, lengths,
                           left_out=sum(s is None for row in scores for s in row), outside_support=outside)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
    save_resolved(config, output.parent, name=output.stem + ".config.yaml")
    return result


def run_score(config: ScoreConfig) -> int:
    result = score_replies_file(config)
    scores, lengths = result.flat_scores(), result.flat_lengths()
    mean = f"{sum(scores) / len(scores):.4f}" if scores else "n/a"
    too_long = f", {result.left_out} too long (no score)" if result.left_out else ""
    outside = result.flat_outside()
    if outside is not None:
        too_long += f", {sum(outside)} outside the reward model's support (scored as the worst reviewed reply)"
    print(f"{len(lengths)} replies to {len(result.prompts)} prompts: mean reward {mean}, "
          f"mean length {sum(lengths) / len(lengths):.1f} tokens{too_long}")
    print(f"wrote {config.output}")
    return 0

"""``rlhf reward prioritise``: what each open item's ranking would teach the reward model, from files.

  rlhf reward prioritise --rankings kwise.jsonl --items open.jsonl --output priorities.json [--model bundled]

``--rankings``: K-wise rows (``prompt``, ``completions``, ``ranks``), as ``rlhf app export`` writes them
(``OUT/kwise-train.jsonl``); ``--items``: ``{"item_id", "prompt", "completions"}`` per line. An ensemble
of probes on the frozen model's features learns from the rankings (``reward.active.probe_ensemble``)
and scores every item (``reward.active.item_information``); the output JSON holds ``priorities``
(item id -> nats) and how they were made. ``rlhf app prioritise`` writes the two files from the store,
runs this command and stores the priorities (the app never imports the reward model's code: stages
hand data over in files).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field

from rlhf.config import Config
from rlhf.errors import UserError
from rlhf.schema import PRIORITY_MEMBERS, PRIORITY_MIN_PROMPTS, PRIORITY_MIN_RANKINGS, prompt_key


class PrioritiseConfig(Config):
    """``rlhf reward prioritise``: hand-out priorities of open items from the rankings so far."""

    rankings: str | None = Field(None, description="K-wise rankings JSONL: prompt, completions, ranks")
    items: str | None = Field(None, description="open items JSONL: item_id, prompt, completions")
    output: str | None = Field(None, description="JSON file to write: priorities by item id, and how")
    model: str = Field("bundled", description="model whose frozen features the probes read (the policy)")
    members: int = Field(PRIORITY_MEMBERS, ge=2, le=64, description="probes in the ensemble")
    seed: int = Field(0, description="seed of the resamples and the validation split")
    batch_size: int = Field(16, ge=1, description="replies per forward pass")


def _read_rows(path: Path, what: str, fields: tuple[str, ...]) -> list[dict]:
    from rlhf.jsonl import jsonl_rows, read_text

    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    rows = []
    for where, row in jsonl_rows(read_text(path), path):
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise UserError(f"{where}: no {', '.join(repr(m) for m in missing)} field")
        if not isinstance(row["completions"], list) or len(row["completions"]) < 2:
            raise UserError(f"{where}: 'completions' must be a list of at least 2 replies")
        if "ranks" in fields and (not isinstance(row["ranks"], list) or len(row["ranks"]) != len(row["completions"])
                                  or not all(isinstance(r, int) and r >= 1 for r in row["ranks"])):
            raise UserError(f"{where}: 'ranks' must be one whole number >= 1 per reply")
        rows.append(row)
    return rows


def prioritise_files(config: PrioritiseConfig) -> dict:
    """Read, score, write ``config.output``; return what was written."""
    for name in ("rankings", "items", "output"):
        if not getattr(config, name):
            raise UserError(f"give --{name} (see rlhf reward prioritise --help)")
    start = time.perf_counter()
    rankings = _read_rows(Path(config.rankings), "rankings", ("prompt", "completions", "ranks"))
    items = _read_rows(Path(config.items), "items", ("item_id", "prompt", "completions"))
    usable = [r for r in rankings if len(set(r["ranks"])) > 1]
    prompts = {prompt_key(r["prompt"]) for r in usable}
    if len(usable) < PRIORITY_MIN_RANKINGS or len(prompts) < PRIORITY_MIN_PROMPTS:
        raise UserError(f"{config.rankings}: {len(usable)} rankings with two distinct ranks over {len(prompts)} prompts; "
                        f"at least {PRIORITY_MIN_RANKINGS} over {PRIORITY_MIN_PROMPTS} are needed")
    if not items:
        raise UserError(f"{config.items}: no items")

    from reward.active import item_information, probe_ensemble
    from reward.config import PROBE_DEPTH
    from reward.probe import cut_to_probe_depth, ranking_features
    from rlhf.modeling import load_policy, load_tokenizer, resolve_model_path

    path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(path, padding_side="right")
    model = load_policy(path)
    # the default reward model's features (reward.config.PROBE_DEPTH): the bottom layers' mean
    feature = cut_to_probe_depth(model, PROBE_DEPTH)
    x, ranks = ranking_features(model, tokenizer, usable, feature, config.batch_size)
    ensemble = probe_ensemble(x, ranks, [prompt_key(r["prompt"]) for r in usable], config.members, config.seed)
    open_rows = [{**item, "ranks": [1] * len(item["completions"])} for item in items]
    ox, oranks = ranking_features(model, tokenizer, open_rows, feature, config.batch_size)
    info = item_information(ensemble.scores(ox), oranks > 0)
    result = {"priorities": {str(item["item_id"]): round(float(v), 6) for item, v in zip(items, info)},
              "rankings": len(usable), "prompts": len(prompts), "members": config.members, "l2": ensemble.l2,
              "feature": feature, "model": config.model, "seconds": round(time.perf_counter() - start, 1)}
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result), encoding="utf-8")
    return result


def run_prioritise(config: PrioritiseConfig) -> int:
    result = prioritise_files(config)
    print(f"{len(result['priorities'])} items scored by an ensemble of {result['members']} probes fitted to "
          f"{result['rankings']} rankings ({result['seconds']:.0f} s); wrote {config.output}")
    return 0

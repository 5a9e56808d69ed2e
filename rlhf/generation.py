"""Batched reply generation with the chat template applied; shared by `rlhf generate`, the feedback
app's candidate generation and the evaluation of exported checkpoints."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rlhf.schema import Prompt, as_messages

log = logging.getLogger(__name__)


@dataclass
class SamplingSettings:
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.95
    seed: int = 0
    # "fast": rlhf.decode's loop (bfloat16 weights, several times faster on CPU) where the model
    # allows it, else transformers' generate(), said in the log; "transformers": always generate().
    backend: str = "fast"

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """The text the model sees: the chat template with the assistant turn opened, or the raw text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def scored_ids(tokenizer, prompt: Prompt, reply: str | list[dict]) -> list[int]:
    """Token ids of prompt + reply as a reward model reads them: as PPO hands it a sampled reply, the
    prompt as the policy sees it (``render_prompt``: the chat template with the assistant turn
    opened, or the raw text), the reply's tokens and the end-of-sequence token. ``reply``: a text or
    the assistant message(s) of a conversational export.

    Every reader of a reward model builds its input here (training, evaluation, ``rlhf reward score``,
    the GRPO/RLOO evaluation scorer), so what it learned from is what the policy is scored on. Before,
    a plain-text export trained it on prompt + reply with no template while PPO scored the templated
    text (a system prompt, the turn markers): features it had never seen; and a chat export ended on
    the template's newline after the end token, where PPO's reply ends on the end token itself.
    """
    text = reply if isinstance(reply, str) else "\n".join(str(m.get("content", "")) for m in reply)
    ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids


@dataclass
class ReplyEnd:
    """How one generated reply ended: ``finish_reason`` "stop" (the model wrote its end-of-sequence
    token) or "length" (cut by ``max_new_tokens``), and ``new_tokens`` it holds (the end token not
    counted)."""

    finish_reason: str
    new_tokens: int


def reply_end(new_tokens: list[int], eos_ids: set[int]) -> ReplyEnd:
    """The end of one row of ``generate``'s new tokens. A finished row is padded after its end token
    and an unfinished one ran to the end, since a batch stops only when every row has finished or
    ``max_new_tokens`` is reached: so a row with no end token was cut by the limit."""
    for i, token in enumerate(new_tokens):
        if token in eos_ids:
            return ReplyEnd("stop", i)
    return ReplyEnd("length", len(new_tokens))


def generate_replies(model, tokenizer, prompts: list[Prompt], num_replies: int = 1,
                     sampling: SamplingSettings | None = None, batch_size: int = 8,
                     progress: bool = True, ends: list[list[ReplyEnd]] | None = None) -> list[list[str]]:
    """``num_replies`` replies for each prompt: ``result[i][j]`` is reply j to prompt i.

    ``tokenizer`` must pad on the left. Prompts are batched (``batch_size`` sequences per forward
    pass, counting each of a prompt's replies), which is several times faster than one at a time.
    ``ends``, if given (an empty list), receives each reply's ``ReplyEnd`` in the same layout.
    """
    import torch
    from tqdm.auto import tqdm

    if tokenizer.padding_side != "left":
        raise ValueError("generation needs a tokenizer that pads on the left")
    sampling = sampling or SamplingSettings()
    torch.manual_seed(sampling.seed)
    texts = [render_prompt(tokenizer, p) for p in prompts]
    # Each prompt repeated num_replies times, so a batch holds several replies of one prompt.
    flat = [(i, t) for i, t in enumerate(texts) for _ in range(num_replies)]
    results: list[list[str]] = [[] for _ in prompts]
    if ends is not None:
        ends[:] = [[] for _ in prompts]
    eos = tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    model.eval()
    run = sequences_function(model, tokenizer, sampling)
    with tqdm(total=len(flat), desc="generate", unit="reply", disable=not progress) as bar:
        for start in range(0, len(flat), batch_size):
            chunk = flat[start:start + batch_size]
            enc = tokenizer([t for _, t in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = run(enc)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            for (i, _), tokens in zip(chunk, new_tokens):
                results[i].append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
                if ends is not None:
                    ends[i].append(reply_end(tokens.tolist(), eos_ids))
            bar.update(len(chunk))
    return results


def sequences_function(model, tokenizer, sampling: SamplingSettings):
    """batch -> prompt + reply token ids, by the chosen backend; where the fast loop cannot run the
    model, transformers' generate() with one log line saying why."""
    def with_transformers(enc):
        return model.generate(**enc, **sampling.generate_kwargs(), pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)

    if sampling.backend != "fast":
        return with_transformers
    from rlhf.decode import PackedWeights, decode, unsupported_reason

    reason = unsupported_reason(model)
    if reason:
        log.warning("generation: transformers' generate() (the fast decode loop cannot run this model: %s)", reason)
        return with_transformers
    from rlhf import decode_native

    log.info("generation: the fast decode loop (rlhf.decode), %s", decode_native.describe())

    def fast(enc):
        return decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=sampling.max_new_tokens,
                      do_sample=sampling.temperature > 0, temperature=sampling.temperature, top_p=sampling.top_p,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      weights=PackedWeights.kept(model)).sequences
    return fast

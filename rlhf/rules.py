"""Scripted-reviewer rules: load a rule (a Python expression of ``text`` or ``module:function``) and
turn its scores into a ranking. Pure and small, and in the core rather than the app: the app's
scripted reviewers (ranking and A/B) and the loop's report (``rlhf loop``) score replies with the same code.

  --rule "len(text)"                 longer is better
  --rule "-text.count('sorry')"      fewer apologies is better
  --rule mypkg.rules:politeness      any function of the reply text returning a number
"""

from __future__ import annotations

import builtins
import importlib
import math
import random
import re
from typing import Callable

from rlhf.errors import UserError

Rule = Callable[[str], float]

# What an expression may call: harmless builtins and the re/math modules; no open, import or eval.
_SAFE = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "float", "int", "len", "max", "min", "round", "sorted", "str", "sum", "set",
    "list", "tuple")}


def load_rule(spec: str) -> Rule:
    """A function of the reply text returning a float score (higher is better)."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("--rule: give an expression of `text` (e.g. \"len(text)\") or module:function")
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        module_name, func_name = spec.split(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"--rule {spec}: cannot load it: {exc}") from None
        rule = func
    else:
        try:
            code = compile(spec, "<rule>", "eval")
        except SyntaxError as exc:
            raise UserError(f"--rule {spec!r}: not a Python expression: {exc.msg}") from None

        def rule(text: str) -> float:
            return eval(code, {"__builtins__": _SAFE, "re": re, "math": math}, {"text": text})  # noqa: S307

    def checked(text: str) -> float:
        try:
            value = float(rule(text))
        except Exception as exc:
            raise UserError(f"--rule {spec!r}: failed on a reply: {type(exc).__name__}: {exc}") from None
        if math.isnan(value):
            raise UserError(f"--rule {spec!r}: returned NaN")
        return value

    checked("a sample reply")  # fail at start, not in the middle of a run
    return checked


def ranks_from_scores(scores: list[float]) -> list[int]:
    """Competition ranks: the highest score gets 1; equal scores tie (``[5, 9, 5] -> [2, 1, 2]``)."""
    return [1 + sum(other > s for other in scores) for s in scores]


def score_replies(rule: Rule, texts: list[str], rng: random.Random, noise: float = 0.0,
                  flipped: bool = False) -> list[float]:
    """The rule's scores, negated for a disagreeing reviewer, plus Gaussian noise of std ``noise``."""
    sign = -1.0 if flipped else 1.0
    return [sign * rule(t) + (rng.gauss(0.0, noise) if noise > 0 else 0.0) for t in texts]


def rank_replies(rule: Rule, texts: list[str], rng: random.Random, noise: float = 0.0,
                 flipped: bool = False) -> list[int]:
    return ranks_from_scores(score_replies(rule, texts, rng, noise, flipped))

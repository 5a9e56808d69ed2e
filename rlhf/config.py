"""Typed configs: one pydantic model per command, read from YAML, then overridden by CLI flags.

Every field of a config becomes a flag: ``max_new_tokens`` -> ``--max-new-tokens``; a field of a
nested section -> ``--lora.r``. The YAML file gives the base, flags override it, the model validates
the result, and the resolved config is written beside every output (``save_resolved``).

Errors name the file and the field: ``configs/ppo/x.yaml: field 'lora.r': Input should be a valid
integer``. Unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rlhf.errors import UserError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every command config: unknown fields are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ---------------------------------------------------------------------------------------------------
# YAML


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{line}: malformed YAML: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a YAML mapping of field: value")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = data.get(key)
        if not isinstance(node, dict):
            node = data[key] = {}
        data = node
    data[keys[-1]] = value


def validate(cls: type[C], data: dict[str, Any], source: str) -> C:
    """Build ``cls`` from ``data``; a failure names ``source`` and the first bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = ", ".join(_known_fields(cls, err["loc"][:-1]))
            raise UserError(f"{source}: unknown field '{field}' (known: {known})") from None
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        raise UserError(f"{source}: field '{field}': {err['msg']}{got}{more}") from None


def _known_fields(cls: type[BaseModel], loc: tuple) -> list[str]:
    for key in loc:
        sub = _submodel(cls.model_fields.get(str(key)).annotation) if str(key) in cls.model_fields else None
        if sub is None:
            return []
        cls = sub
    return sorted(cls.model_fields)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``annotation`` (``Sub`` or ``Optional[Sub]``), else None."""
    candidates = typing.get_args(annotation) or (annotation,)
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> C:
    """YAML file (optional) + dotted overrides -> validated config."""
    data = read_yaml(path) if path else {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    source = str(path) if path else "command line"
    if overrides and path:
        source = f"{path} (with command-line overrides)"
    return validate(cls, data, source)


def save_resolved(config: Config, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the fully resolved config beside an output, so a run can be reproduced from it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return target


# ---------------------------------------------------------------------------------------------------
# CLI flags from fields


def _iter_fields(cls: type[BaseModel], prefix: str = ""):
    for name, info in cls.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is not None:
            yield from _iter_fields(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def _is_plain_str(annotation: Any) -> bool:
    """``str`` or ``str | None``: such flags are taken verbatim, not parsed as YAML."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return bool(args) and all(a is str for a in args)


def add_config_flags(parser: argparse.ArgumentParser, cls: type[Config], default_config: str | None = None) -> None:
    """``--config FILE`` plus one override flag per field (help text from the field description)."""
    parser.add_argument(
        "--config",
        default=default_config,
        metavar="FILE",
        help=f"YAML config file (default: {default_config or 'none, field defaults'})",
    )
    group = parser.add_argument_group("config overrides (take precedence over the YAML file)")
    for dotted, info in _iter_fields(cls):
        flag = "--" + dotted.replace("_", "-")
        if info.is_required():
            shown = "required"
        else:
            default = info.default_factory() if info.default_factory is not None else info.default
            shown = f"default: {'none' if default is None else default}"
        text = (info.description or "") + f" [{shown}]"
        if info.annotation is bool:  # `--include-flagged` alone means true; `--include-flagged false` still works
            group.add_argument(flag, dest=f"cfg:{dotted}", default=argparse.SUPPRESS, metavar="V", help=text,
                               nargs="?", const="true")
        else:
            group.add_argument(flag, dest=f"cfg:{dotted}", default=argparse.SUPPRESS, metavar="V", help=text)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """Build the config from ``--config`` and the override flags that were given."""
    fields = dict(_iter_fields(cls))
    overrides: dict[str, Any] = {}
    for key, raw in vars(args).items():
        if not key.startswith("cfg:"):
            continue
        dotted = key[4:]
        if not isinstance(raw, str):  # already parsed by argparse (a repeatable flag's list, an int)
            overrides[dotted] = raw
        elif _is_plain_str(fields[dotted].annotation):
            overrides[dotted] = raw
        else:  # lists, numbers, booleans, null: parse the flag as a YAML scalar or flow sequence
            try:
                overrides[dotted] = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise UserError(f"--{dotted.replace('_', '-')}: cannot parse {raw!r}") from None
    return load_config(cls, getattr(args, "config", None), overrides)

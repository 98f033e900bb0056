"""YAML configs on strict pydantic models: the strict base, `extends:` inheritance, `--set` overrides and
errors that name the key and the fix. Recipes (train/config.py) and merge configs both build on it."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from train.errors import UserError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info) -> Any:
        # pydantic's lax mode reads `max_steps: true` as 1; a boolean where a number belongs is a mistake.
        if isinstance(value, bool) and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise PydanticCustomError("bool_for_number", "expects a number, not true/false")
        return value


def _numbers_only(annotation: Any) -> bool:
    kinds = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    return bool(kinds) and all(k in (int, float) for k in kinds)


class _Loader(yaml.SafeLoader):
    """YAML as people write configs: `5e5` and `1e-6` are numbers (PyYAML follows YAML 1.1, where floats need
    a dot), and `2024-06-01` stays text (a run name or a dataset revision, not a date)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping at the top level, found {type(data).__name__}")
    return data


def _deep_merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a recipe and the chain of files it `extends:` (paths relative to the extending file)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise UserError(f"config 'extends:' forms a cycle: {chain}")
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise UserError(f"{path}: 'extends' takes a file name or a list of them, got {parents!r}")
    merged: dict = {}
    for parent in parents:
        merged = _deep_merge(merged, load_yaml_tree(path.parent / parent, (*_seen, path)))
    return _deep_merge(merged, data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (a number indexes a list: `data.sources.0.weight=2`); values are parsed
    as YAML (so 3e-5, true, [a, b] keep their types)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value (dotted key, YAML value), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the top level"
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(
                        f"--set {item!r}: '{where}' is a list of {len(node)}; index it from 0 (got '{part}')"
                    )
                part = int(part)
            elif not isinstance(node, dict):
                raise UserError(
                    f"--set {item!r}: '{where}' holds {node!r}, not a section; set '{where}' itself"
                )
            if depth == len(parts) - 1:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:  # a section the recipe leaves out
                    node[part] = {}
                node = node[part]
    return data


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid key names at the parent of `loc`, for did-you-mean suggestions."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        for candidate in (ann, *getattr(ann, "__args__", ())):
            inner = getattr(candidate, "__args__", ())
            for c in (candidate, *inner):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    model = c
                    break
            else:
                continue
            break
        else:
            return []
    return list(model.model_fields)


def _describe(err: dict, root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "<top level>"
    if err["type"] == "extra_forbidden":
        names = _field_names(root, loc)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" Did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
        return f"unknown key '{key}'.{hint} Valid keys here: {', '.join(names)}."
    if err["type"] == "missing":
        return f"missing required key '{key}'."
    if err["type"] == "value_error":
        msg = str(err["msg"]).removeprefix("Value error, ")
        return f"'{key}': {msg}." if loc and key not in msg else f"{msg}."
    got = err.get("input")
    return f"'{key}': {err['msg']} (got {got!r} of type {type(got).__name__})."


def describe_errors(err: ValidationError, root: type[BaseModel]) -> str:
    """Pydantic's errors as one readable paragraph: each names its dotted key and, for typos, the nearest."""
    return " ".join(_describe(e, root) for e in err.errors())

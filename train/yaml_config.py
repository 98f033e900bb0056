"""YAML configs on strict pydantic models: the strict base, `extends:` inheritance, `--set` overrides and
errors that name the key and the fix. Recipes (train/config.py) and merge configs both build on it."""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
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
        # pydantic's lax mode reads `max_steps: true` as 1; a boolean where a number belongs is a mistake,
        # also inside a list or mapping of numbers (betas, stage weights)
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _numbers_only(annotation):
            raise PydanticCustomError("bool_for_number", "expects a number, not true/false")
        items = (
            value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
        )
        if any(isinstance(v, bool) for v in items) and _numbers_inside(annotation):
            raise PydanticCustomError("bool_for_number", "expects numbers, not true/false")
        return value


def _kinds(annotation: Any) -> list:
    """The members of an optional or union annotation, Annotated[...] unwrapped."""
    members = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    members = [typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m for m in members]
    return [m for m in members if m is not type(None)]


def _numbers_only(annotation: Any) -> bool:
    kinds = _kinds(annotation)
    return bool(kinds) and all(k in (int, float) for k in kinds)


def _numbers_inside(annotation: Any) -> bool:
    """A list, tuple or mapping whose values are numbers (a mapping's keys are names)."""
    for kind in _kinds(annotation):
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin is dict:
            args = args[1:]
        if (
            origin in (list, tuple, dict)
            and args
            and all(_numbers_only(a) for a in args if a is not Ellipsis)
        ):
            return True
    return False


class _Loader(yaml.SafeLoader):
    """YAML as people write configs: `5e5` and `1e-6` are numbers (PyYAML follows YAML 1.1, where floats need
    a dot), `2024-06-01` stays text (a run name or a dataset revision, not a date), only true / false are
    booleans (YAML 1.2: `no` is Norwegian in a language list), and a key given twice in one mapping is an error
    (PyYAML keeps the last one silently, so a second `optim:` block would drop the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"key '{key}' is given twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
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
        if not (path.parent / parent).is_file():
            raise UserError(f"{path}: extends '{parent}', but {path.parent / parent} is not a file")
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
        except yaml.YAMLError as e:
            if raw.lstrip().startswith(("[", "{")):  # meant as a list or mapping: not text with a typo in it
                raise UserError(f"--set {item!r}: the value is not valid YAML ({e.problem})") from None
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
    quote = ""
    if err["type"] == "string_type" and isinstance(
        got, int | float | bool
    ):  # YAML typed it: `123e4567`, `1.0`
        quote = " YAML reads that as a number or boolean: quote it to keep it text."
    return f"'{key}': {err['msg']} (got {got!r} of type {type(got).__name__}).{quote}"


def describe_errors(err: ValidationError, root: type[BaseModel]) -> str:
    """Pydantic's errors as one readable paragraph: each names its dotted key and, for typos, the nearest."""
    return " ".join(_describe(e, root) for e in err.errors())

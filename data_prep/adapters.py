"""Schema adapters: the only code that knows a dataset's raw schema.

An adapter turns raw rows into records: `{"text": str}` (CPT) or `{"messages": [{"role", "content"}]}`
(SFT). Row adapters see one row at a time and raise `BadRow` with the reason; tree adapters (oasst)
see the whole dataset because a conversation spans many rows.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from data_prep.errors import BadRow, DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
MESSAGE_KEYS = ("messages", "dialog", "conversation")
# JSON may escape half of a UTF-16 pair (\ud800); such a str is not Unicode text and the tokenizer
# cannot encode it (a TypeError, not a bad row), so it is refused where fields are read.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class AdapterOptions:
    text_key: str = "text"
    messages_key: str | None = None
    """For `messages`: the list's key; None takes the first of messages/dialog/conversation present."""
    alpaca_input: str = "system"
    """Non-empty alpaca `input`: 'system' (instruction as system turn, input as user; the reference)
    or 'concat' (instruction + newline + input as the user turn; LLaMA-Factory)."""
    langs: tuple[str, ...] | None = None
    """oasst: keep trees whose root prompt has one of these languages (None: all)."""


def _unicode(value: str, what: str) -> str:
    """`value`, or a BadRow if it holds a lone surrogate."""
    bad = _SURROGATE.search(value)
    if bad:
        raise BadRow(
            f"{what} holds a lone surrogate (\\u{ord(bad.group()):04x} at character {bad.start()}), "
            "which is not valid Unicode text"
        )
    return value


def _str_field(row: dict, key: str, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if not required:
            return ""
        if key in row:
            raise BadRow(f"field '{key}' is null")
        raise BadRow(f"field '{key}' is missing; the row has: {', '.join(map(str, row)) or 'no fields'}")
    value = row[key]
    if not isinstance(value, str):
        raise BadRow(f"field '{key}' must be a string, found {type(value).__name__}")
    return _unicode(value, f"field '{key}'")


def _as_dict(row: object) -> dict:
    if not isinstance(row, dict):
        raise BadRow(f"expected an object, found {type(row).__name__}")
    return row


def check_conversation(messages: list[dict]) -> list[dict]:
    """Validate roles and order: optional system first, then user/assistant alternating, ending on assistant."""
    if not messages:
        raise BadRow("the conversation is empty")
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise BadRow(f"turn {i}: role '{m['role']}' is not one of {', '.join(ROLES)}")
        if not m["content"].strip():
            raise BadRow(f"turn {i} ({m['role']}): content is empty")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    for i, m in enumerate(body):
        if m["role"] != expected[i]:
            raise BadRow(
                f"turn {i + len(messages) - len(body)}: expected a {expected[i]} turn, found {m['role']}"
            )
    if not body or body[-1]["role"] != "assistant":
        raise BadRow("the conversation does not end with an assistant turn")
    return messages


def text(row: object, opts: AdapterOptions) -> dict:
    """Plain text corpora (SynE, llm-jp-corpus, CulturaX, Wikipedia): the `text_key` column, rest ignored."""
    row = _as_dict(row)
    if opts.text_key not in row:
        raise BadRow(
            f"text field '{opts.text_key}' is missing; the row has: {', '.join(map(str, row)) or 'no fields'}. "
            "Set the source's text_key."
        )
    return {"text": _str_field(row, opts.text_key)}


def alpaca(row: object, opts: AdapterOptions) -> dict:
    """instruction/input/output, optional history of [user, assistant] pairs before the current turn."""
    row = _as_dict(row)
    instruction, inp = _str_field(row, "instruction"), _str_field(row, "input", required=False)
    output = _str_field(row, "output")
    history = row.get("history") or []
    if not isinstance(history, list):
        raise BadRow(
            f"field 'history' must be a list of [user, assistant] pairs, found {type(history).__name__}"
        )
    messages = []
    # without an instruction there is no system turn to make: the input is the prompt
    if inp.strip() and instruction.strip() and opts.alpaca_input == "system":
        messages.append({"role": "system", "content": instruction})
        prompt = inp
    else:
        prompt = f"{instruction}\n{inp}" if inp.strip() else instruction
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise BadRow(f"history[{i}] must be a pair of strings [user, assistant]")
        for t in pair:
            _unicode(t, f"history[{i}]")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": check_conversation(messages)}


def _turns(raw: object, role_key: str, content_key: str, roles: dict[str, str] | None) -> list[dict]:
    if not isinstance(raw, list):
        raise BadRow(f"the conversation must be a list of turns, found {type(raw).__name__}")
    out = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise BadRow(f"turn {i} must be an object with '{role_key}' and '{content_key}'")
        role, content = turn[role_key], turn[content_key]
        if not isinstance(content, str) or not isinstance(role, str):
            raise BadRow(f"turn {i}: '{role_key}' and '{content_key}' must be strings")
        if roles is not None:
            if role not in roles:
                raise BadRow(f"turn {i}: '{role_key}' '{role}' is not one of {', '.join(roles)}")
            role = roles[role]
        out.append({"role": role, "content": _unicode(content, f"turn {i}: '{content_key}'")})
    return out


def messages(row: object, opts: AdapterOptions) -> dict:
    """`messages` / `dialog` / `conversation` lists of {role, content}; `dialog` may be a JSON string."""
    row = _as_dict(row)
    keys = [opts.messages_key] if opts.messages_key else [k for k in MESSAGE_KEYS if k in row]
    if not keys or keys[0] not in row:
        hint = " (ShareGPT rows: set the source's adapter: sharegpt)" if "conversations" in row else ""
        raise BadRow(
            f"no conversation field ({opts.messages_key or ' / '.join(MESSAGE_KEYS)}); "
            f"the row has: {', '.join(map(str, row)) or 'no fields'}{hint}"
        )
    raw = row[keys[0]]
    if isinstance(raw, str):  # ControlLLM stores `dialog` as JSON or a Python literal
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):  # json's decoder recurses per nesting level
            try:
                raw = ast.literal_eval(raw)
            except (ValueError, SyntaxError, RecursionError, MemoryError):  # the parser's limits on nesting
                raise BadRow(f"field '{keys[0]}' is a string but not a JSON list of turns") from None
    return {"messages": check_conversation(_turns(raw, "role", "content", None))}


def sharegpt(row: object, opts: AdapterOptions) -> dict:
    """ShareGPT: `conversations` of {from: human|gpt|system, value}."""
    row = _as_dict(row)
    if "conversations" not in row:
        raise BadRow(f"field 'conversations' is missing; the row has: {', '.join(map(str, row))}")
    return {"messages": check_conversation(_turns(row["conversations"], "from", "value", SHAREGPT_ROLES))}


OASST_FIELDS = ("message_id", "parent_id", "message_tree_id", "role", "text")


def _oasst_node(row: object) -> dict:
    row = _as_dict(row)
    for key in OASST_FIELDS:
        if key not in row:
            raise BadRow(f"oasst field '{key}' is missing")
    if row["role"] not in ("prompter", "assistant"):
        raise BadRow(f"role '{row['role']}' is not prompter or assistant")
    # ids key the tree, dates order the replies, ranks pick the top-1: each type is compared or hashed
    for key, kinds, what in (
        ("text", (str,), "a string"),
        ("message_id", (str,), "a string"),
        ("parent_id", (str, type(None)), "a string or null"),
        ("created_date", (str, type(None)), "a string or null"),
        ("rank", (int, float, type(None)), "a number or null"),
    ):
        if not isinstance(row.get(key), kinds) or isinstance(row.get(key), bool):
            raise BadRow(f"field '{key}' must be {what}, found {type(row.get(key)).__name__}")
    _unicode(row["text"], "field 'text'")
    return row


def oasst_top1(
    rows: Iterable[tuple[str, object]], opts: AdapterOptions
) -> Iterator[tuple[str, dict | BadRow]]:
    """Top-1 threads of OpenAssistant message trees (load_oasst_export(top_k=1), datasets.md section 7).

    Yields (where, record) or (where, BadRow) so the caller can raise or count a skip."""
    children: dict[str, list[dict]] = defaultdict(list)
    roots, first_seen = [], {}
    for where, row in rows:
        try:
            if isinstance(row, BadRow):
                raise row
            node = {**_oasst_node(row), "where": where}
            if node["message_id"] in first_seen:  # the same export twice would multiply every thread
                raise BadRow(
                    f"message_id '{node['message_id']}' again (first at {first_seen[node['message_id']]}): "
                    "are two copies of the export read? Select one set of files with a glob path"
                )
        except BadRow as e:
            yield where, e
            continue
        first_seen[node["message_id"]] = where
        (roots.append(node) if node["parent_id"] is None else children[node["parent_id"]].append(node))
    for kids in children.values():  # the export lists replies by creation time
        kids.sort(key=lambda m: (m.get("created_date") or "", m["message_id"]))

    def keep(thread: list[dict]) -> bool:
        if any(m.get("deleted") or m.get("synthetic") for m in thread):
            return False
        for i, m in enumerate(thread):
            if m["role"] == "assistant":
                if m.get("rank") is None:
                    if i > 0 and len(children[thread[i - 1]["message_id"]]) > 1:
                        return False
                elif m["rank"] >= 1:
                    return False
        return True

    def is_sft_leaf(thread: list[dict]) -> bool:
        last = thread[-1]
        return (
            len(thread) > 1
            and not children[last["message_id"]]
            and (last["role"] == "assistant" or children[thread[-2]["message_id"]][0] is last)
            and keep(thread)
        )

    def visit(thread: list[dict]) -> Iterator[list[dict]]:
        if is_sft_leaf(thread):
            yield thread
        for child in children[thread[-1]["message_id"]]:
            yield from visit([*thread, child])

    for root in roots:
        if root.get("tree_state") != "ready_for_export" or root.get("review_result") is not True:
            continue
        if opts.langs is not None and root.get("lang") not in opts.langs:
            continue
        for thread in visit([root]):
            if thread[-1]["role"] == "prompter":
                thread = thread[:-1]
            msgs = [
                {"role": "user" if m["role"] == "prompter" else "assistant", "content": m["text"]}
                for m in thread
            ]
            try:
                yield thread[-1]["where"], {"messages": check_conversation(msgs)}
            except BadRow as e:
                yield thread[-1]["where"], e


RowAdapter = Callable[[object, AdapterOptions], dict]
ROW_ADAPTERS: dict[str, RowAdapter] = {
    "text": text,
    "alpaca": alpaca,
    "messages": messages,
    "sharegpt": sharegpt,
}
TREE_ADAPTERS = {"oasst_top1": oasst_top1}
ADAPTERS = (*ROW_ADAPTERS, *TREE_ADAPTERS)


def suggest(name: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' for the nearest valid name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def check_adapter(name: str) -> str:
    """The adapter name, or a DataError listing the valid ones with the nearest match."""
    if name not in ADAPTERS:
        raise DataError(
            f"unknown adapter '{name}'.{suggest(name, ADAPTERS)} Adapters: {', '.join(ADAPTERS)}."
        )
    return name


def record_kind(adapter: str) -> str:
    """'cpt' for adapters that yield text, 'sft' for conversations."""
    return "cpt" if adapter == "text" else "sft"

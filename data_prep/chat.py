"""Render conversations with the tokenizer's chat template and build the loss mask.

The template output is tokenized without added special tokens, so the BOS the template writes is
the only one. Assistant spans are found by rendering prefixes: the tokens between "everything
before this assistant turn + its header" and "everything up to and including this turn" are its
content and end-of-turn token. Both facts are checked per sample.
"""

from __future__ import annotations

import hashlib

IGNORE = -100


def template_fingerprint(tokenizer) -> str:
    """Hash of the chat template (a template change must rebuild SFT shards)."""
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat(
    tokenizer, messages: list[dict], train_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation; labels are IGNORE outside assistant content + end of turn.

    train_on_prompt ("mixed training") keeps every token but the first as a target."""
    text = _render(tokenizer, messages)
    ids = _ids(tokenizer, text)
    if ids.count(tokenizer.bos_token_id) != 1 or ids[0] != tokenizer.bos_token_id:
        raise ValueError(f"the rendered conversation must start with exactly one BOS: {text[:80]!r}")
    if tokenizer.decode(ids) != text:
        raise ValueError(
            f"the rendered conversation does not round-trip through the tokenizer: {text[:80]!r}"
        )
    if train_on_prompt:
        return ids, [IGNORE, *ids[1:]]
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _ids(tokenizer, _render(tokenizer, messages[:i], generation_prompt=True))
        through = _ids(tokenizer, _render(tokenizer, messages[: i + 1]))
        start, end = len(before), len(through)
        if ids[:start] != before or ids[:end] != through:
            raise ValueError(f"turn {i}: the template's prefixes do not tokenize as prefixes of the whole")
        # The span must be this turn's content plus special tokens only (the template trims content).
        if tokenizer.decode(ids[start:end], skip_special_tokens=True) != m["content"].strip():
            raise ValueError(f"turn {i}: the loss span is not exactly the assistant's content")
        labels[start:end] = ids[start:end]
    return ids, labels

"""Render conversations with the tokenizer's chat template and build the loss mask.

The template output is tokenized without added special tokens, so the BOS the template writes is
the only one. Assistant spans are found by rendering prefixes: the tokens between "everything
before this assistant turn + its header" and "everything up to and including this turn" are its
content and end-of-turn token. Both facts are checked per sample. Contents may not hold special token
strings: the template's own must be parsed as control tokens, and a tokenizer cannot tell them apart.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re

IGNORE = -100
END_OF_TURN = "<|eot_id|>"  # ends every turn of the Llama-3 chat format; SFT trains each reply to emit it


def stop_token_ids(tokenizer, eos_token_id: int | list[int] | None) -> list[int]:
    """`eos_token_id` (a generation config's: an int, a list or None) plus the end-of-turn token when the
    vocabulary has it, so a chat reply stops at the end of its turn (a base model's config stops only at
    <|end_of_text|>; Meta's Instruct configs list both)."""
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if eot is not None and eot != tokenizer.unk_token_id and eot not in ids:
        ids.append(eot)
    return ids


def template_fingerprint(tokenizer) -> str:
    """Hash of the chat template (a template change must rebuild SFT shards)."""
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]


@contextlib.contextmanager
def bare_backend(tokenizer, special_tokens_as_text: bool = False):
    """The tokenizer's Rust backend with truncation and padding off inside the block (restored after, as is
    `encode_special_tokens`). A tokenizer.json may store either, and the backend applies them on every
    encode: documents would be cut or get pad ids as text. Switched in place, not on a copy: copying a
    128k-token backend per sample would cost more than the encode (workers are processes, not threads)."""
    backend = tokenizer.backend_tokenizer
    truncation, padding, special = backend.truncation, backend.padding, backend.encode_special_tokens
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = special_tokens_as_text
    try:
        yield backend
    finally:
        backend.encode_special_tokens = special
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


@functools.lru_cache(maxsize=8)
def _special_strings(tokenizer) -> re.Pattern:
    """The special tokens' strings (Llama-3's reserved ones included), longest first."""
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return re.compile("|".join(map(re.escape, sorted(specials, key=len, reverse=True))) or "(?!)")


# Llama-3.2/3.3 templates write today's date (strftime_now) into the system turn unless given one: the
# same data would render differently each day. This is the date Llama-3.1's template always writes.
TEMPLATE_DATE = "26 Jul 2024"


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it, on a fixed `date_string` (TEMPLATE_DATE)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, date_string=TEMPLATE_DATE
    )


def _boundary(offsets: list[tuple[int, int]], char: int, n_chars: int) -> int:
    """Index of the first token starting at `char` (a turn boundary must fall between tokens)."""
    if char == n_chars:
        return len(offsets)
    for i, (begin, _) in enumerate(offsets):
        if begin >= char:
            if begin == char and (i == 0 or offsets[i - 1][1] <= char):
                return i
            break
    raise ValueError(f"a turn boundary (character {char}) falls inside a token")


def encode_chat(
    tokenizer, messages: list[dict], train_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation; labels are IGNORE outside assistant content + end of turn.

    train_on_prompt ("mixed training") keeps every token but the first as a target. A content that
    holds a special token's string is refused: the rendered text would encode it as that control token
    (a fake end of turn inside a turn)."""
    specials = _special_strings(tokenizer)
    for i, m in enumerate(messages):
        found = specials.search(m["content"])
        if found:
            raise ValueError(f"turn {i} ({m['role']}): content holds the special token {found.group()!r}")
    text = render(tokenizer, messages)
    with bare_backend(tokenizer) as backend:  # one fast encode with offsets instead of one per prefix
        enc = backend.encode(text, add_special_tokens=False)
    ids = enc.ids
    if ids.count(tokenizer.bos_token_id) != 1 or ids[0] != tokenizer.bos_token_id:
        raise ValueError(f"the rendered conversation must start with exactly one BOS: {text[:80]!r}")
    if backend.decode(ids, skip_special_tokens=False) != text:
        raise ValueError(
            f"the rendered conversation does not round-trip through the tokenizer: {text[:80]!r}"
        )
    if train_on_prompt:
        return ids, [IGNORE, *ids[1:]]
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise ValueError(
                f"turn {i}: the template's renderings of earlier turns are not prefixes of the whole"
            )
        start = _boundary(enc.offsets, len(before), len(text))
        end = _boundary(enc.offsets, len(through), len(text))
        # The span must be this turn's content plus special tokens only (the template trims content).
        if backend.decode(ids[start:end], skip_special_tokens=True) != m["content"].strip():
            raise ValueError(f"turn {i}: the loss span is not exactly the assistant's content")
        labels[start:end] = ids[start:end]
    return ids, labels

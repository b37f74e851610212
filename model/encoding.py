"""The one tokenization used by training and scoring.

The head reads the prompt's last position, so a prompt is tokenized the same way in
training and scoring; a protocol's name is tokenized only to start its head row from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from radproto.model.prompt import render_prompt, render_target

_PROMPT_TAIL = "\nProtocol:"  # kept when a long prompt is cut, so the model still sees the cue


def prompt_token_ids(tokenizer: Any, fields: Mapping[str, Any], max_length: int) -> list[int]:
    """The prompt's token ids (with BOS where the tokenizer adds one, never EOS), cut to
    max_length by dropping tokens before the final cue."""
    return batch_prompt_token_ids(tokenizer, [fields], max_length)[0]


def batch_prompt_token_ids(tokenizer: Any, fields_list: Sequence[Mapping[str, Any]],
                           max_length: int) -> list[list[int]]:
    """prompt_token_ids of many orders in one tokenizer call: a fast tokenizer encodes a
    batch on every core (a GPU burst's host time)."""
    if not fields_list:
        return []
    encoded = tokenizer([render_prompt(fields) for fields in fields_list])["input_ids"]
    budget = max(8, max_length)
    tail = 0
    prompts = []
    for ids in encoded:
        ids = list(ids)
        if ids and ids[-1] == tokenizer.eos_token_id:
            ids.pop()
        if len(ids) > budget:
            tail = tail or len(tokenizer(_PROMPT_TAIL, add_special_tokens=False)["input_ids"])
            ids = ids[: budget - tail] + ids[-tail:]
        prompts.append(ids)
    return prompts


def target_token_ids(tokenizer: Any, protocol: str) -> list[int]:
    """The tokens a language model would produce after the prompt for a protocol:
    " " + name, then EOS (the head's rows start from the name's)."""
    ids = list(tokenizer(render_target(protocol), add_special_tokens=False)["input_ids"])
    return [*ids, tokenizer.eos_token_id]

"""The one tokenization used by training and scoring.

The prompt and the target are tokenized separately and their ids concatenated, so the
prompt/target boundary is identical whether a protocol is trained or scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from radproto.model.prompt import render_prompt, render_target

IGNORE_INDEX = -100
#: Tokens kept free for the target: the prompt is cut to `max_length - TARGET_RESERVE`
#: whatever the protocol, so a long order's prompt is the same in training and scoring.
TARGET_RESERVE = 32
_PROMPT_TAIL = "\nProtocol:"  # kept when a long prompt is cut, so the model still sees the cue


def prompt_token_ids(tokenizer: Any, fields: Mapping[str, Any], max_length: int) -> list[int]:
    """The prompt's token ids (with BOS where the tokenizer adds one, never EOS), cut to fit."""
    ids = list(tokenizer(render_prompt(fields))["input_ids"])
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    budget = max(8, max_length - TARGET_RESERVE)
    if len(ids) > budget:
        tail = len(tokenizer(_PROMPT_TAIL, add_special_tokens=False)["input_ids"])
        ids = ids[: budget - tail] + ids[-tail:]
    return ids


def target_token_ids(tokenizer: Any, protocol: str) -> list[int]:
    """The tokens the model produces after the prompt for a protocol: " " + name, then EOS."""
    ids = list(tokenizer(render_target(protocol), add_special_tokens=False)["input_ids"])
    return [*ids, tokenizer.eos_token_id]


def encode_example(
    tokenizer: Any, fields: Mapping[str, Any], protocol: str | None, max_length: int
) -> dict[str, Any]:
    """input_ids, labels (-100 on prompt tokens) and prompt_len for one order.

    With `protocol=None` only the prompt is encoded (labels all -100).
    """
    prompt = prompt_token_ids(tokenizer, fields, max_length)
    target = target_token_ids(tokenizer, protocol) if protocol is not None else []
    return {
        "input_ids": prompt + target,
        "labels": [IGNORE_INDEX] * len(prompt) + target,
        "prompt_len": len(prompt),
    }

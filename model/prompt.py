"""The prompt template: the single source for training and inference.

Training and scoring both run `render_prompt(fields)` through the model and read the hidden
state of its last token (the "Protocol:" cue) with the protocol head. `render_target` is the
text a language model would continue with; the head's rows start from its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

PROMPT_VERSION = "p2"  # p2: read by the protocol head (p1: prefix-tree scoring)

# Short on purpose: every template token is paid for in every training step and every order.
_TEMPLATE = (
    "Radiology order.\n"
    "Ordered exam: {ordered_exam}\n"
    "History: {history}\n"
    "Diagnosis: {diagnosis}\n"
    "Notes: {notes}\n"
    "Protocol:"
)
_MAX_FIELD_CHARS = 1000  # a runaway note must not push the protocol out of the context


def render_prompt(fields: Mapping[str, str]) -> str:
    """The prompt for an order's four order-file fields (missing ones render as "none")."""
    values = {}
    for key in ("ordered_exam", "history", "diagnosis", "notes"):
        text = " ".join(str(fields.get(key) or "").split())
        values[key] = text[:_MAX_FIELD_CHARS] or "none"
    return _TEMPLATE.format(**values)


def render_target(protocol: str) -> str:
    """The text the model produces after the prompt for a protocol (the EOS token follows)."""
    return " " + protocol

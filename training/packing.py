"""Padding-free packing of training examples: many orders in one row, no pad tokens.

Each example keeps its own positions (0, 1, ...) and its own attention span: the packed row
carries `cu_seqlens` (where each example starts) so the attention never crosses from one
example into the next. Targets are shifted inside each example, so no example's last token
is asked to predict the next example's first one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100


def shift_targets(labels: Sequence[int]) -> list[int]:
    """targets[t] = labels[t + 1] inside one example; the last position predicts nothing."""
    return [*labels[1:], IGNORE_INDEX]


def plan_packs(lengths: Sequence[int], *, max_tokens: int,
               max_examples: int | None = None) -> list[list[int]]:
    """Groups of example indices, in data order, each at most `max_tokens` long in all.

    Data order is kept (no bin-packing reorder) so a run is reproducible step for step and
    a pack holds the same examples as a padded batch of the same size would.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, length in enumerate(lengths):
        if length > max_tokens:
            raise ValueError(f"example {index} has {length} tokens, over max_tokens={max_tokens}")
        full = max_examples is not None and len(current) >= max_examples
        if current and (used + length > max_tokens or full):
            packs.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    if current:
        packs.append(current)
    return packs


@dataclass
class PackedBatch:
    """One packed row: [1, n_tokens] tensors plus the example boundaries."""

    input_ids: Any  # torch.LongTensor [1, T]
    position_ids: Any  # torch.LongTensor [1, T], restarting at 0 for every example
    targets: Any  # torch.LongTensor [1, T], the next token inside the example or -100
    cu_seqlens: Any  # torch.IntTensor [n_examples + 1], example start offsets, then T
    max_seqlen: int
    n_examples: int
    n_tokens: int
    n_label_tokens: int

    def to(self, device: Any) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            position_ids=self.position_ids.to(device, non_blocking=True),
            targets=self.targets.to(device, non_blocking=True),
            cu_seqlens=self.cu_seqlens.to(device, non_blocking=True),
            max_seqlen=self.max_seqlen,
            n_examples=self.n_examples,
            n_tokens=self.n_tokens,
            n_label_tokens=self.n_label_tokens,
        )


def pack_examples(examples: Sequence[dict[str, Sequence[int]]]) -> PackedBatch:
    """Concatenate examples (dicts with input_ids and labels, labels -100 on the prompt)."""
    import torch

    if not examples:
        raise ValueError("cannot pack zero examples")
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    starts = [0]
    for example in examples:
        input_ids = list(example["input_ids"])
        labels = list(example["labels"])
        if len(input_ids) != len(labels) or not input_ids:
            raise ValueError("each example needs as many labels as input ids, at least one")
        ids += input_ids
        positions += range(len(input_ids))
        targets += shift_targets(labels)
        starts.append(len(ids))
    lengths = [b - a for a, b in itertools.pairwise(starts)]
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        targets=torch.tensor([targets], dtype=torch.long),
        cu_seqlens=torch.tensor(starts, dtype=torch.int32),
        max_seqlen=max(lengths),
        n_examples=len(examples),
        n_tokens=len(ids),
        n_label_tokens=sum(t != IGNORE_INDEX for t in targets),
    )


def pad_examples(examples: Sequence[dict[str, Sequence[int]]], pad_token_id: int) -> dict[str, Any]:
    """The plain padded batch (right padding, labels -100 on padding): the reference path."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.as_tensor(list(example["input_ids"]))
        labels[row, :n] = torch.as_tensor(list(example["labels"]))
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}

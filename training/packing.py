"""Micro-batches for training the protocol head: padded, or packed into one row.

A training example is an order's prompt token ids and its protocol's index in the catalog.
The padded batch right-pads the prompts (scoring.last_hidden_states reads each row's last
real token). The packed batch concatenates the prompts into one row without padding: each
example keeps its own positions (0, 1, ...) and its attention span, given by `cu_seqlens`,
so attention never crosses from one example into the next; the head reads the hidden state
at each example's last token. On CUDA the packed row runs through flash-attention varlen
(model/kernels.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class PackedBatch:
    """One packed row: [1, n_tokens] tensors, the example boundaries and the labels."""

    input_ids: Any  # torch.LongTensor [1, T]
    position_ids: Any  # torch.LongTensor [1, T], restarting at 0 for every example
    cu_seqlens: Any  # torch.IntTensor [n_examples + 1], example start offsets, then T
    labels: Any  # torch.LongTensor [n_examples]: catalog index of each example's protocol
    max_seqlen: int

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device: Any) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            position_ids=self.position_ids.to(device, non_blocking=True),
            cu_seqlens=self.cu_seqlens.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            max_seqlen=self.max_seqlen,
        )


def pack_examples(examples: Sequence[dict[str, Any]]) -> PackedBatch:
    """Concatenate examples (dicts with input_ids and label) into one row."""
    import torch

    if not examples:
        raise ValueError("cannot pack zero examples")
    ids: list[int] = []
    positions: list[int] = []
    starts = [0]
    for example in examples:
        input_ids = list(example["input_ids"])
        if not input_ids:
            raise ValueError("an example needs at least one token")
        ids += input_ids
        positions += range(len(input_ids))
        starts.append(len(ids))
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        cu_seqlens=torch.tensor(starts, dtype=torch.int32),
        labels=torch.tensor([int(e["label"]) for e in examples], dtype=torch.long),
        max_seqlen=max(len(e["input_ids"]) for e in examples),
    )


def pad_examples(examples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """The padded batch: input_ids [B, width] right-padded, lengths [B], labels [B]."""
    import torch

    from radproto.model.scoring import padded_ids

    ids, lengths = padded_ids([e["input_ids"] for e in examples], pad_token_id)
    labels = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
    return {"input_ids": ids, "lengths": lengths, "labels": labels}

"""The protocol head: one row per catalog protocol over the prompt's last hidden state.

An order is scored in one forward pass over its prompt: the final hidden state of the
prompt's last position (the "Protocol:" cue) is projected onto the catalog, one row per
protocol, and a softmax over the rows gives the full distribution (Label-Supervised LLaMA,
Li et al. 2023). The label is a catalog protocol by construction.

Each row starts as the mean of the base model's output embeddings of the protocol's name
tokens (" CT Head WO Contrast"): before any training a row already points where the
language model would look for that name, so a site's new protocol starts somewhere sensible
and trains quickly. Rows are keyed by protocol name; the head is saved beside the adapter
(`protocol_head.safetensors`) with the names and the catalog version it was trained on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radproto.model.encoding import target_token_ids
from radproto.model.errors import ModelError

log = logging.getLogger(__name__)

HEAD_FILE = "protocol_head.safetensors"


def name_rows(model: Any, tokenizer: Any, names: Sequence[str]) -> Any:
    """[len(names), hidden] float32: the mean output embedding of each name's tokens."""
    import torch

    output = model.get_output_embeddings()
    if output is None:
        raise ModelError(f"{type(model).__name__} has no output embeddings to start rows from")
    weight = output.weight
    rows = []
    with torch.no_grad():
        for name in names:
            ids = target_token_ids(tokenizer, name)[:-1]  # the name's tokens, not the EOS
            index = torch.as_tensor(ids, dtype=torch.long, device=weight.device)
            rows.append(weight.index_select(0, index).float().mean(0).cpu())
    return torch.stack(rows)


@functools.cache
def _head_class() -> type:
    """The head's torch Module class (torch is imported lazily: the service starts light)."""
    import torch

    class ProtocolHead(torch.nn.Module):
        """logits[n, p] = hidden[n] . weight[p] + bias[p], in float32."""

        def __init__(self, names: Sequence[str], weight: Any, bias: Any | None = None) -> None:
            super().__init__()
            if len(names) != weight.shape[0] or len(set(names)) != len(names):
                raise ModelError("the head needs one row per distinct protocol name")
            self.names: tuple[str, ...] = tuple(names)
            self.weight = torch.nn.Parameter(weight.detach().float().clone())
            bias = torch.zeros(len(names)) if bias is None else bias.detach().float().clone()
            self.bias = torch.nn.Parameter(bias.to(self.weight.device))

        def forward(self, hidden: Any) -> Any:
            return torch.nn.functional.linear(hidden.float(), self.weight, self.bias)

    return ProtocolHead


def new_head(model: Any, tokenizer: Any, names: Sequence[str]) -> Any:
    """A head whose every row starts from its protocol's name (on the decoder's device)."""
    device = model.get_input_embeddings().weight.device
    return _head_class()(names, name_rows(model, tokenizer, names).to(device))


def offload_output_embeddings(model: Any) -> float:
    """Move an untied vocabulary projection off the GPU; returns the GB it frees there.

    The head reads the decoder's last hidden state, so neither training nor scoring runs the
    [vocabulary, hidden] projection; on a 7B-shaped model with a 49k vocabulary it is 0.4 GB
    in bf16 (0.8 GB once prepared for k-bit training in float32). It stays in host memory
    because a new protocol's head row starts from it (`name_rows`). A projection tied to the
    input embeddings (SmolLM2) stays where it is."""
    output = model.get_output_embeddings()
    if output is None or output.weight.device.type != "cuda" or embeddings_tied(model):
        return 0.0
    size = output.weight.numel() * output.weight.element_size() / 1e9
    output.to("cpu")
    return size


def embeddings_tied(model: Any) -> bool:
    """Whether the vocabulary projection is the input embedding table itself (SmolLM2): then
    neither may move without the other."""
    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    return (output is not None and embeddings is not None
            and output.weight.data_ptr() == embeddings.weight.data_ptr())


def head_for_catalog(head: Any, names: Sequence[str], model: Any, tokenizer: Any
                     ) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """The head re-keyed to `names` (a serving catalog): (head, added, dropped).

    Trained rows are kept by name; a protocol the head has no row for gets one started from
    its name (it wants fine-tuning on the site's history); rows of protocols the catalog no
    longer has are dropped."""
    import torch

    if tuple(names) == head.names:
        return head, (), ()
    index = {name: i for i, name in enumerate(head.names)}
    added = tuple(n for n in names if n not in index)
    dropped = tuple(n for n in head.names if n not in set(names))
    fresh = name_rows(model, tokenizer, added) if added else None
    weight, bias = [], []
    with torch.no_grad():
        for name in names:
            if name in index:
                weight.append(head.weight[index[name]].detach().cpu())
                bias.append(head.bias[index[name]].detach().cpu())
            else:
                weight.append(fresh[added.index(name)])
                bias.append(torch.zeros(()))
    device = head.weight.device
    rekeyed = _head_class()(names, torch.stack(weight).to(device), torch.stack(bias).to(device))
    return rekeyed, added, dropped


def save_head(head: Any, directory: Path) -> Path:
    from safetensors.torch import save_file

    path = directory / HEAD_FILE
    save_file({"weight": head.weight.detach().float().cpu().contiguous(),
               "bias": head.bias.detach().float().cpu().contiguous()}, str(path))
    return path


def load_head(directory: Path, names: Sequence[str], device: Any = "cpu") -> Any:
    """The head saved in `directory`; its rows belong to `names` (the trained catalog)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / HEAD_FILE
    try:
        tensors = load_file(str(path), device=str(device))
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a bad file
        raise ModelError(f"{path}: cannot read the protocol head: {exc}") from exc
    if tensors["weight"].shape[0] != len(names):
        raise ModelError(f"{path}: {tensors['weight'].shape[0]} rows for a catalog of "
                         f"{len(names)} protocols")
    return _head_class()(names, tensors["weight"], tensors["bias"])

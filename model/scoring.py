"""Scoring the whole catalog in one forward pass per batch of orders (tree attention).

Every protocol's target (" " + name, then EOS) is a path in a prefix tree of token ids. The
tree's nodes (every distinct prefix, the final EOS excepted: it is only ever predicted) are
appended after the prompt and run in the same forward pass as the prompt. A 4D attention
mask lets each node see its order's prompt and its own ancestors only, with position id
prompt_len + depth - 1, so each node's hidden state is exactly what a one-protocol pass would
compute. log p(protocol | prompt) is the sum, along its path, of the log-probability of each
next token: the first read at the prompt's last position, the others at the parent node.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from radproto.model.errors import ModelError

_LM_HEAD_CHUNK = 512  # rows of the vocabulary projection at a time (bounds memory)


@dataclass(frozen=True)
class ProtocolTrie:
    """The prefix tree of the catalog's target token sequences."""

    node_tokens: np.ndarray  # [n_nodes] token id of each node (input to the model)
    node_depth: np.ndarray  # [n_nodes] 1 for a node right after the prompt
    ancestors: np.ndarray  # [n_nodes, n_nodes] bool: column is an ancestor of (or is) the row
    step_source: np.ndarray  # [n_steps] 0 = prompt's last position, 1 + i = node i
    step_token: np.ndarray  # [n_steps] the token predicted at that step
    step_protocol: np.ndarray  # [n_steps] which protocol the step belongs to
    n_protocols: int

    @property
    def n_nodes(self) -> int:
        return int(self.node_tokens.shape[0])

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> ProtocolTrie:
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ModelError("every protocol needs at least one target token")
        index: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        parents: list[int] = []
        sources: list[int] = []
        predicted: list[int] = []
        owners: list[int] = []
        for p, seq in enumerate(sequences):
            parent = -1  # -1: the prompt
            for k, token in enumerate(seq):
                sources.append(parent + 1)
                predicted.append(int(token))
                owners.append(p)
                if k == len(seq) - 1:
                    break  # the last token (EOS) is predicted, never fed to the model
                key = tuple(seq[: k + 1])
                node = index.get(key)
                if node is None:
                    node = len(tokens)
                    index[key] = node
                    tokens.append(int(token))
                    parents.append(parent)
                parent = node
        n = len(tokens)
        depth = np.zeros(n, dtype=np.int64)
        ancestors = np.zeros((n, n), dtype=bool)
        for i in range(n):  # parents precede children, so one forward sweep suffices
            ancestors[i, i] = True
            if parents[i] >= 0:
                ancestors[i] |= ancestors[parents[i]]
                depth[i] = depth[parents[i]] + 1
            else:
                depth[i] = 1
        return cls(
            node_tokens=np.asarray(tokens, dtype=np.int64),
            node_depth=depth,
            ancestors=ancestors,
            step_source=np.asarray(sources, dtype=np.int64),
            step_token=np.asarray(predicted, dtype=np.int64),
            step_protocol=np.asarray(owners, dtype=np.int64),
            n_protocols=len(sequences),
        )


def split_model(model: Any) -> tuple[Any, Any]:
    """(decoder backbone, vocabulary projection) of a causal LM, LoRA layers included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings()
    if backbone is None or head is None:
        raise ModelError(f"cannot find the decoder and LM head of {type(base).__name__}")
    return backbone, head


@contextmanager
def _mask_capable_attention(model: Any) -> Iterator[str]:
    """Run under an attention implementation that honours a custom 4D mask.

    Flash-attention and varlen kernels (e.g. a packed-training setup) ignore or reject it;
    SDPA and eager do not. The model's own setting is restored afterwards.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = getattr(base.config, "_attn_implementation", "sdpa") or "sdpa"
    if current in ("sdpa", "eager"):
        yield current
        return
    configs = [m.config for m in base.modules()
               if hasattr(getattr(m, "config", None), "_attn_implementation")]
    saved = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = "sdpa"
    try:
        yield "sdpa"
    finally:
        for config, value in zip(configs, saved, strict=True):
            config._attn_implementation = value


def trie_log_probs(
    model: Any, prompts: Sequence[Sequence[int]], trie: ProtocolTrie, *, pad_token_id: int
) -> np.ndarray:
    """[len(prompts), n_protocols] log p(target | prompt) in one forward pass for the batch."""
    import torch

    with torch.inference_mode():
        return _trie_log_probs(model, prompts, trie, pad_token_id)


def _trie_log_probs(
    model: Any, prompts: Sequence[Sequence[int]], trie: ProtocolTrie, pad_token_id: int
) -> np.ndarray:
    import torch

    backbone, head = split_model(model)
    device = head.weight.device
    n_orders, n_nodes = len(prompts), trie.n_nodes
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    if int(lengths.min()) < 1:
        raise ModelError("an empty prompt cannot be scored")
    width = int(lengths.max())
    total = width + n_nodes

    input_ids = torch.full((n_orders, total), pad_token_id, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        input_ids[b, : len(prompt)] = torch.as_tensor(list(prompt), dtype=torch.long)
    input_ids[:, width:] = torch.from_numpy(trie.node_tokens)
    depth = torch.from_numpy(trie.node_depth)
    position_ids = torch.cat(
        [torch.arange(width).expand(n_orders, width), lengths[:, None] + depth[None, :] - 1],
        dim=1,
    )

    allowed = torch.zeros((n_orders, total, total), dtype=torch.bool)
    columns = torch.arange(width)
    real = columns[None, :] < lengths[:, None]  # [B, width]: real prompt tokens
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    allowed[:, :width, :width] = causal[None] & real[:, None, :]
    # A padding row sees only itself, so no softmax row is empty (no NaN); it is never read.
    pad_rows = ~real
    diagonal = torch.arange(width)
    allowed[:, diagonal, diagonal] |= pad_rows
    allowed[:, width:, :width] = real[:, None, :]
    allowed[:, width:, width:] = torch.from_numpy(trie.ancestors)[None]
    with _mask_capable_attention(model) as implementation:
        if implementation == "eager":  # eager adds the mask to the attention scores
            dtype = backbone.get_input_embeddings().weight.dtype
            mask = torch.zeros((n_orders, 1, total, total), dtype=dtype)
            mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        else:  # SDPA takes a boolean mask (True = may attend) whatever the compute dtype
            mask = allowed[:, None]
        hidden = backbone(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids.to(device),
            use_cache=False,
        ).last_hidden_state  # [B, total, H]
    last = hidden[torch.arange(n_orders, device=device), (lengths - 1).to(device)]
    sources = torch.cat([last[:, None, :], hidden[:, width:, :]], dim=1)  # [B, 1+N, H]

    step_source = torch.from_numpy(trie.step_source).to(device)
    step_token = torch.from_numpy(trie.step_token).to(device)
    used = torch.unique(step_source)  # every source row predicts at least one token
    row_of = torch.full((n_nodes + 1,), -1, dtype=torch.long, device=device)
    row_of[used] = torch.arange(used.numel(), device=device)
    step_rows = row_of[step_source]
    softcap = getattr(getattr(backbone, "config", None), "final_logit_softcapping", None)
    out = np.empty((n_orders, trie.n_protocols), dtype=np.float64)
    owners = torch.from_numpy(trie.step_protocol)
    for b in range(n_orders):
        rows = sources[b, used]
        step_lp = torch.empty(step_rows.numel(), dtype=torch.float32, device=device)
        for start in range(0, rows.shape[0], _LM_HEAD_CHUNK):
            chunk = head(rows[start : start + _LM_HEAD_CHUNK]).float()
            if softcap:  # e.g. Gemma 2 caps its logits; the forward pass would too
                chunk = torch.tanh(chunk / softcap) * softcap
            log_norm = torch.logsumexp(chunk, dim=-1)
            in_chunk = (step_rows >= start) & (step_rows < start + chunk.shape[0])
            local = step_rows[in_chunk] - start
            step_lp[in_chunk] = chunk[local, step_token[in_chunk]] - log_norm[local]
        totals = torch.zeros(trie.n_protocols, dtype=torch.float64)
        totals.index_add_(0, owners, step_lp.double().cpu())
        out[b] = totals.numpy()
    return out


def naive_log_probs(
    model: Any, prompt: Sequence[int], targets: Sequence[Sequence[int]]
) -> np.ndarray:
    """log p(target | prompt) with one forward pass per target: the reference for tests."""
    import torch

    device = next(model.parameters()).device
    out = np.empty(len(targets), dtype=np.float64)
    with torch.inference_mode():
        for i, target in enumerate(targets):
            out[i] = _naive_one(model, prompt, target, device)
    return out


def _naive_one(model: Any, prompt: Sequence[int], target: Sequence[int], device: Any) -> float:
    import torch

    ids = torch.tensor([list(prompt) + list(target)], device=device)
    # Only the positions that predict a target token need the vocabulary projection.
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(target) + 1).logits
    log_probs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    picked = log_probs[torch.arange(len(target)), torch.tensor(list(target), device=device)]
    return float(picked.double().sum())

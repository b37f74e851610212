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
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from radproto.model.errors import ModelError

# Rows of the vocabulary projection at a time. On a 7B serving batch 2048 rows (float32
# logits, their exp, the bf16 copy; 49k vocabulary) came near 1 GB at the peak; 512: 0.25.
LM_HEAD_CHUNK = 512


class NextTokenLayout(NamedTuple):
    """Which tokens each source row predicts, as a padded matrix (the head's gather)."""

    sources: np.ndarray  # [U] source rows that predict something: 0 = prompt, 1 + i = node i
    child_tokens: np.ndarray  # [U, C] the tokens predicted from each source (0-padded)
    step_slot: np.ndarray  # [n_steps] flat index u * C + c of each step in that matrix


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

    @cached_property
    def layout(self) -> NextTokenLayout:
        sources = np.unique(self.step_source)
        row_of = {int(src): u for u, src in enumerate(sources)}
        children: list[list[int]] = [[] for _ in sources]
        slots = []
        for src, tok in zip(self.step_source, self.step_token, strict=True):
            u = row_of[int(src)]
            if int(tok) not in children[u]:
                children[u].append(int(tok))
            slots.append((u, children[u].index(int(tok))))
        width = max(len(c) for c in children)
        child = np.zeros((len(sources), width), dtype=np.int64)
        for u, toks in enumerate(children):
            child[u, : len(toks)] = toks
        flat = np.array([u * width + c for u, c in slots], dtype=np.int64)
        return NextTokenLayout(sources, child, flat)

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


def logit_softcap(model: Any) -> float | None:
    """The model's final logit soft-cap (Gemma 2 style), which its forward pass applies."""
    backbone, _ = split_model(model)
    return getattr(getattr(backbone, "config", None), "final_logit_softcapping", None)


def next_token_log_probs(head: Any, rows: Any, wanted: Any, *, softcap: float | None = None,
                         chunk: int = LM_HEAD_CHUNK) -> Any:
    """[R, C] float32 log p(wanted[r, c] | hidden row r): the vocabulary projection, the
    soft-cap and the log-normaliser, `chunk` rows at a time (one [chunk, vocab] float32
    block is the largest tensor). Every scoring path reads its probabilities here."""
    import torch

    out = torch.empty(wanted.shape, dtype=torch.float32, device=rows.device)
    for start in range(0, rows.shape[0], chunk):
        logits = head(rows[start:start + chunk]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        norm = torch.logsumexp(logits, dim=-1, keepdim=True)
        out[start:start + chunk] = logits.gather(1, wanted[start:start + chunk]) - norm
    return out


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
    layout = trie.layout
    used = torch.from_numpy(layout.sources).to(device)
    rows = sources[:, used].reshape(-1, sources.shape[-1])  # [B*U, H]
    wanted = torch.from_numpy(layout.child_tokens).to(device).repeat(n_orders, 1)
    picked = next_token_log_probs(head, rows, wanted, softcap=logit_softcap(model))
    steps = picked.reshape(n_orders, -1)[:, torch.from_numpy(layout.step_slot).to(device)]
    totals = torch.zeros((n_orders, trie.n_protocols), dtype=torch.float64)
    totals.index_add_(1, torch.from_numpy(trie.step_protocol), steps.double().cpu())
    return totals.numpy()


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

"""Fast full-catalog scoring: the prefix-tree pass of scoring.py, kept on the GPU.

Same maths as `scoring.trie_log_probs` (each trie node sees its order's prompt and its own
ancestors, position prompt_len + depth - 1), but:

- the attention mask is built on the device, as booleans, in a few tensor operations;
- the vocabulary projection runs once for all orders of the batch, on the rows that
  predict something only, and the per-protocol sums are one matrix product: no per-order
  loop and one device-to-host copy per batch;
- orders are sorted by prompt length and cut into batches by a token budget, so little of
  each batch is padding;
- `GraphedScorer` replays a captured CUDA graph for one order at a time (latency path):
  the Python and kernel-launch overhead of 32 decoder layers goes away.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radproto.model.errors import ModelError
from radproto.model.scoring import (
    ProtocolTrie,
    logit_softcap,
    next_token_log_probs,
    split_model,
)


@dataclass
class TriePlan:
    """The trie's constants as device tensors, made once per (trie, device)."""

    node_tokens: Any  # [N]
    node_depth: Any  # [N]
    ancestors: Any  # [N, N] bool
    sources: Any  # [U] used source rows: 0 = prompt's last token, 1 + i = node i
    child_tokens: Any  # [U, C] tokens predicted from each source (padded with 0)
    step_slot: Any  # [S] flat index u * C + c of each step
    step_to_protocol: Any  # [S, P] 0/1: which protocol each step adds to
    n_protocols: int
    n_nodes: int

    @classmethod
    def build(cls, trie: ProtocolTrie, device: Any, dtype: Any) -> TriePlan:
        import torch

        layout = trie.layout
        to_protocol = np.zeros((len(layout.step_slot), trie.n_protocols), dtype=np.float32)
        to_protocol[np.arange(len(layout.step_slot)), trie.step_protocol] = 1.0
        return cls(
            node_tokens=torch.from_numpy(trie.node_tokens).to(device),
            node_depth=torch.from_numpy(trie.node_depth).to(device),
            ancestors=torch.from_numpy(trie.ancestors).to(device),
            sources=torch.from_numpy(layout.sources).to(device),
            child_tokens=torch.from_numpy(layout.child_tokens).to(device),
            step_slot=torch.from_numpy(layout.step_slot).to(device),
            step_to_protocol=torch.from_numpy(to_protocol).to(device),
            n_protocols=trie.n_protocols,
            n_nodes=trie.n_nodes,
        )


def build_inputs(plan: TriePlan, input_ids: Any, lengths: Any, width: int) -> tuple[Any, Any, Any]:
    """Token ids, position ids and the boolean [B, 1, T, T] mask, all on the device.

    `input_ids` is [B, width] (prompts right-padded), `lengths` [B] on the same device.
    """
    import torch

    device = input_ids.device
    n_orders = input_ids.shape[0]
    n_nodes = plan.n_nodes
    total = width + n_nodes
    ids = torch.cat([input_ids, plan.node_tokens.expand(n_orders, n_nodes)], dim=1)
    positions = torch.cat([
        torch.arange(width, device=device).expand(n_orders, width),
        lengths[:, None] + plan.node_depth[None, :] - 1,
    ], dim=1)
    rows = torch.arange(total, device=device)
    in_prompt = rows < width
    real = rows[None, :] < lengths[:, None]  # [B, T]: a real prompt token (nodes excluded)
    causal = rows[None, :] <= rows[:, None]  # [T, T]
    # prompt rows: causal over real prompt tokens; node rows: every real prompt token
    prompt_part = (causal & in_prompt[:, None])[None] | (~in_prompt)[None, :, None]
    allowed = prompt_part & real[:, None, :] & in_prompt[None, None, :]
    node_block = torch.zeros((total, total), dtype=torch.bool, device=device)
    node_block[width:, width:] = plan.ancestors
    allowed = allowed | node_block[None]
    # a padding row sees only itself: no empty softmax row (no NaN); it is never read
    pad_row = in_prompt[None, :] & ~real  # [B, T]
    eye = torch.eye(total, dtype=torch.bool, device=device)
    allowed = allowed | (eye[None] & pad_row[:, :, None])
    return ids, positions, allowed[:, None]


def trie_forward(model: Any, plan: TriePlan, input_ids: Any, lengths: Any,
                 width: int) -> Any:
    """[B, n_protocols] float32 log p(target | prompt) on the device, no host sync."""
    import torch

    backbone, head = split_model(model)
    ids, positions, mask = build_inputs(plan, input_ids, lengths, width)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions,
                      use_cache=False).last_hidden_state  # [B, T, H]
    n_orders = ids.shape[0]
    src = plan.sources
    # source 0 is each order's last prompt token, source 1 + i is trie node i
    index = torch.where(src[None, :] == 0, (lengths - 1)[:, None], width + src[None, :] - 1)
    rows = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, U, H]
    picked = next_token_log_probs(head, rows.reshape(-1, rows.shape[-1]),
                                  plan.child_tokens.repeat(n_orders, 1),  # [B*U, C]
                                  softcap=logit_softcap(model))
    steps = picked.reshape(n_orders, -1).index_select(1, plan.step_slot)  # [B, S]
    return steps @ plan.step_to_protocol  # [B, P]


@dataclass
class FastScorer:
    """Scores many orders: sorted by length, batched by a token budget, one sync per batch."""

    model: Any
    trie: ProtocolTrie
    pad_token_id: int
    max_batch_tokens: int = 16384
    max_batch: int = 128
    _plans: dict[Any, TriePlan] = field(default_factory=dict, repr=False)

    def plan(self) -> TriePlan:
        _, head = split_model(self.model)
        key = (head.weight.device, head.weight.dtype)
        if key not in self._plans:
            self._plans[key] = TriePlan.build(self.trie, head.weight.device, head.weight.dtype)
        return self._plans[key]

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Order indices grouped into batches, longest prompts first, within the budget."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        groups: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = lengths[current[0]] if current else lengths[i]
            cost = (len(current) + 1) * (width + self.trie.n_nodes)
            if current and (cost > self.max_batch_tokens or len(current) >= self.max_batch):
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        return groups

    def log_probs(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """[len(prompts), n_protocols] float64 log p(target | prompt), input order."""
        import torch

        if not prompts:
            return np.zeros((0, self.trie.n_protocols))
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1:
            raise ModelError("an empty prompt cannot be scored")
        plan = self.plan()
        device = plan.node_tokens.device
        out = np.empty((len(prompts), self.trie.n_protocols), dtype=np.float64)
        with torch.inference_mode():
            for group in self.batches(lengths):
                width = max(lengths[i] for i in group)
                ids = torch.full((len(group), width), self.pad_token_id, dtype=torch.long)
                for row, i in enumerate(group):
                    ids[row, : lengths[i]] = torch.as_tensor(list(prompts[i]), dtype=torch.long)
                lens = torch.tensor([lengths[i] for i in group], dtype=torch.long)
                result = trie_forward(self.model, plan, ids.to(device), lens.to(device), width)
                out[group] = result.double().cpu().numpy()
        return out


class GraphedScorer:
    """One order at a time through captured CUDA graphs, one graph per prompt-length bucket."""

    def __init__(self, model: Any, trie: ProtocolTrie, pad_token_id: int, *,
                 bucket: int = 32, max_prompt: int = 256) -> None:
        _, head = split_model(model)
        self.model = model
        self.device = head.weight.device
        self.plan = TriePlan.build(trie, self.device, head.weight.dtype)
        self.pad_token_id = pad_token_id
        self.bucket = bucket
        self.max_prompt = max_prompt
        self.graphs: dict[int, tuple[Any, Any, Any, Any]] = {}
        self._lock = threading.Lock()  # one replay at a time: the graphs share one pool
        self._pool: Any = None

    def _width(self, length: int) -> int:
        return min(self.max_prompt, -(-length // self.bucket) * self.bucket)

    def widths(self) -> list[int]:
        """The padded prompt width of every bucket, one graph each."""
        return sorted({self._width(n) for n in range(1, self.max_prompt + 1, self.bucket)})

    def _capture(self, width: int) -> tuple[Any, Any, Any, Any]:
        import torch

        ids = torch.full((1, width), self.pad_token_id, dtype=torch.long, device=self.device)
        lens = torch.full((1,), width, dtype=torch.long, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy initialisation stays out of the graph
                trie_forward(self.model, self.plan, ids, lens, width)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # One memory pool for every bucket's graph: replays never overlap (the lock) and
        # each output is copied out at once, so the buckets cost one graph's memory.
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            out = trie_forward(self.model, self.plan, ids, lens, width)
        return graph, ids, lens, out

    def log_probs_one(self, prompt: Sequence[int]) -> np.ndarray:
        import torch

        if not prompt:
            raise ModelError("an empty prompt cannot be scored")
        if len(prompt) > self.max_prompt:
            raise ModelError(f"the prompt has {len(prompt)} tokens, over the graphs' "
                             f"{self.max_prompt}")
        width = self._width(len(prompt))
        host = torch.full((1, width), self.pad_token_id, dtype=torch.long)
        host[0, : len(prompt)] = torch.as_tensor(list(prompt), dtype=torch.long)
        with self._lock:
            if width not in self.graphs:
                self.graphs[width] = self._capture(width)
            graph, ids, lens, out = self.graphs[width]
            ids.copy_(host, non_blocking=True)
            lens.fill_(len(prompt))
            graph.replay()
            return out[0].double().cpu().numpy()

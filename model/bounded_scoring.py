"""Catalog scoring within a certified tolerance: expand only the parts of the prefix tree
that can matter (branch and bound over the protocol prefix tree).

The exact pass (scoring.py) runs all ~290 tree nodes for every order, although a trained
model puts almost all of its mass under one or two of them. Here the prompt and the first
tree level run first; then, pass after pass with the prompt's keys and values cached, only
the subtrees whose probability bound still matters are run. A node that is never run keeps
an upper bound: the protocols below it share at most p(path to the node), because a
sequence's probability never exceeds its prefix's.

The loop stops when, for the calibrated distribution softmax(log p / temperature):
- the mass still bounded (not computed) is at most `tolerance` times the computed mass, so
  every returned probability is within `tolerance` (absolute) of the exact one, and the
  computed protocols' probabilities within `tolerance` / 2 (relative); and
- no bounded subtree could outrank the `top_k`-th computed protocol, so the top k are
  exactly the exact path's top k.
Protocols left bounded get log-probabilities that give them half their bound, shared
evenly. With tolerance 0 every node is run, and the result is the exact distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radproto.model.errors import ModelError
from radproto.model.scoring import (
    ProtocolTrie,
    _mask_capable_attention,
    logit_softcap,
    next_token_log_probs,
    split_model,
)


@dataclass(frozen=True)
class _TreeIndex:
    """The trie as parent links, children and per-source next tokens (host arrays)."""

    parent: np.ndarray  # [N] parent node, -1 under the prompt
    subtree_protocols: np.ndarray  # [N] protocols below each node
    protocols_below: list[np.ndarray]  # node -> protocol ids below it
    bfs_subtree: list[np.ndarray]  # node -> its subtree's nodes, breadth first
    # For source u (0 = prompt, 1 + i = node i): next tokens, and what each one reaches:
    # a node id (>= 0) or an ended protocol (-1 - protocol id).
    next_tokens: list[np.ndarray]
    next_targets: list[np.ndarray]

    @classmethod
    def build(cls, trie: ProtocolTrie) -> _TreeIndex:
        n = trie.n_nodes
        parent = np.full(n, -1, dtype=np.int64)
        for i in range(n):
            ancestors = np.flatnonzero(trie.ancestors[i])
            ancestors = ancestors[ancestors != i]
            if ancestors.size:
                parent[i] = ancestors[np.argmax(trie.node_depth[ancestors])]
        children: list[list[int]] = [[] for _ in range(n + 1)]
        for i in range(n):
            children[parent[i] + 1].append(i)
        tokens: list[list[int]] = [[] for _ in range(n + 1)]
        targets: list[list[int]] = [[] for _ in range(n + 1)]
        by_token = [{int(trie.node_tokens[c]): c for c in kids} for kids in children]
        below: list[set[int]] = [set() for _ in range(n)]
        for src, tok, prot in zip(trie.step_source, trie.step_token, trie.step_protocol,
                                  strict=True):
            src, tok, prot = int(src), int(tok), int(prot)
            child = by_token[src].get(tok)
            target = child if child is not None else -1 - prot
            if tok not in tokens[src]:
                tokens[src].append(tok)
                targets[src].append(target)
            if src > 0:
                below[src - 1].add(prot)
        bfs = []
        for i in range(n):
            order, queue = [], [i]
            while queue:
                node = queue.pop(0)
                order.append(node)
                queue.extend(children[node + 1])
            bfs.append(np.asarray(order, dtype=np.int64))
        return cls(
            parent=parent,
            subtree_protocols=np.asarray([len(b) for b in below], dtype=np.int64),
            protocols_below=[np.asarray(sorted(b), dtype=np.int64) for b in below],
            bfs_subtree=bfs,
            next_tokens=[np.asarray(t, dtype=np.int64) for t in tokens],
            next_targets=[np.asarray(t, dtype=np.int64) for t in targets],
        )


@dataclass
class _OrderState:
    """What is known for one order: path log-probs, exact protocols, where nodes sit."""

    index: int  # the order's position in log_probs' input
    length: int
    node_lp: np.ndarray  # [N] log p(path to node); nan until its parent has run
    protocol_lp: np.ndarray  # [P] exact log p(protocol); nan until computed
    column: np.ndarray  # [N] KV-cache column of each node that has run, -1 otherwise

    def frontier(self) -> np.ndarray:
        """Nodes whose path probability is known but that have not run."""
        return np.flatnonzero(~np.isnan(self.node_lp) & (self.column < 0))


@dataclass
class BoundedScorer:
    """Full-catalog log-probabilities within a certified tolerance (see the module doc)."""

    model: Any
    trie: ProtocolTrie
    pad_token_id: int
    tolerance: float = 1e-4
    top_k: int = 3
    max_subtree: int = 24  # nodes of one subtree run in one pass (the rest waits)
    first_depth: int = 1  # tree levels run with the prompt, before any bound is known
    max_batch: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1:
            raise ModelError(f"the scoring tolerance must be in [0, 1), not {self.tolerance}")
        self._index = _TreeIndex.build(self.trie)
        self._softcap = logit_softcap(self.model)
        self.passes: list[int] = []  # passes run per batch (for benchmarks)
        self.nodes_run: list[int] = []  # tree nodes run per order (for benchmarks)

    def log_probs(self, prompts: Sequence[Sequence[int]], *,
                  temperature: float = 1.0) -> np.ndarray:
        """[len(prompts), n_protocols] log p(target | prompt); see the module doc."""
        import torch

        if temperature <= 0:
            raise ModelError(f"temperature must be positive, not {temperature}")
        if any(len(p) == 0 for p in prompts):
            raise ModelError("an empty prompt cannot be scored")
        out = np.empty((len(prompts), self.trie.n_protocols), dtype=np.float64)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        with torch.inference_mode(), _mask_capable_attention(self.model) as attention:
            for start in range(0, len(order), self.max_batch):
                chunk = order[start : start + self.max_batch]
                out[chunk] = self._batch([prompts[i] for i in chunk], chunk, temperature,
                                         attention)
        return out

    # -------------------------------------------------------------------------- one batch
    def _batch(self, prompts: Sequence[Sequence[int]], indices: Sequence[int],
               temperature: float, attention: str) -> np.ndarray:
        import torch
        from transformers import DynamicCache

        backbone, head = split_model(self.model)
        device = head.weight.device
        trie, n_nodes = self.trie, self.trie.n_nodes
        states = [_OrderState(index=i, length=len(p), node_lp=np.full(n_nodes, np.nan),
                              protocol_lp=np.full(trie.n_protocols, np.nan),
                              column=np.full(n_nodes, -1, dtype=np.int64))
                  for i, p in zip(indices, prompts, strict=True)]
        width = max(len(p) for p in prompts)
        cache = DynamicCache()

        # Pass 1: the prompt and the first tree levels, as in the exact pass.
        first = np.flatnonzero(trie.node_depth <= self.first_depth)
        feed = [first for _ in prompts]
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        for b, prompt in enumerate(prompts):
            ids[b, : len(prompt)] = torch.as_tensor(list(prompt), dtype=torch.long)
        hidden = self._run(backbone, cache, states, feed, ids, width, attention, device)
        last = torch.as_tensor([s.length - 1 for s in states], device=device)
        root_rows = hidden[torch.arange(len(prompts), device=device), last]
        self._read(head, root_rows, [(b, -1) for b in range(len(prompts))], states)
        self._read_nodes(head, hidden[:, width:], feed, states)
        columns = width + first.size
        passes = 1
        while True:
            feed = [self._to_run(s, temperature) for s in states]
            if not any(f.size for f in feed):
                break
            slots = max(f.size for f in feed)
            hidden = self._run(backbone, cache, states, feed, None, columns, attention, device)
            self._read_nodes(head, hidden, feed, states)
            columns += slots
            passes += 1
        self.passes.append(passes)
        self.nodes_run.extend(int((s.column >= 0).sum()) for s in states)
        return np.stack([self._finish(s, temperature) for s in states])

    def _run(self, backbone: Any, cache: Any, states: list[_OrderState],
             feed: list[np.ndarray], prompt_ids: Any, columns: int, attention: str,
             device: Any) -> Any:
        """Run the fed nodes (after the prompt, on pass 1) on top of the cache's `columns`
        columns; returns the hidden states of the fed slots (prompt rows too on pass 1)."""
        import torch

        trie = self.trie
        n_orders = len(states)
        slots = max(f.size for f in feed)
        head_cols = 0 if prompt_ids is None else prompt_ids.shape[1]  # = columns on pass 1
        rows = head_cols + slots
        total = columns + slots  # the cache's columns after this pass
        ids = torch.full((n_orders, slots), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros((n_orders, rows), dtype=torch.long)
        allowed = np.zeros((n_orders, rows, total), dtype=bool)
        node_base = columns  # column of this pass's first slot
        for b, (state, nodes) in enumerate(zip(states, feed, strict=True)):
            if nodes.size:
                ids[b, : nodes.size] = torch.from_numpy(trie.node_tokens[nodes])
                positions[b, head_cols : head_cols + nodes.size] = torch.from_numpy(
                    state.length + trie.node_depth[nodes] - 1)
                state.column[nodes] = node_base + np.arange(nodes.size)
            if head_cols:
                positions[b, :head_cols] = torch.arange(head_cols)
                causal = np.tril(np.ones((state.length, state.length), dtype=bool))
                allowed[b, : state.length, : state.length] = causal
                pad = np.arange(state.length, head_cols)
                allowed[b, pad, pad] = True  # a padding row sees itself only (no NaN)
            # Node rows see their order's prompt and their ancestors (wherever they sit).
            allowed[b, head_cols : head_cols + nodes.size, : state.length] = True
            ran = np.flatnonzero(state.column >= 0)
            if nodes.size:
                visible = trie.ancestors[nodes][:, ran]  # [fed, ran]
                sub = allowed[b, head_cols : head_cols + nodes.size]
                sub[:, state.column[ran]] = visible
            for slot in range(nodes.size, slots):  # padding slots see themselves only
                allowed[b, head_cols + slot, node_base + slot] = True
        if prompt_ids is not None:
            ids = torch.cat([prompt_ids, ids], dim=1)
        mask = torch.from_numpy(allowed)[:, None].to(device)
        if attention == "eager":
            dtype = backbone.get_input_embeddings().weight.dtype
            additive = torch.zeros(mask.shape, dtype=dtype, device=device)
            mask = additive.masked_fill_(~mask, torch.finfo(dtype).min)
        hidden = backbone(input_ids=ids.to(device), attention_mask=mask,
                          position_ids=positions.to(device), past_key_values=cache,
                          use_cache=True).last_hidden_state
        return hidden[:, head_cols:] if prompt_ids is None else hidden

    def _read_nodes(self, head: Any, hidden: Any, feed: list[np.ndarray],
                    states: list[_OrderState]) -> None:
        import torch

        pairs = [(b, int(n)) for b, nodes in enumerate(feed) for n in nodes]
        if not pairs:
            return
        b_idx = torch.as_tensor([b for b, _ in pairs], device=hidden.device)
        s_idx = torch.as_tensor([slot for nodes in feed for slot in range(nodes.size)],
                                device=hidden.device)
        self._read(head, hidden[b_idx, s_idx], pairs, states)

    def _read(self, head: Any, rows: Any, pairs: list[tuple[int, int]],
              states: list[_OrderState]) -> None:
        """Next-token log-probs at each (order, node) row (node -1: the prompt's end)."""
        import torch

        index = self._index
        width = max(index.next_tokens[n + 1].size for _, n in pairs)
        wanted = torch.zeros((len(pairs), width), dtype=torch.long)
        for r, (_, n) in enumerate(pairs):
            toks = index.next_tokens[n + 1]
            wanted[r, : toks.size] = torch.from_numpy(toks)
        values = next_token_log_probs(head, rows, wanted.to(rows.device),
                                      softcap=self._softcap).double().cpu().numpy()
        for r, (b, n) in enumerate(pairs):
            state = states[b]
            base = 0.0 if n < 0 else state.node_lp[n]
            targets = index.next_targets[n + 1]
            lp = base + values[r, : targets.size]
            nodes = targets >= 0
            state.node_lp[targets[nodes]] = lp[nodes]
            state.protocol_lp[-1 - targets[~nodes]] = lp[~nodes]

    # ------------------------------------------------------------------- branch and bound
    def _bounds(self, state: _OrderState, temperature: float,
                shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frontier nodes, their tempered mass bounds, computed protocols' masses)."""
        frontier = state.frontier()
        # sum_i p_i^(1/T) <= k^(1 - 1/T) (sum_i p_i)^(1/T) for T > 1 (Hoelder), else <= (sum)^(1/T)
        spread = max(0.0, 1.0 - 1.0 / temperature)
        log_bound = (state.node_lp[frontier] / temperature - shift
                     + spread * np.log(self._index.subtree_protocols[frontier]))
        done = state.protocol_lp[~np.isnan(state.protocol_lp)]
        return frontier, np.exp(log_bound), np.exp(done / temperature - shift)

    def _shift(self, state: _OrderState, temperature: float) -> float:
        known = np.concatenate([state.node_lp[~np.isnan(state.node_lp)],
                                state.protocol_lp[~np.isnan(state.protocol_lp)]])
        return float(known.max() / temperature) if known.size else 0.0

    def _settled(self, bounds: np.ndarray, masses: np.ndarray) -> bool:
        if not bounds.size:
            return True
        if masses.size == 0 or self.tolerance == 0:
            return False
        kth = np.sort(masses)[::-1][min(self.top_k, masses.size) - 1]
        enough = masses.size >= min(self.top_k, self.trie.n_protocols)
        return (bounds.sum() <= self.tolerance * masses.sum() and enough
                and bounds.max() <= kth)

    def _to_run(self, state: _OrderState, temperature: float) -> np.ndarray:
        """The nodes to run next for one order (empty when its result is settled)."""
        shift = self._shift(state, temperature)
        frontier, bounds, masses = self._bounds(state, temperature, shift)
        if self._settled(bounds, masses):
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(-bounds, kind="stable")
        # Run the largest bounds until what is left would be small against all there is
        # (computed plus bounded mass: computing a subtree turns its bound into mass).
        allowance = self.tolerance * (masses.sum() + bounds.sum()) / 2
        left = np.cumsum(bounds[order][::-1])[::-1]  # left[i]: mass of order[i:]
        if self.tolerance == 0:
            count = frontier.size  # exact: everything runs
        else:
            count = max(1, int(np.searchsorted(-left, -allowance, side="left")))
        if masses.size:
            kth = np.sort(masses)[::-1][min(self.top_k, masses.size) - 1]
            count = max(count, int((bounds > kth).sum()))
        chosen = frontier[order[:count]]
        runs = []
        for node in chosen:
            subtree = self._index.bfs_subtree[node]
            runs.append(subtree[: self.max_subtree])
        nodes = np.unique(np.concatenate(runs))
        # Parents before children: depth order keeps every ancestor ahead of its nodes.
        return nodes[np.argsort(self.trie.node_depth[nodes], kind="stable")]

    def _finish(self, state: _OrderState, temperature: float) -> np.ndarray:
        """Exact log-probs where computed; the bounded rest gets half its bound, shared."""
        out = state.protocol_lp.copy()
        frontier = state.frontier()
        if frontier.size:
            spread = max(0.0, 1.0 - 1.0 / temperature)
            for node in frontier:
                below = self._index.protocols_below[node]
                below = below[np.isnan(out[below])]
                if not below.size:
                    continue
                k = self._index.subtree_protocols[node]
                # tempered share: (bound / 2) / k, back to a log-probability
                log_share = (state.node_lp[node] / temperature + spread * math.log(k)
                             - math.log(2 * k))
                out[below] = temperature * log_share
        if np.isnan(out).any():  # cannot happen: every protocol is below the frontier or done
            raise ModelError("bounded scoring left a protocol without a value")
        return out

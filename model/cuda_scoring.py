"""Scoring on the GPU: batches by a token budget, and one order through a captured graph.

The maths is scoring.py's (the decoder over the right-padded prompt, the head on the last
real token); what changes is how the work reaches the device:

- `BatchedScorer`: prompts sorted by length and cut by a token budget, one host copy and
  one device-to-host copy per batch; with `layer_major_tokens`, up to that many tokens of
  batches run layer by layer, each layer's folded weights built once for all of them
  (scoring.layer_major_hidden_states);
- `GraphedScorer`: one order at a time (the latency path) replays a CUDA graph captured
  once per prompt-length bucket, so the Python and kernel-launch overhead of every decoder
  layer is paid once at start-up, not per order. All buckets share one memory pool.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radproto.model.errors import ModelError
from radproto.model.scoring import (
    catalog_log_softmax,
    head_log_softmax,
    layer_major_hidden_states,
    length_batches,
    padded_ids,
)


@dataclass
class BatchedScorer:
    """Many orders: sorted by length, batched by a token budget, one sync per batch."""

    model: Any
    head: Any
    pad_token_id: int
    max_batch_tokens: int = 32768
    max_batch: int = 512
    #: 0: each batch through the whole decoder in turn. Else batches are gathered into
    #: waves of up to this many padded tokens, each run layer by layer.
    layer_major_tokens: int = 0

    def log_probs(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        out = np.empty((len(prompts), len(self.head.names)), dtype=np.float64)
        if not prompts:
            return out
        lengths = [len(p) for p in prompts]
        groups = length_batches(lengths, self.max_batch_tokens, self.max_batch)
        with torch.inference_mode():
            for wave in self._waves(groups, lengths):
                batches = [self._on_device([prompts[i] for i in group]) for group in wave]
                if len(wave) == 1:
                    results = [catalog_log_softmax(self.model, self.head, *batches[0])]
                else:
                    results = [head_log_softmax(self.head, h)
                               for h in layer_major_hidden_states(self.model, batches)]
                for group, result in zip(wave, results, strict=True):
                    out[group] = result.double().cpu().numpy()
        return out

    def _waves(self, groups: list[list[int]], lengths: list[int]) -> list[list[list[int]]]:
        """Consecutive batches whose padded tokens add up to at most layer_major_tokens."""
        if not self.layer_major_tokens:
            return [[group] for group in groups]
        waves: list[list[list[int]]] = []
        tokens = 0
        for group in groups:
            size = len(group) * max(lengths[i] for i in group)
            if waves and tokens + size <= self.layer_major_tokens:
                waves[-1].append(group)
                tokens += size
            else:
                waves.append([group])
                tokens = size
        return waves

    def _on_device(self, prompts: list[Sequence[int]]) -> tuple[Any, Any]:
        device = self.head.weight.device
        ids, lens = padded_ids(prompts, self.pad_token_id)
        if device.type == "cuda":  # pinning needs an accelerator
            ids = ids.pin_memory()
        return ids.to(device, non_blocking=True), lens.to(device, non_blocking=True)


class GraphedScorer:
    """One order at a time through captured CUDA graphs, one graph per prompt-length bucket."""

    def __init__(self, model: Any, head: Any, pad_token_id: int, *, bucket: int = 32,
                 max_prompt: int = 256) -> None:
        self.model = model
        self.head = head
        self.device = head.weight.device
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
                catalog_log_softmax(self.model, self.head, ids, lens)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # One pool for every bucket: replays never overlap (the lock) and each output is
        # copied out at once, so all buckets cost about one graph's memory.
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            out = catalog_log_softmax(self.model, self.head, ids, lens)
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

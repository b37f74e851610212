"""Scoring: one forward pass over each order's prompt, the protocol head on its last position.

Prompts are sorted by length and cut into batches by a token budget (little padding), run
through the decoder with right padding, and the final hidden state at each prompt's last
real token goes through the head: [n_orders, n_protocols] log-probabilities over the catalog
(log-softmax of the head's logits; calibration divides them by the temperature). The same
`last_hidden_states` serves training (training/model_setup.py), CPU scoring here and the CUDA
paths (model/cuda_scoring.py), so a prompt is read the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from radproto.model.errors import ModelError

#: Prompt tokens per batched pass (padding included). On 2 CPU cores larger batches buy
#: little; on a GPU the caller raises it (model/cuda_scoring.py).
CPU_BATCH_TOKENS = 2048


def split_model(model: Any) -> tuple[Any, Any]:
    """(decoder backbone, vocabulary projection) of a causal LM, LoRA layers included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = base.get_decoder() if hasattr(base, "get_decoder") else None
    output = base.get_output_embeddings()
    if backbone is None or output is None:
        raise ModelError(f"cannot find the decoder and LM head of {type(base).__name__}")
    return backbone, output


def last_hidden_states(model: Any, input_ids: Any, lengths: Any) -> Any:
    """[B, H] final hidden state at each row's last real token (rows right-padded).

    No attention mask goes in: with right padding, a real token's causal window holds only
    real tokens, so plain causal attention is exact for every position read here, and the
    decoder takes its fastest kernel (SDPA's causal flash path on CUDA, no [B, T, T] mask
    built). What the padding positions compute is never read. The call has no host sync,
    so it can be captured in a CUDA graph."""
    import torch

    backbone, _ = split_model(model)
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]


def layer_major_hidden_states(model: Any, batches: Sequence[tuple[Any, Any]]) -> list[Any]:
    """last_hidden_states of several right-padded batches, run layer by layer: every batch
    through decoder layer 1, then all through layer 2, ... A 4-bit model with the LoRA fold
    (kernels.fold_lora) builds each layer's folded weights once for all the batches
    (kernels.held_folded_weights) instead of once a batch: on a GPU that weight side (NF4
    dequantised, LoRA folded in, cast to FP8) is ~45 ms of a 7B forward (bench/GPU_NOTES.md
    run 23). Costs the batches' hidden states held together. Llama-family decoders
    (embed_tokens, rotary_emb, layers, norm); the same answers as last_hidden_states."""
    import torch
    from transformers.masking_utils import create_causal_mask

    from radproto.model.kernels import held_folded_weights

    backbone, _ = split_model(model)
    states, positions, rotary, masks = [], [], [], []
    for ids, _lengths in batches:
        hidden = backbone.embed_tokens(ids)
        position = torch.arange(ids.shape[1], device=ids.device)[None]
        states.append(hidden)
        positions.append(position)
        rotary.append(backbone.rotary_emb(hidden, position_ids=position))
        masks.append(create_causal_mask(config=backbone.config, inputs_embeds=hidden,
                                        attention_mask=None, past_key_values=None,
                                        position_ids=position))
    dtype = states[0].dtype if states else torch.float32
    for layer in backbone.layers[: backbone.config.num_hidden_layers]:
        with held_folded_weights(layer, dtype):
            for i in range(len(states)):
                out = layer(states[i], attention_mask=masks[i], position_ids=positions[i],
                            position_embeddings=rotary[i], use_cache=False)
                states[i] = out[0] if isinstance(out, tuple) else out
    finals = []
    for hidden, (_ids, lengths) in zip(states, batches, strict=True):
        # RMSNorm is per position: normalise only the positions the head reads
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        finals.append(backbone.norm(last))
    return finals


def _attention_implementation(backbone: Any) -> str:
    return getattr(getattr(backbone, "config", None), "_attn_implementation", "sdpa") or "sdpa"


@contextmanager
def mask_capable_attention(model: Any) -> Iterator[None]:
    """Run under a plain causal attention implementation (SDPA, eager).

    A model set up for packed training attends through the varlen kernel, which needs the
    packed batch's example boundaries; the model's own setting comes back afterwards."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _attention_implementation(base) in ("sdpa", "eager"):
        yield
        return
    configs = [m.config for m in base.modules()
               if hasattr(getattr(m, "config", None), "_attn_implementation")]
    saved = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        for config, value in zip(configs, saved, strict=True):
            config._attn_implementation = value


def length_batches(lengths: Sequence[int], max_tokens: int, max_batch: int = 256
                   ) -> list[list[int]]:
    """Indices grouped into batches of similar length, each padded batch within max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_batch):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def padded_ids(prompts: Sequence[Sequence[int]], pad_token_id: int, width: int | None = None
               ) -> tuple[Any, Any]:
    """(input_ids [B, width] right-padded, lengths [B]) as CPU tensors."""
    import torch

    lengths = [len(p) for p in prompts]
    if not lengths or min(lengths) < 1:
        raise ModelError("an empty prompt cannot be scored")
    width = width or max(lengths)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.as_tensor(list(prompt), dtype=torch.long)
    return ids, torch.as_tensor(lengths, dtype=torch.long)


def catalog_log_softmax(model: Any, head: Any, input_ids: Any, lengths: Any) -> Any:
    """[B, n_protocols] log-softmax of the head over each right-padded row's last token."""
    return head_log_softmax(head, last_hidden_states(model, input_ids, lengths))


def head_log_softmax(head: Any, hidden: Any) -> Any:
    """[B, n_protocols] log-softmax of the head over final hidden states [B, H]: the one
    read-out of every scoring path (CPU batches, CUDA batches and waves, CUDA graphs)."""
    import torch

    return torch.log_softmax(head(hidden), dim=-1)


def head_log_probs(model: Any, head: Any, prompts: Sequence[Sequence[int]], *,
                   pad_token_id: int, max_tokens: int = CPU_BATCH_TOKENS) -> np.ndarray:
    """[len(prompts), n_protocols] float64 log-probabilities over the catalog, input order."""
    import torch

    out = np.empty((len(prompts), len(head.names)), dtype=np.float64)
    if not prompts:
        return out
    device = head.weight.device
    with torch.inference_mode(), mask_capable_attention(model):
        for group in length_batches([len(p) for p in prompts], max_tokens):
            ids, lengths = padded_ids([prompts[i] for i in group], pad_token_id)
            result = catalog_log_softmax(model, head, ids.to(device), lengths.to(device))
            out[group] = result.double().cpu().numpy()
    return out

"""The fast QLoRA training path: packed rows, label-only loss, lean LoRA, bf16 throughout.

What it changes against the plain Hugging Face path (Trainer + peft + padded batches):

- packed rows (training/packing.py): no pad tokens; attention bounded per example by
  `cu_seqlens` through a registered attention function (flash-attention varlen on CUDA,
  one causal SDPA call per example elsewhere);
- the vocabulary projection runs on the label positions only (a few per order instead of
  every prompt token), with the cross-entropy in float32 on those rows;
- LoRA matmuls in the compute dtype (peft upcasts activations to the adapter's float32),
  norms, embeddings and head kept in bf16 instead of the float32 that
  prepare_model_for_kbit_training casts them to;
- optional torch.compile'd RMSNorm, RoPE and SwiGLU (one fused kernel each).
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from radproto.model.scoring import split_model
from radproto.training.packing import IGNORE_INDEX, PackedBatch

VARLEN_ATTENTION = "radproto_varlen"


def _varlen_kernel() -> tuple[Callable | None, dict[str, Any]]:
    """torch's flash-attention varlen entry point and the keyword that makes it causal."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, {}
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        return varlen_attn, {"is_causal": True}
    if "window_size" in params:
        return varlen_attn, {"window_size": (-1, 0)}
    return None, {}


_VARLEN, _CAUSAL_KW = None, {}
_VARLEN_CHECKED = False
FORCE_SEGMENT_LOOP = False  # tests and benchmarks flip this to check the kernel path
USE_BLOCK_MASK = False  # tests: the CUDA fallback (one SDPA call, block-diagonal mask) on CPU


def varlen_attention_forward(module: Any, query: Any, key: Any, value: Any,
                             attention_mask: Any, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention inside each packed example ([1, H, T, D] in, [1, T, H, D] out)."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    global _VARLEN, _CAUSAL_KW, _VARLEN_CHECKED
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # not a packed call (e.g. generation): the plain path
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one packed row")
    groups = getattr(module, "num_key_value_groups", 1)
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    if not _VARLEN_CHECKED:
        _VARLEN, _CAUSAL_KW = _varlen_kernel()
        _VARLEN_CHECKED = True
    use_kernel = (_VARLEN is not None and q.is_cuda and not FORCE_SEGMENT_LOOP
                  and q.dtype in (torch.bfloat16, torch.float16))
    if use_kernel:
        max_len = int(kwargs.get("max_length_q") or 0)
        out = _VARLEN(q, k, v, cu, cu, max_len, max_len, scale=scaling, **_CAUSAL_KW)
    elif (q.is_cuda or USE_BLOCK_MASK) and not FORCE_SEGMENT_LOOP:
        # no varlen kernel: one SDPA call with a block-diagonal causal mask
        n = q.shape[0]
        segment = torch.repeat_interleave(
            torch.arange(cu.numel() - 1, device=q.device), (cu[1:] - cu[:-1]).long(),
            output_size=n)
        index = torch.arange(n, device=q.device)
        mask = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            attn_mask=mask[None, None], scale=scaling)[0].transpose(0, 1)
    else:
        bounds = cu.tolist()
        out = torch.empty_like(q)
        for start, end in itertools.pairwise(bounds):
            seg = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1), k[start:end].transpose(0, 1),
                v[start:end].transpose(0, 1), is_causal=True, scale=scaling)
            out[start:end] = seg.transpose(0, 1)
    return out.unsqueeze(0), None


def register_varlen_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)


def set_attention(model: Any, implementation: str) -> str:
    """Switch the attention implementation of every config in the model; returns the old one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    old = base.config._attn_implementation
    for module in base.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = implementation
    return old


def cast_frozen_floats(model: Any, dtype: Any) -> int:
    """Cast frozen floating parameters (norms, embeddings, head) to `dtype`; LoRA stays."""
    count = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            count += 1
    return count


def _lean_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """peft's LoRA forward minus the float32 round trip: the adapter runs in x's dtype."""
    import torch.nn.functional as F

    if self.disable_adapters or self.merged:
        return self._radproto_plain_forward(x, *args, **kwargs)
    import torch

    result = self.base_layer(x, *args, **kwargs)
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        a = self.lora_A[name].weight
        b = self.lora_B[name].weight
        hidden = F.linear(self.lora_dropout[name](x), a.to(x.dtype))
        # one GEMM that also adds: result + scale * hidden @ B^T (no separate add kernel)
        flat = torch.addmm(result.reshape(-1, result.shape[-1]),
                           hidden.reshape(-1, hidden.shape[-1]), b.to(x.dtype).t(),
                           alpha=self.scaling[name])
        result = flat.view(result.shape)
    return result


def lean_lora(model: Any) -> int:
    """Give every plain LoRA layer (no DoRA, no bias) the lean forward; returns how many."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or hasattr(module, "_radproto_plain_forward"):
            continue
        if any(getattr(module, "use_dora", {}).values()) or not hasattr(module, "lora_A"):
            continue
        module._radproto_plain_forward = module.forward
        module.forward = types.MethodType(_lean_lora_forward, module)
        count += 1
    return count


def plain_lora(model: Any) -> int:
    """Undo lean_lora: peft's own forward again; returns how many layers."""
    count = 0
    for module in model.modules():
        if hasattr(module, "_radproto_plain_forward"):
            del module.forward
            del module._radproto_plain_forward
            count += 1
    return count


def compile_elementwise(model: Any) -> int:
    """torch.compile RMSNorm, SwiGLU and RoPE into fused kernels (Llama-family modules)."""
    import torch
    import torch.nn.functional as F
    from transformers.models.llama import modeling_llama

    @torch.compile(dynamic=True)
    def rms_norm(hidden: Any, weight: Any, eps: float) -> Any:
        dtype = hidden.dtype
        h = hidden.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(dtype)

    @torch.compile(dynamic=True)
    def swiglu(gate: Any, up: Any) -> Any:
        return F.silu(gate) * up

    def norm_forward(self: Any, hidden: Any) -> Any:
        return rms_norm(hidden, self.weight, self.variance_epsilon)

    def mlp_forward(self: Any, x: Any) -> Any:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))

    count = 0
    for module in model.modules():
        if "forward" in vars(module):
            continue  # already patched
        if isinstance(module, modeling_llama.LlamaRMSNorm):
            module.forward = types.MethodType(norm_forward, module)
            count += 1
        elif isinstance(module, modeling_llama.LlamaMLP) and module.config.hidden_act == "silu":
            module.forward = types.MethodType(mlp_forward, module)
            count += 1
    if not hasattr(modeling_llama, "_radproto_rope"):
        modeling_llama._radproto_rope = modeling_llama.apply_rotary_pos_emb
        modeling_llama.apply_rotary_pos_emb = torch.compile(
            modeling_llama._radproto_rope, dynamic=True)
    return count


def uncompile_elementwise(model: Any) -> None:
    """Undo compile_elementwise: the modules' own forwards and the original RoPE."""
    from transformers.models.llama import modeling_llama

    for module in model.modules():
        if isinstance(module, modeling_llama.LlamaRMSNorm | modeling_llama.LlamaMLP) \
                and "forward" in vars(module):
            del module.forward
    original = getattr(modeling_llama, "_radproto_rope", None)
    if original is not None:
        modeling_llama.apply_rotary_pos_emb = original
        del modeling_llama._radproto_rope


def prepare_fast_training(model: Any, *, gradient_checkpointing: bool = True,
                          compute_dtype: Any = None, lean: bool = True,
                          compile_kernels: bool = False) -> str:
    """Make a peft LoRA model ready for packed training (in place); returns the attention
    implementation it had, for set_attention to restore before mask-based scoring."""
    import torch

    register_varlen_attention()
    previous = set_attention(model, VARLEN_ATTENTION)
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if next(model.parameters()).is_cuda else torch.float32
    cast_frozen_floats(model, compute_dtype)
    if lean:
        lean_lora(model)
    if compile_kernels:
        compile_elementwise(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input gradients on the embeddings.
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False
    model.train()
    return previous


def label_positions(batch: PackedBatch) -> Any:
    """Positions of the packed row whose target is a label token (computed on the CPU)."""
    import torch

    targets = batch.targets[0].cpu()
    return torch.nonzero(targets != IGNORE_INDEX).squeeze(1)


def packed_loss(model: Any, batch: PackedBatch, positions: Any | None = None) -> Any:
    """Mean cross-entropy over the label tokens of a packed row (sum / count, like HF)."""
    if positions is None:
        positions = label_positions(batch)
    return packed_label_loss(model, batch.input_ids, batch.position_ids, batch.targets,
                             batch.cu_seqlens, batch.max_seqlen, positions)


def packed_label_loss(model: Any, input_ids: Any, position_ids: Any, targets: Any,
                      cu_seqlens: Any, max_seqlen: int, positions: Any) -> Any:
    """packed_loss on the row's tensors (what a DDP-wrapped module's forward receives)."""
    import torch.nn.functional as F

    backbone, head = split_model(model)
    device = head.weight.device
    positions = positions.to(device, non_blocking=True)
    cu = cu_seqlens.to(device, non_blocking=True)
    hidden = backbone(
        input_ids=input_ids.to(device, non_blocking=True),
        position_ids=position_ids.to(device, non_blocking=True),
        cu_seq_lens_q=cu, cu_seq_lens_k=cu,
        max_length_q=max_seqlen, max_length_k=max_seqlen,
        use_cache=False,
    ).last_hidden_state[0]
    rows = hidden.index_select(0, positions)
    logits = head(rows).float()  # [n_label_tokens, V]: never the prompt's positions
    picked = targets[0].to(device, non_blocking=True).index_select(0, positions)
    return F.cross_entropy(logits, picked, reduction="sum") / max(1, positions.numel())


def padded_loss(model: Any, batch: dict[str, Any]) -> Any:
    """The plain path's loss (full logits, padded batch): the reference for tests."""
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
    return out.loss


@dataclass
class StepStats:
    step: int
    loss: float
    seconds: float
    n_examples: int
    n_tokens: int
    n_label_tokens: int


def make_optimizer(model: Any, *, lr: float = 2e-4, paged_8bit: bool | None = None) -> Any:
    """Paged 8-bit AdamW on CUDA (what the HF baseline uses), torch AdamW elsewhere."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    on_cuda = params[0].is_cuda
    if paged_8bit is None:
        paged_8bit = on_cuda
    if paged_8bit:
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                        weight_decay=0.0)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def allreduce_gradients(params: list[Any], world_size: int) -> None:
    """Average the LoRA gradients over the data-parallel ranks in one flat all-reduce."""
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def train_packed(model: Any, packs: Iterable[PackedBatch], optimizer: Any, *,
                 max_grad_norm: float = 1.0, world_size: int = 1,
                 on_step: Callable[[StepStats], None] | None = None) -> list[StepStats]:
    """One optimizer step per packed row; gradient clipping as the HF Trainer does."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    cuda = params[0].is_cuda
    stats: list[StepStats] = []
    for step, batch in enumerate(packs):
        positions = label_positions(batch)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = packed_loss(model, batch, positions)
        loss.backward()
        if world_size > 1:
            allreduce_gradients(params, world_size)
        if max_grad_norm and max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())  # synchronizes, so the step time is complete
        record = StepStats(step, value, time.perf_counter() - start, batch.n_examples,
                           batch.n_tokens, batch.n_label_tokens)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step}")
        stats.append(record)
        if on_step is not None:
            on_step(record)
    return stats

"""The model in training: the base with LoRA on its top layers and the protocol head, the
loss module DDP wraps, packed rows, the optimizer, and the trained tensors a checkpoint holds.

    build_model:      base (NF4 on CUDA) -> head rows from the protocols' names -> LoRA
                      (or a trained model's adapter and head: start_from) -> gradient
                      checkpointing -> packed rows (varlen attention)
    head_loss_module: (loss, logits) of a padded batch or a packed row
    build_optimizer:  AdamW (paged 8-bit on CUDA) over LoRA and the head, the head at its rate
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from radproto.model.catalog import Catalog
from radproto.model.errors import ConfigError, ModelError
from radproto.model.loading import add_lora, cpu_has_native_bf16
from radproto.training.config import TrainConfig

log = logging.getLogger(__name__)


def model_config_for(config: TrainConfig) -> Any:
    from radproto.model.loading import ModelConfig

    return ModelConfig(
        base_model=config.base_model, quantization=config.quantization,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        lora_targets=tuple(config.lora_targets), max_length=config.max_length,
        compute_dtype="auto",
    )


def default_cache_dir(config: TrainConfig) -> Path:
    from radproto.model.loading import default_cache_dir as model_cache_dir

    return Path(config.cache_dir).expanduser() if config.cache_dir else model_cache_dir()


def resolve_precision(requested: str, device: str) -> str:
    """ "fp32" or "bf16" for a config's precision ("auto" decides by the hardware)."""
    if requested != "auto":
        return requested
    return "bf16" if device.startswith("cuda") or cpu_has_native_bf16() else "fp32"


def build_model(config: TrainConfig, model_config: Any, catalog: Catalog, device: str, *,
                grad_ckpt: bool, packing: bool, world: int) -> tuple[Any, Any, Any, str]:
    """(model, tokenizer, head, attention): the base model with LoRA on the top layers, the
    protocol head (rows from the base's embeddings of the protocols' names), ready for this
    loop; `attention` is the implementation the model had before packed rows replaced it
    ("" when not packing)."""
    import torch

    from radproto.model.head import new_head, offload_output_embeddings
    from radproto.model.loading import load_base_model, resolve_dtype

    model, tokenizer = load_base_model(model_config, device,
                                       cache_dir=default_cache_dir(config))
    keep_4bit_layout(model)
    if getattr(model, "is_loaded_in_4bit", False) and not packing:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=grad_ckpt,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(config.seed)  # the LoRA init is part of the reproducible state
    head = new_head(model, tokenizer, catalog.names)  # rows from the base's names
    if world == 1:  # DDP wants every parameter on one device type
        offload_output_embeddings(model)  # the head reads hidden states, not the vocabulary
        embeddings_on_host(model)
    model = add_lora(model, model_config, top_layers=config.lora_layers,
                     prepare_kbit=False)  # prepared above, for this loop
    if config.start_from:
        head = start_from_trained(model, tokenizer, catalog, config, model_config)
    if grad_ckpt:
        model.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    attention = ""
    if packing:
        attention = prepare_packed(model, resolve_dtype(model_config, device))
    return model, tokenizer, head, attention


def keep_4bit_layout(model: Any) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its AVX-512 BF16 CPU kernels while the
    model trains. It repacks at the first forward in eval mode without gradients (every
    validation pass), and its packed kernel has no backward: later training steps would
    get wrong gradients through every frozen 4-bit layer. Returns how many layers."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def _host_lookup_forward(self: Any, ids: Any) -> Any:
    import torch.nn.functional as F

    rows = F.embedding(ids.to(self.weight.device), self.weight, self.padding_idx)
    return rows.to(ids.device)


def embeddings_on_host(model: Any) -> float:
    """Keep the untied token embeddings (frozen: LoRA leaves them) in host memory while
    training on one GPU: each step looks its tokens' rows up there and copies only those
    over (a few MB). Returns the GB freed on the GPU: 0.4 GB for a 7B-shaped model with a
    49k vocabulary, room for more orders a step in the same memory (bench/GPU_NOTES.md
    run 14). Tied embeddings (SmolLM2: 57 MB) and anything not on CUDA stay."""
    import types

    from radproto.model.head import embeddings_tied

    embeddings = model.get_input_embeddings()
    weight = getattr(embeddings, "weight", None)
    if weight is None or weight.device.type != "cuda" or embeddings_tied(model):
        return 0.0
    size = weight.numel() * weight.element_size() / 1e9
    embeddings.to("cpu")
    embeddings.forward = types.MethodType(_host_lookup_forward, embeddings)
    return size


def start_from_trained(model: Any, tokenizer: Any, catalog: Catalog, config: TrainConfig,
                       model_config: Any) -> Any:
    """Load a trained model's LoRA weights into `model` and return its head re-keyed to
    `catalog` (kept rows by name, new protocols from their names, dropped ones gone).

    The trained model must have been built like this run (base, LoRA rank, alpha, targets
    and layers); anything else is a ConfigError naming `start_from`."""
    import json

    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from radproto.model.head import head_for_catalog, load_head
    from radproto.model.model_dir import read_record
    from radproto.model.sources import SHIPPED_MODEL, shipped_model_dir

    directory = shipped_model_dir() if config.start_from == SHIPPED_MODEL else Path(
        config.start_from)
    adapter = directory / "adapter_model.safetensors"
    if not adapter.is_file():
        raise ConfigError(f"'{directory}' holds no trained adapter (adapter_model."
                          "safetensors)", field="start_from")
    record = read_record(directory)
    trained = record.get("model_config") or {}
    for key in ("base_model", "lora_r", "lora_alpha"):
        if trained.get(key) != getattr(model_config, key):
            raise ConfigError(f"'{directory}' was trained with {key} {trained.get(key)!r}, "
                              f"this run has {getattr(model_config, key)!r}",
                              field="start_from")
    weights = load_file(str(adapter))
    expected = set(get_peft_model_state_dict(model))
    if set(weights) != expected:
        raise ConfigError(f"the adapter in '{directory}' covers other layers or modules "
                          f"({len(set(weights) ^ expected)} tensors differ): set lora_layers "
                          "and lora_targets as it was trained", field="start_from")
    set_peft_model_state_dict(model, weights)
    names = Catalog.from_json(json.dumps(record["catalog"]), source=str(directory)).names
    device = model.get_input_embeddings().weight.device
    head, added, dropped = head_for_catalog(load_head(directory, names, device=device),
                                            catalog.names, model, tokenizer)
    log.info("starting from %s: %d head rows kept, %d new (%s), %d dropped", directory,
             len(catalog.names) - len(added), len(added), ", ".join(added) or "none",
             len(dropped))
    return head


def head_loss_module(model: Any, head: Any, *, label_smoothing: float = 0.0) -> Any:
    """A torch Module (so DDP can wrap the whole forward) returning (loss, logits): the
    cross-entropy over the catalog of the head's logits at each prompt's last token.

    A padded batch gives input_ids [B, T] and lengths [B]; a packed row gives input_ids
    [1, T], position_ids and cu_seqlens (attention bounded per example by the varlen
    kernel registered in model/kernels.py)."""
    import torch
    import torch.nn.functional as F

    from radproto.model.scoring import last_hidden_states, split_model

    class HeadLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.head = head

        def forward(self, input_ids: Any, labels: Any, lengths: Any = None,
                    position_ids: Any = None, cu_seqlens: Any = None,
                    max_seqlen: int = 0) -> tuple[Any, Any]:
            if cu_seqlens is None:
                hidden = last_hidden_states(self.model, input_ids, lengths)
            else:
                backbone, _ = split_model(self.model)
                rows = backbone(input_ids=input_ids, position_ids=position_ids,
                                cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
                                max_length_q=max_seqlen, max_length_k=max_seqlen,
                                use_cache=False).last_hidden_state[0]
                hidden = rows.index_select(0, (cu_seqlens[1:] - 1).long())
            logits = self.head(hidden)
            return F.cross_entropy(logits, labels, label_smoothing=label_smoothing), logits

    return HeadLoss()


def prepare_packed(model: Any, compute_dtype: Any) -> str:
    """Ready a peft model for packed rows (in place): varlen attention, frozen weights in
    the compute dtype, lean LoRA. Returns the attention implementation it had."""
    from radproto.model.kernels import (
        VARLEN_ATTENTION,
        cast_frozen_floats,
        lean_lora,
        register_varlen_attention,
        set_attention,
    )

    register_varlen_attention()
    previous = set_attention(model, VARLEN_ATTENTION)
    cast_frozen_floats(model, compute_dtype)
    lean_lora(model)
    return previous


def build_optimizer(loss_module: Any, head: Any, config: TrainConfig, kind: str
                    ) -> tuple[Any, list[float], list[Any]]:
    """(optimizer, lr scale per param group, trained parameters): LoRA and the head, the
    head at its own rate if head_learning_rate is given."""
    import torch

    lora = [p for n, p in trainable(loss_module).items() if not n.startswith("head.")]
    head_params = list(head.parameters())
    head_lr = config.head_learning_rate or config.learning_rate
    lr_scale = [1.0, head_lr / config.learning_rate]
    groups = [{"params": lora}, {"params": head_params}]
    if kind == "paged_adamw_8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(groups, lr=config.learning_rate,
                                             weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
    return optimizer, lr_scale, lora + head_params


def trainable(module: Any) -> dict[str, Any]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def copy_weights(module: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in trainable(module).items()}


def load_weights(module: Any, state: dict[str, Any]) -> None:
    import torch

    params = trainable(module)
    missing = set(params) - set(state)
    if missing:
        raise ModelError(f"checkpoint lacks {len(missing)} trained tensors, e.g. {min(missing)}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])

"""The standard Hugging Face path, measured as the baseline.

Training: the usual QLoRA recipe (prepare_model_for_kbit_training with gradient
checkpointing, peft LoRA on all linear layers, Trainer with paged 8-bit AdamW, bf16, padded
batches, loss over every position's full-vocabulary logits). Prediction: greedy generation of
the protocol text, as the Databricks accelerator did (a top-1 answer, no distribution).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=list(LORA_TARGETS))


def add_adapter(model: Any, *, seed: int, r: int = 16, dropout: float = 0.05) -> Any:
    """peft LoRA with a fixed seed: the same initial adapter for every path compared."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, lora_config(r=r, dropout=dropout))


def lora_fingerprint(model: Any) -> float:
    return float(sum(p.detach().double().sum() for n, p in model.named_parameters()
                     if "lora_A" in n))


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, Any]:
    from radproto.training.packing import pad_examples

    return pad_examples(examples, pad_id)


def train_hf(model: Any, examples: Sequence[dict], *, batch_size: int, steps: int,
             pad_id: int, lr: float = 2e-4, seed: int = 1, bf16: bool = True,
             output_dir: str = "/tmp/hf-baseline") -> dict[str, Any]:
    """Trainer on padded batches, examples in the given order (step k: k*B..(k+1)*B)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cuda = torch.cuda.is_available()
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = add_adapter(model, seed=seed)
    fingerprint = lora_fingerprint(model)
    times: list[float] = []
    losses: list[Any] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    class SequentialTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            losses.append((out[0] if return_outputs else out).detach())
            return out

    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=steps,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="paged_adamw_8bit" if cuda else "adamw_torch",
        bf16=bf16 and cuda, gradient_checkpointing=True, logging_steps=1000000,
        save_strategy="no", report_to=[], seed=seed, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True, use_cpu=not cuda,
    )
    data = list(examples[: batch_size * steps])
    trainer = SequentialTrainer(model=model, args=args, train_dataset=data,
                                data_collator=lambda rows: collate(rows, pad_id),
                                callbacks=[Timer()])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    reserved = torch.cuda.max_memory_reserved() if cuda else 0
    batches = [data[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
    return {
        "model": model,
        "losses": [float(x) for x in losses],
        "step_s": times,
        "real_tokens": [sum(len(e["input_ids"]) for e in b) for b in batches],
        "padded_tokens": [len(b) * max(len(e["input_ids"]) for e in b) for b in batches],
        "label_tokens": [sum(len(e["input_ids"]) - e["prompt_len"] for e in b) for b in batches],
        "peak_bytes": peak, "reserved_bytes": reserved, "lora_fingerprint": fingerprint,
    }


def reset_base(peft_model: Any, dtype: Any) -> Any:
    """The NF4 base back as it was before the baseline: no adapter, no fp32 upcasts."""
    from radproto.model.fast_train import cast_frozen_floats

    base = peft_model.unload()
    if hasattr(base, "disable_input_require_grads"):
        with contextlib.suppress(AttributeError, RuntimeError):
            base.disable_input_require_grads()
    base.gradient_checkpointing_disable()
    for p in base.parameters():
        p.requires_grad_(False)
    cast_frozen_floats(base, dtype)
    base.eval()
    return base


def generate_predictions(
    model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
    eos_id: int, batch_size: int,
) -> tuple[list[list[int]], float]:
    """Greedy generation, left-padded batches; returns the generated ids and seconds."""
    import torch

    device = next(p for p in model.parameters() if p.is_floating_point()).device
    cuda = device.type == "cuda"
    outputs: list[list[int]] = []
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            group = prompts[i:i + batch_size]
            width = max(len(p) for p in group)
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, p in enumerate(group):
                ids[row, width - len(p):] = torch.as_tensor(list(p))
                mask[row, width - len(p):] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad_id, eos_token_id=eos_id)
            outputs += out[:, width:].tolist()
    if cuda:
        torch.cuda.synchronize()
    return outputs, time.perf_counter() - start

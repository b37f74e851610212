"""What an ML engineer would run instead of `radproto train`, on the same model and data.

- `hf_padded`: the usual QLoRA recipe with the Hugging Face Trainer: NF4 base,
  prepare_model_for_kbit_training, peft LoRA on all linear layers, paged 8-bit AdamW, bf16,
  gradient checkpointing, padded batches of prompt + " " + protocol + EOS, the loss on the
  protocol tokens (full-vocabulary logits at every position);
- `trl_padding_free`: TRL's SFTTrainer on prompt/completion pairs with `padding_free=True`
  (batches flattened into one row, position ids restarting per example), completion-only
  loss, the same QLoRA pieces.

Both take the same orders as `radproto train` (the corpus's train split, the same prompt
text), the same LoRA rank and batch size. Each runs in its own process (its peak memory is
its own) and prints one `PEER {json}` line: real (non-padding) tokens/s and examples/s over
the steps after warm-up, peak GPU memory, first and last losses.

    python -m bench.gpu_peers KIND MODEL_DIR CORPUS_DIR --steps 30 --batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

WARMUP = 3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rows(corpus: Path, n: int) -> list[dict[str, Any]]:
    from radproto.training.orderfile import read_orders

    for name in ("train.parquet", "train.jsonl"):
        if (corpus / name).is_file():
            return read_orders(corpus / name)[:n]
    raise FileNotFoundError(f"no train split in {corpus}")


class _Clock:
    """A Trainer callback: seconds and real tokens of every optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                import torch

                torch.cuda.synchronize()
                clock.started = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                import torch

                torch.cuda.synchronize()
                clock.seconds.append(time.perf_counter() - clock.started)

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                       **kw: Any) -> None:
                if logs and "loss" in logs:
                    clock.losses.append(float(logs["loss"]))

        self.callback = Callback()
        self.seconds: list[float] = []
        self.losses: list[float] = []
        self.started = 0.0


def _quantized_model(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.bfloat16, device_map={"": 0},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16))


def hf_padded(model_dir: Path, rows: list[dict[str, Any]], *, steps: int, batch: int
              ) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from radproto.model.prompt import render_prompt, render_target

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples = []
    for row in rows:
        prompt = tokenizer(render_prompt(row))["input_ids"]
        target = tokenizer(render_target(row["label"]), add_special_tokens=False)["input_ids"]
        target = [*target, tokenizer.eos_token_id]
        examples.append({"input_ids": prompt + target,
                         "labels": [-100] * len(prompt) + target})
    tokens: list[int] = []

    def collate(batch_rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(e["input_ids"]) for e in batch_rows)
        ids = torch.full((len(batch_rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch_rows), width), -100)
        mask = torch.zeros((len(batch_rows), width), dtype=torch.long)
        for i, e in enumerate(batch_rows):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        tokens.append(int(mask.sum()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    model = prepare_model_for_kbit_training(
        _quantized_model(model_dir), use_gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(13)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    clock = _Clock()
    args = TrainingArguments(
        output_dir="/tmp/radproto-hf-peer", per_device_train_batch_size=batch,
        max_steps=steps, learning_rate=2e-4, warmup_steps=5, bf16=True,
        gradient_checkpointing=True, optim="paged_adamw_8bit", logging_steps=1,
        report_to=[], save_strategy="no", remove_unused_columns=False, seed=13,
        dataloader_num_workers=0)
    torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=args, train_dataset=examples, data_collator=collate,
            callbacks=[clock.callback]).train()
    return _figures(clock, tokens, batch)


def trl_padding_free(model_dir: Path, rows: list[dict[str, Any]], *, steps: int, batch: int
                     ) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from radproto.model.prompt import render_prompt, render_target

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data = Dataset.from_list([{"prompt": render_prompt(r), "completion": render_target(r["label"])}
                              for r in rows])
    clock = _Clock()
    config = SFTConfig(
        output_dir="/tmp/radproto-trl-peer", per_device_train_batch_size=batch,
        max_steps=steps, learning_rate=2e-4, warmup_steps=5, bf16=True,
        gradient_checkpointing=True, optim="paged_adamw_8bit", logging_steps=1,
        report_to=[], save_strategy="no", seed=13, padding_free=True,
        completion_only_loss=True, max_length=None, dataloader_num_workers=0)
    torch.manual_seed(13)
    trainer = SFTTrainer(
        model=_quantized_model(model_dir), args=config, train_dataset=data,
        processing_class=tokenizer, callbacks=[clock.callback],
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                               target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    tokens: list[int] = []
    collator = trainer.data_collator

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        out = collator(features)
        tokens.append(int(out["input_ids"].numel()))  # one flattened row: no padding
        return out

    trainer.data_collator = counting
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    figures = _figures(clock, tokens, batch)
    figures["attention"] = getattr(trainer.model.config, "_attn_implementation", "?")
    return figures


def _figures(clock: _Clock, tokens: list[int], batch: int) -> dict[str, Any]:
    import torch

    seconds = clock.seconds[WARMUP:]
    real = tokens[WARMUP:len(clock.seconds)]
    return {
        "steps": len(clock.seconds), "batch_size": batch,
        "tokens_per_second": round(sum(real) / sum(seconds), 1),
        "examples_per_second": round(batch * len(seconds) / sum(seconds), 2),
        "step_seconds_median": round(statistics.median(seconds), 4),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
        "loss_first": clock.losses[0] if clock.losses else None,
        "loss_last5": round(statistics.mean(clock.losses[-5:]), 4) if clock.losses else None,
    }


PEERS = {"hf_padded": hf_padded, "trl_padding_free": trl_padding_free}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=sorted(PEERS))
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    rows = _rows(args.corpus, args.steps * args.batch)
    figures = PEERS[args.kind](args.model_dir, rows, steps=args.steps, batch=args.batch)
    print("PEER " + json.dumps({"kind": args.kind, **figures}), flush=True)


if __name__ == "__main__":
    main()

"""Helpers for the training tests: a tiny random Llama base model and a small corpus slice.

(Named test_train_* so it sits with the files it serves; it holds no tests itself.)
"""

from __future__ import annotations

from pathlib import Path

from radproto.model.catalog import Catalog, default_catalog
from radproto.training.config import TrainConfig

N_PROTOCOLS = 5


def small_catalog() -> Catalog:
    """Five protocols of the default catalog: a small head and a learnable task."""
    return Catalog(default_catalog().protocols[:N_PROTOCOLS], source="<test>")


def tiny_llama(*, hidden: int = 64, layers: int = 2):
    """A random Llama and a byte-level tokenizer with no merges: built in milliseconds, and
    prompt + target tokenise the same joined or apart. Returns (model, tokenizer)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<eos>", "<pad>", *sorted(alphabet)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(2, hidden // 16),
                         num_key_value_heads=max(1, hidden // 32),
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config), tokenizer


def wide_llama(seed: int = 0, *, hidden: int = 64, layers: int = 2):
    """tiny_llama in float32 under SDPA, eval mode, its weights redrawn from `seed` with a
    wider spread than the default init: sharper, order-dependent hidden states, so a wrong
    mask or position id changes the numbers visibly. Returns (model, tokenizer)."""
    import torch

    from radproto.model.kernels import set_attention

    model, tokenizer = tiny_llama(hidden=hidden, layers=layers)
    set_attention(model, "sdpa")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model.float().eval(), tokenizer


def with_lora(model, *, seed: int = 7):
    """LoRA (r 4) on every linear layer, its B matrices random so that the adapter matters."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = get_peft_model(model, LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]))
    with torch.no_grad():  # B starts at zero
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return lora


def random_prompts(seed: int, n: int, *, vocab: int, low: int = 3, longest: int = 25
                   ) -> list[list[int]]:
    """n prompts of random token ids (>= low: no special token) and random lengths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, vocab, (int(torch.randint(1, longest, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


def write_tiny_base(directory: Path) -> Path:
    """A random 2-layer Llama (hidden 64) with a byte-level tokenizer, saved as a directory
    load_base_model reads like any local model."""
    if (directory / "config.json").is_file():
        return directory
    model, tokenizer = tiny_llama(hidden=64, layers=2)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def write_small_corpus(directory: Path, catalog: Catalog, *, n_train: int = 96,
                       n_valid: int = 24, n_test: int = 24) -> Path:
    """train/validation/test JSONL files with the small catalog's labels only."""
    from radproto.training.corpus import generate_examples
    from radproto.training.orderfile import write_orders

    if (directory / "train.jsonl").is_file():
        return directory
    rows = [r for r in generate_examples(catalog, seed=5, size=3 * (n_train + n_valid + n_test))
            if r["label"] in catalog]
    total = n_train + n_valid + n_test
    assert len(rows) >= total, len(rows)
    write_orders(directory / "train.jsonl", rows[:n_train])
    write_orders(directory / "validation.jsonl", rows[n_train:n_train + n_valid])
    write_orders(directory / "test.jsonl", rows[n_train + n_valid:total])
    return directory


def tiny_config(base: Path, corpus: Path, out: Path, **changes) -> TrainConfig:
    values = dict(
        base_model=str(base), quantization="none", lora_r=4, lora_alpha=8, lora_dropout=0.0,
        max_length=256, precision="fp32", data=[str(corpus)], val_size=12,
        learning_rate=5e-3, warmup_steps=1, max_steps=6, epochs=0.0, batch_size=8,
        eval_interval=2, patience=0, log_interval=1, threads=1, baseline=False,
        out_dir=str(out), tracking_uri="", cache_dir=str(out.parent / "cache"), seed=7,
    )
    values.update(changes)
    return TrainConfig(**values)

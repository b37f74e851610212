"""Token-id arrays for the GPU benchmark, made where a tokenizer is at hand.

The GPU machine has no tokenizer and no hub: this writes the synthetic corpus's examples
(its real length distribution), tokenized with the one tokenization of training and scoring
(`encode_example`), and the catalog's target sequences, as one .npz the benchmark reads.
Token ids are renumbered densely so they fit a 32000-token vocabulary (the random model's
ids carry no meaning; only lengths and the catalog's prefix sharing matter).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[1] / ".benchdata" / "tokenizer"


def _flat(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    return np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(offsets[-1])), \
        offsets


def unflat(values: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def prepare(out: Path, *, size: int = 4000, seed: int = 13, max_length: int = 256,
            tokenizer_dir: Path = DEFAULT_TOKENIZER, vocab: int = 32000) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from radproto.model.catalog import default_catalog
    from radproto.model.encoding import encode_example, target_token_ids
    from radproto.training.corpus import generate_examples

    catalog = default_catalog()
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        save_embedded_tokenizer(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rows = generate_examples(catalog, seed=seed, size=size)
    encoded = [encode_example(tokenizer, row, row["label"], max_length) for row in rows]
    targets = [target_token_ids(tokenizer, name) for name in catalog.names]

    # dense renumbering: pad -> 0, eos -> 1, the rest in order of first use
    mapping: dict[int, int] = {tokenizer.pad_token_id: 0, tokenizer.eos_token_id: 1}
    def remap(ids: list[int]) -> list[int]:
        return [mapping.setdefault(t, len(mapping)) for t in ids]

    ids = [remap(e["input_ids"]) for e in encoded]
    prompt_len = np.array([e["prompt_len"] for e in encoded], dtype=np.int64)
    target_ids = [remap(t) for t in targets]
    if len(mapping) > vocab:
        raise ValueError(f"{len(mapping)} distinct tokens do not fit a {vocab}-token vocabulary")
    flat, offsets = _flat(ids)
    tflat, toffsets = _flat(target_ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, ids=flat, offsets=offsets, prompt_len=prompt_len,
                        target_ids=tflat, target_offsets=toffsets,
                        pad_id=np.int64(0), eos_id=np.int64(1))
    lengths = np.diff(offsets)
    stats = {
        "examples": len(ids), "protocols": len(target_ids), "distinct_tokens": len(mapping),
        "tokens_mean": float(lengths.mean()), "tokens_p50": float(np.median(lengths)),
        "tokens_p95": float(np.percentile(lengths, 95)), "tokens_max": int(lengths.max()),
        "prompt_mean": float(prompt_len.mean()),
        "target_mean": float(np.mean([len(t) for t in target_ids])),
        "tokenizer": type(tokenizer).__name__, "tokenizer_vocab": len(tokenizer),
        "seed": seed, "size_requested": size,
    }
    out.with_suffix(".json").write_text(json.dumps(stats, indent=2))
    return stats


def save_embedded_tokenizer(target: Path) -> None:
    """The embedded model's tokenizer (pad distinct from EOS), saved as a plain directory."""
    from transformers import AutoTokenizer

    from radproto.model.loading import EMBEDDED_GGUF_FILE, embedded_model_dir, ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(), gguf_file=EMBEDDED_GGUF_FILE)
    ensure_pad_token(tokenizer)
    tokenizer.save_pretrained(str(target))


def load(path: Path) -> dict[str, Any]:
    data = np.load(path)
    ids = unflat(data["ids"], data["offsets"])
    prompt_len = data["prompt_len"].tolist()
    examples = [{"input_ids": s, "labels": [-100] * p + s[p:], "prompt_len": p}
                for s, p in zip(ids, prompt_len, strict=True)]
    return {
        "examples": examples,
        "targets": unflat(data["target_ids"], data["target_offsets"]),
        "pad_id": int(data["pad_id"]),
        "eos_id": int(data["eos_id"]),
    }


def synthetic(n: int = 64, seed: int = 0, vocab: int = 1000) -> dict[str, Any]:
    """A stand-in with corpus-like lengths, for the CPU smoke run only."""
    rng = np.random.default_rng(seed)
    targets = [[int(t) for t in rng.integers(2, vocab, rng.integers(2, 7))] + [1]
               for _ in range(12)]
    for i in range(1, 12, 3):  # some shared prefixes, as in the real catalog
        targets[i][:2] = targets[i - 1][:2]
    examples = []
    for _ in range(n):
        p = int(rng.integers(40, 120))
        t = targets[int(rng.integers(0, len(targets)))]
        ids = [int(x) for x in rng.integers(2, vocab, p)] + t
        examples.append({"input_ids": ids, "labels": [-100] * p + t, "prompt_len": p})
    return {"examples": examples, "targets": targets, "pad_id": 0, "eos_id": 1}

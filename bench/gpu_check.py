"""CUDA paths against the plain CPU path, on a tiny model: a one-minute check for a GPU machine.

CI has no GPU, so the tests compare the fast paths with the plain ones on CPU in float32;
this runs the CUDA-only pieces (ProtocolClassifier's batched FastScorer, GraphedScorer for a
lone order, prepare_for_serving, packed varlen training loss) and compares them with the
plain float32 CPU path on the same weights. Prints one line per check and exits 1 on a miss.

    python -m bench.gpu_check
"""

from __future__ import annotations

import copy
import sys

import numpy as np


def main() -> int:
    import torch

    sys.path.insert(0, "tests")
    from test_train_support import small_catalog, tiny_llama

    from radproto.model import fast_train
    from radproto.model.classifier import ProtocolClassifier, encode_example
    from radproto.training.packing import pack_examples, pad_examples

    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    model, tokenizer = tiny_llama(hidden=128, layers=2)
    with torch.no_grad():  # wide random weights: far from uniform, so the check has teeth
        for p in model.parameters():
            p.normal_(0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    catalog = small_catalog()
    orders = [{"ordered_exam": name, "history": "pain", "diagnosis": "", "notes": ""}
              for name in catalog.names] * 3
    cpu = ProtocolClassifier(model.eval(), tokenizer, catalog)
    reference = cpu.catalog_log_probs(orders)
    gpu_model = copy.deepcopy(model).to("cuda", torch.bfloat16).eval()
    gpu = ProtocolClassifier(gpu_model, tokenizer, catalog)
    prepared = gpu.prepare_for_serving()
    batched = gpu.catalog_log_probs(orders)
    single = np.concatenate([gpu.catalog_log_probs([o]) for o in orders])
    failures = 0

    scale = float(np.abs(reference).mean())

    def check(name: str, got: np.ndarray, share: float) -> None:
        # bf16 keeps ~3 significant digits: the gap is judged against the values' size
        nonlocal failures
        gap = float(np.abs(got - reference).max())
        ok = np.isfinite(got).all() and gap <= share * scale
        failures += not ok
        print(f"{'ok  ' if ok else 'MISS'} {name}: max |d log p| {gap:.4f} "
              f"(<= {share:.0%} of mean |log p| {scale:.2f})")

    print(f"prepare_for_serving: {prepared:.2f} s, "
          f"graphs {len(gpu._cuda_scorers[catalog.version, 'graphed'].graphs)}")
    check("batched FastScorer (bf16) vs CPU float32", batched, 0.02)
    check("single-order CUDA graph (bf16) vs CPU float32", single, 0.02)
    agree = float(np.abs(single - batched).max())
    print(f"{'ok  ' if agree <= 0.005 * scale else 'MISS'} graph vs batched: {agree:.4f}")
    failures += agree > 0.005 * scale

    examples = [encode_example(tokenizer, o, o["ordered_exam"], 128) for o in orders]
    padded = float(fast_train.padded_loss(model.train(),
                                          pad_examples(examples, tokenizer.pad_token_id)))
    train_model = copy.deepcopy(model).to("cuda", torch.bfloat16)
    fast_train.register_varlen_attention()
    fast_train.set_attention(train_model, fast_train.VARLEN_ATTENTION)
    packed = float(fast_train.packed_loss(train_model, pack_examples(examples).to("cuda")))
    gap = abs(packed - padded) / padded
    print(f"{'ok  ' if gap <= 0.02 else 'MISS'} packed varlen loss (bf16) {packed:.4f} "
          f"vs padded CPU float32 {padded:.4f}: {gap:.2%}")
    failures += gap > 0.02
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What re-quantising the served weights does to a real model's answers, on the CPU.

The 7B models the GPU benchmarks time have random weights, so agreement between two
roundings there says nothing (bench/GPU_NOTES.md run 21). The shipped default model is real:
its decoder's linear layers (LoRA merged, as the CPU serves them) are rounded the way a GPU
path would round them, in float32 otherwise, and the calibration set scored again:

- `int4_g64`: GPTQ symmetric int4, one scale per 64 weights along K (model/marlin.py's
  Int4Weight; the Marlin path uses groups of 128, which SmolLM2's width of 576 does not
  divide);
- `fp8_tensor`: e4m3 weights with one scale per tensor and e4m3 activations with one scale
  per token (per-token scales keep an order's answer independent of its batch);
- `fp8_channel`: the same with one weight scale per output channel.

Prints, per rounding, top-1 of the head alone and of the blend, and how many orders keep
the unrounded model's top-1.

    python -m bench.quant_accuracy [--data eval/calib.jsonl] [--modes int4_g64,fp8_tensor]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

MODES = ("none", "int4_g64", "fp8_tensor", "fp8_channel")
E4M3_MAX = 448.0


def _fp8(t: Any, scale: Any) -> Any:
    import torch

    return (t / scale).to(torch.float8_e4m3fn).float() * scale


def round_weight(weight: Any, mode: str) -> Any:
    """A float32 weight [N, K] as the GPU path would hold it, dequantised."""
    if mode == "int4_g64":
        from radproto.model.marlin import Int4Weight

        return Int4Weight.quantize(weight, group=64).dequantize()
    if mode == "fp8_tensor":
        return _fp8(weight, weight.abs().amax().clamp(min=1e-12) / E4M3_MAX)
    if mode == "fp8_channel":
        return _fp8(weight, weight.abs().amax(-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX)
    raise ValueError(f"unknown rounding {mode!r}")


def _round_activation(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    scale = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (_fp8(x.float(), scale).to(x.dtype), *args[1:])


def decoder_linears(model: Any) -> list[Any]:
    import torch

    layers = model.get_base_model().model.layers if hasattr(model, "get_base_model") \
        else model.model.layers
    # after merging, peft's lora_A / lora_B modules stay but no longer run
    return [m for name, m in layers.named_modules()
            if isinstance(m, torch.nn.Linear) and "lora_" not in name]


def scores(clf: Any, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    head = clf.head_log_probs(rows)
    return head, clf.blend(head, rows)


def main(argv: list[str] | None = None) -> int:
    import torch

    from radproto.model.classifier import ProtocolClassifier
    from radproto.model.sources import shipped_model_dir
    from radproto.training.orderfile import read_orders

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="eval/calib.jsonl")
    p.add_argument("--modes", default=",".join(MODES[1:]))
    args = p.parse_args(argv)
    rows = read_orders(args.data, require_label=True)
    clf = ProtocolClassifier.load(shipped_model_dir(), device="cpu")
    clf.merge_for_cpu()
    linears = decoder_linears(clf.model)
    for linear in linears:  # float32 throughout: only the rounding under test differs
        linear.float()
    clf.model.float()
    originals = [linear.weight.data.clone() for linear in linears]
    gold = np.array([clf.catalog.names.index(r["label"]) for r in rows])
    results, reference = [], None
    for mode in ("none", *args.modes.split(",")):
        hooks = []
        with torch.no_grad():
            for linear, weight in zip(linears, originals, strict=True):
                linear.weight.data = weight if mode == "none" else round_weight(weight, mode)
                if mode.startswith("fp8"):
                    hooks.append(linear.register_forward_pre_hook(_round_activation))
        head, blend = scores(clf, rows)
        for hook in hooks:
            hook.remove()
        top_head, top_blend = head.argmax(1), blend.argmax(1)
        if reference is None:
            reference = (top_head, top_blend)
        row = {"rounding": mode, "data": args.data, "orders": len(rows), "layers": len(linears),
               "head_top1": round(float((top_head == gold).mean()), 4),
               "blend_top1": round(float((top_blend == gold).mean()), 4),
               "head_same_top1": round(float((top_head == reference[0]).mean()), 4),
               "blend_same_top1": round(float((top_blend == reference[1]).mean()), 4)}
        results.append(row)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

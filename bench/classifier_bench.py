"""The classifier on CPU: one order per call and batched, as served and as before.

    python -m bench.classifier_bench [--model default] [--data eval/dev.jsonl]
        [--orders 60] [--threads 2] [--tree-commit ddbbcbc] [--isa avx2]

Measured in one run on the same weights and the same orders:

- the model as radproto serves it: one forward pass over each order's prompt with the
  adapter merged into the base, bf16 where the CPU has native bf16, the lexical model
  blended in when the model has one;
- the same head in float32 with the adapter merged (what a CPU without native bf16 runs);
- the same head as served before (float32, LoRA applied per call): the baseline;
- the prefix-tree scorer it replaced (every protocol name's tokens after the prompt, one
  pass; its code is read from git at `--tree-commit`, the last commit that had it), on the
  same model, so the difference is the scoring design alone;
- the TF-IDF + logistic-regression baseline (trained on the default synthetic corpus).

Latency is one order per call (the worker's worst case) after warm-up; throughput is all
orders in one call. The CPU is named: figures move several-fold between CPUs.

`--isa avx2` emulates an AVX2-only CPU on a newer one: PyTorch, oneDNN and MKL are held to
their AVX2 kernels and the model is loaded as on a CPU without native bf16 (float32); the
clock and caches stay this CPU's, so it approximates, not replaces, a real AVX2 machine. It
writes its own section (classifier-cpu-avx2-emulated); a real CPU without native bf16 writes
classifier-cpu-avx2, one with it classifier-cpu.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from bench.report import machine_description, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]


def _tree_scoring(commit: str) -> types.ModuleType:
    """model/scoring.py as of `commit` (the prefix-tree scorer), as a module."""
    source = subprocess.run(["git", "show", f"{commit}:model/scoring.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("radproto_tree_scoring")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{commit}:model/scoring.py", "exec"), module.__dict__)
    return module


def _latencies(score: Any, items: list[Any]) -> list[float]:
    score(items[0])  # warm-up
    out = []
    for item in items:
        started = time.perf_counter()
        score(item)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _q(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(p * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--data", type=Path, default=ROOT / "eval" / "dev.jsonl")
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--tree-orders", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tree-commit", default="ddbbcbc")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: emulate an AVX2-only CPU (see above)")
    args = parser.parse_args()
    if args.isa == "avx2":  # before torch is imported: the kernels are chosen at load
        import os

        os.environ.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2",
                          MKL_ENABLE_INSTRUCTIONS="AVX2")
        import radproto.model.loading as loading

        loading.cpu_has_native_bf16 = lambda: False  # what an AVX2-only CPU reports

    import json
    import shutil
    import tempfile

    import torch

    from radproto.model.classifier import MODEL_FILE, ProtocolClassifier
    from radproto.model.encoding import prompt_token_ids, target_token_ids
    from radproto.model.loading import cpu_has_native_bf16
    from radproto.model.sources import load_classifier
    from radproto.training.data import prompt_fields
    from radproto.training.evaluate import default_corpus_train_rows
    from radproto.training.metrics import baseline_probabilities, train_baseline
    from radproto.training.orderfile import read_orders

    torch.set_num_threads(args.threads)
    rows = read_orders(args.data)[: args.orders]
    fields = prompt_fields(rows)
    classifier = load_classifier(args.model, tracking_uri=args.tracking_uri)

    def timed(score: Any) -> tuple[list[float], float]:
        latencies = _latencies(lambda f: score([f]), fields)
        score(fields[:8])
        started = time.perf_counter()
        score(fields)
        return latencies, len(fields) / (time.perf_counter() - started)

    served_ms, served_rate = timed(classifier.catalog_log_probs)
    # The same weights in float32: a copy of the model directory that says so.
    with tempfile.TemporaryDirectory(prefix="radproto-bench-") as scratch:
        source = Path(scratch) / "fp32"
        shutil.copytree(_model_directory(classifier, args), source)
        record = json.loads((source / MODEL_FILE).read_text("utf-8"))
        record["model_config"]["compute_dtype"] = "float32"
        (source / MODEL_FILE).write_text(json.dumps(record), "utf-8")
        fp32 = ProtocolClassifier.load(source)
    merged_ms, merged_rate = timed(fp32.head_log_probs)
    fp32.model.unmerge_adapter()  # as served before: LoRA products on every call
    head_ms, head_rate = timed(fp32.head_log_probs)

    tree = _tree_scoring(args.tree_commit)
    tok, model = fp32.tokenizer, fp32.model
    trie = tree.ProtocolTrie.build([target_token_ids(tok, n) for n in classifier.catalog.names])
    prompts = [prompt_token_ids(tok, f, classifier.config.max_length) for f in fields]
    tree_prompts = prompts[: args.tree_orders]
    with torch.inference_mode():
        tree_ms = _latencies(lambda p: tree.trie_log_probs(
            model, [p], trie, pad_token_id=tok.pad_token_id), tree_prompts)
        started = time.perf_counter()
        for start in range(0, len(tree_prompts), 16):
            tree.trie_log_probs(model, tree_prompts[start:start + 16], trie,
                                pad_token_id=tok.pad_token_id)
        tree_rate = len(tree_prompts) / (time.perf_counter() - started)

    names = list(classifier.catalog.names)
    baseline = train_baseline(default_corpus_train_rows(classifier.catalog), names)
    base_ms = _latencies(lambda r: baseline_probabilities(baseline, [r], len(names)), rows)
    started = time.perf_counter()
    baseline_probabilities(baseline, rows, len(names))
    base_rate = len(rows) / (time.perf_counter() - started)

    prompt_tokens = statistics.mean(len(p) for p in prompts)
    blend = (f" + lexical (weight {classifier.lexical_weight:.2f})"
             if classifier.lexical is not None and classifier.lexical_weight else "")
    native_bf16 = cpu_has_native_bf16()
    dtype = "bf16" if native_bf16 else "fp32"
    table = [
        [f"served: head, adapter merged, {dtype}{blend}", len(served_ms),
         f"{statistics.median(served_ms):.0f}", f"{_q(served_ms, 0.95):.0f}",
         f"{served_rate:.1f}", f"{prompt_tokens:.0f}"],
        ["head, adapter merged, fp32", len(merged_ms), f"{statistics.median(merged_ms):.0f}",
         f"{_q(merged_ms, 0.95):.0f}", f"{merged_rate:.1f}", f"{prompt_tokens:.0f}"],
        ["head, fp32, LoRA per call (served before)", len(head_ms),
         f"{statistics.median(head_ms):.0f}", f"{_q(head_ms, 0.95):.0f}", f"{head_rate:.1f}",
         f"{prompt_tokens:.0f}"],
        [f"prefix tree (as of {args.tree_commit})", len(tree_ms),
         f"{statistics.median(tree_ms):.0f}", f"{_q(tree_ms, 0.95):.0f}", f"{tree_rate:.1f}",
         f"{prompt_tokens + trie.n_nodes:.0f}"],
        ["TF-IDF + logistic regression", len(base_ms), f"{statistics.median(base_ms):.1f}",
         f"{_q(base_ms, 0.95):.1f}", f"{base_rate:.0f}", "-"],
    ]
    speedup = statistics.median(tree_ms) / statistics.median(head_ms)
    gain = statistics.median(head_ms) / statistics.median(served_ms)
    body = (f"Machine: {machine_description()}; native bf16: "
            + ("no: an AVX2-only CPU emulated (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA="
               "AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, float32)" if args.isa == "avx2" else
               "yes (AVX-512 BF16 / AMX)" if native_bf16 else "no (AVX2-only)") + "; "
            f"torch threads: {args.threads}, kernels: "
            f"{torch.backends.cpu.get_cpu_capability()}. Model "
            f"`{args.model}` ({classifier.model_version}), {len(names)} protocols; orders: the "
            f"first {len(rows)} of `{args.data.name}` (the tree: the first "
            f"{len(tree_prompts)}).\n\n"
            + markdown_table(["scorer", "orders", "p50 ms (one order)", "p95 ms",
                              "orders/s (batched)", "tokens through the model per order"],
                             table)
            + f"\n\nServed is {gain:.2f}x faster per order than the head as served before; "
            f"the head is {speedup:.1f}x faster than the prefix tree on the same weights "
            "(both float32). Targets (issue 15): p50 <= 150 ms and >= 8 orders/s on AVX-512 "
            "cores; p50 <= 350 ms and >= 4 orders/s on AVX2-only cores.")
    # One section per kind of CPU, so a session on another CPU adds its figures, not replaces.
    if args.isa == "avx2":
        write_section("classifier-cpu-avx2-emulated",
                      "Classifier on CPU, an AVX2-only CPU emulated", body)
    elif not native_bf16:
        write_section("classifier-cpu-avx2",
                      "Classifier on CPU, a real AVX2-only CPU (no native bf16)", body)
    else:
        write_section("classifier-cpu",
                      "Classifier on CPU: as served, as before, the prefix tree", body)


def _model_directory(classifier: Any, args: argparse.Namespace) -> Path:
    """The directory the classifier was loaded from (the shipped one for 'default')."""
    from radproto.model.sources import shipped_model_dir

    if args.model == "default":
        return shipped_model_dir()
    path = Path(args.model)
    if path.is_dir():
        return path
    raise SystemExit("--model: give 'default' or a model directory")


if __name__ == "__main__":
    main()

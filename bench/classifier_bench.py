"""The classifier on CPU: one order per call and batched, head against the prefix tree.

    python -m bench.classifier_bench [--model default] [--data eval/dev.jsonl]
        [--orders 60] [--threads 2] [--tree-commit ddbbcbc]

Measured in one run on the same weights and the same orders:

- the protocol head (what radproto serves): one forward pass over each order's prompt;
- the prefix-tree scorer it replaced (every protocol name's tokens after the prompt, one
  pass; its code is read from git at `--tree-commit`, the last commit that had it), on the
  same model, so the difference is the scoring design alone;
- the TF-IDF + logistic-regression baseline (trained on the default synthetic corpus).

Latency is one order per call (the worker's worst case) after warm-up; throughput is all
orders in one call. The CPU is named: figures move several-fold between CPUs.
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
    args = parser.parse_args()

    import torch

    from radproto.model.classifier import load_classifier
    from radproto.model.encoding import prompt_token_ids, target_token_ids
    from radproto.training.data import prompt_fields
    from radproto.training.evaluate import (
        baseline_probabilities,
        default_corpus_train_rows,
        train_baseline,
    )
    from radproto.training.finetune import cpu_has_native_bf16
    from radproto.training.orderfile import read_orders

    torch.set_num_threads(args.threads)
    rows = read_orders(args.data)[: args.orders]
    fields = prompt_fields(rows)
    classifier = load_classifier(args.model, tracking_uri=args.tracking_uri)
    head_ms = _latencies(lambda f: classifier.catalog_log_probs([f]), fields)
    classifier.catalog_log_probs(fields[:8])
    started = time.perf_counter()
    classifier.catalog_log_probs(fields)
    head_rate = len(fields) / (time.perf_counter() - started)

    tree = _tree_scoring(args.tree_commit)
    tok, model = classifier.tokenizer, classifier.model
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
    table = [
        ["protocol head (served)", len(head_ms), f"{statistics.median(head_ms):.0f}",
         f"{_q(head_ms, 0.95):.0f}", f"{head_rate:.1f}", f"{prompt_tokens:.0f}"],
        [f"prefix tree (as of {args.tree_commit})", len(tree_ms),
         f"{statistics.median(tree_ms):.0f}", f"{_q(tree_ms, 0.95):.0f}", f"{tree_rate:.1f}",
         f"{prompt_tokens + trie.n_nodes:.0f}"],
        ["TF-IDF + logistic regression", len(base_ms), f"{statistics.median(base_ms):.1f}",
         f"{_q(base_ms, 0.95):.1f}", f"{base_rate:.0f}", "-"],
    ]
    speedup = statistics.median(tree_ms) / statistics.median(head_ms)
    body = (f"Machine: {machine_description()}; native bf16: "
            f"{'yes (AVX-512 BF16 / AMX)' if cpu_has_native_bf16() else 'no (AVX2-only)'}; "
            f"torch threads: {args.threads}; scoring in float32 as the service does. Model "
            f"`{args.model}` ({classifier.model_version}), {len(names)} protocols; orders: the "
            f"first {len(rows)} of `{args.data.name}` (the tree: the first "
            f"{len(tree_prompts)}).\n\n"
            + markdown_table(["scorer", "orders", "p50 ms (one order)", "p95 ms",
                              "orders/s (batched)", "tokens through the model per order"],
                             table)
            + f"\n\nThe head is {speedup:.1f}x faster per order than the prefix tree on the "
            "same weights. Targets (issue 15): p50 <= 150 ms and >= 8 orders/s on AVX-512 "
            "cores; p50 <= 350 ms and >= 4 orders/s on AVX2-only cores.")
    write_section("classifier-cpu", "Classifier on CPU: protocol head against prefix tree",
                  body)


if __name__ == "__main__":
    main()

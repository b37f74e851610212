"""The classifier on CPU: per-order latency and accuracy, beside the TF-IDF baseline.

    python -m bench.classifier_bench --model models:/radproto@champion --corpus corpus \
        [--metrics eval/metrics.json] [--orders 60] [--threads 2]

Latency is one order per call (the worker's worst case), after warm-up, on `--threads`
torch threads. Accuracy figures come from `radproto eval`'s metrics.json when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.report import machine_description, markdown_table, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models:/radproto@champion")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--corpus", type=Path, default=Path("corpus"))
    parser.add_argument("--metrics", type=Path, default=None)
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from radproto.model.classifier import load_classifier
    from radproto.model.order import Order
    from radproto.training.evaluate import baseline_probabilities, train_baseline
    from radproto.training.orderfile import read_orders

    torch.set_num_threads(args.threads)
    test_rows = read_orders(args.corpus / "test.jsonl")[: args.orders]
    classifier = load_classifier(args.model, tracking_uri=args.tracking_uri)
    orders = [Order.from_record(row) for row in test_rows]
    classifier.score_orders(orders[:2])  # warm-up
    latencies = []
    for order in orders:
        started = time.perf_counter()
        classifier.score_orders([order])
        latencies.append((time.perf_counter() - started) * 1000)

    names = list(classifier.catalog.names)
    baseline = train_baseline(read_orders(args.corpus / "train.jsonl"), names)
    baseline_ms = []
    for row in test_rows:
        started = time.perf_counter()
        baseline_probabilities(baseline, [row], len(names))
        baseline_ms.append((time.perf_counter() - started) * 1000)

    def q(values: list[float], p: float) -> float:
        return sorted(values)[min(len(values) - 1, int(p * len(values)))]

    rows = [
        ["radproto (" + classifier.model_version + ")", len(latencies),
         f"{statistics.median(latencies):.0f}", f"{q(latencies, 0.95):.0f}"],
        ["TF-IDF + logistic regression", len(baseline_ms),
         f"{statistics.median(baseline_ms):.1f}", f"{q(baseline_ms, 0.95):.1f}"],
    ]
    body = (f"Machine: {machine_description()}; torch threads: {args.threads}. Model "
            f"`{args.model}`; {len(classifier.catalog)} protocols scored exactly (every "
            "protocol's token sequence, end marker included, in one prefix-tree pass).\n\n"
            "### Latency, one order per call (ms)\n\n"
            + markdown_table(["model", "orders", "p50", "p95"], rows))
    if args.metrics and args.metrics.exists():
        m = json.loads(args.metrics.read_text())
        keys = [("top1", "baseline_top1"), ("top3", "baseline_top3"),
                ("macro_f1", "baseline_macro_f1"), ("coverage_at_95", "baseline_coverage_at_95"),
                ("ece", "baseline_ece")]
        acc = [[k, _fmt(m.get(k)), _fmt(m.get(b))] for k, b in keys]
        body += (f"\n\n### Accuracy on the corpus test split (n = {m.get('n')})\n\n"
                 + markdown_table(["metric", "radproto", "TF-IDF baseline"], acc))
    write_section("classifier-cpu", "Classifier on CPU (the embedded default)", body)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value if value is not None else "")


if __name__ == "__main__":
    main()

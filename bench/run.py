"""Run every CPU benchmark; each prints its table and rewrites its section of docs/benchmarks.md.

The GPU benchmark runs on a GPU machine: `python -m bench.gpu_command run` (bench/GPU_NOTES.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ["bench.mllp_bench", "bench.fhir_bench", "bench.classifier_bench"]


def main() -> int:
    failed = []
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        if subprocess.run([sys.executable, "-m", module], cwd=ROOT).returncode != 0:
            failed.append(module)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

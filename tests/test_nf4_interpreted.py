"""Running a check under Triton's CPU interpreter (the fused kernels of model/fp8.py).

The interpreter must be switched on before Triton is imported, and Triton is not part of the
CPU venv's torch: each check runs in a subprocess with `TRITON_INTERPRET=1` and the Triton
that `make venv` puts in .venv/triton. The interpreter has no bf16 or float8 (numpy has
neither): the checks run float32; the card checks the real dtypes (bench/gpu_command.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_DIR = ROOT / ".venv" / "triton"


def run_interpreted(code: str, tmp_path: Path) -> str:
    """Run `code` in a fresh interpreter-mode Python; returns its stdout."""
    assert (TRITON_DIR / "triton").is_dir(), \
        f"Triton is missing from {TRITON_DIR}: run `make venv` (it installs it there)"
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(TRITON_DIR), str(ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout

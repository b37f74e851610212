"""What every GPU benchmark shares: the machine's description and a results file that is
rewritten after every measurement (so a call cut off at its limit still brings back what
it measured)."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GB = 1024**3


class Recorder:
    def __init__(self, out: Path | None, name: str = "gpu_results.json") -> None:
        self.path = out / name if out else None
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        print(f"== {key}: {json.dumps(value, default=str)[:1500]}", flush=True)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1, default=str))


def environment() -> dict[str, Any]:
    import torch
    import transformers

    versions = {}
    for name in ("peft", "bitsandbytes", "trl"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "card": torch.cuda.get_device_name(0) if cuda else "cpu",
        "n_gpus": torch.cuda.device_count() if cuda else 0,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / GB, 1)
        if cuda else 0,
        "torch": torch.__version__, "transformers": transformers.__version__, **versions,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }

"""A model directory's record, radproto_model.json, and the identity of its weights.

`read_record` reads the record and refuses one of another format; `model_version` names a
directory without a registry version by a hash of its weights and record. What a directory
holds is described in model/classifier.py, which writes and reads the rest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from radproto.model.errors import ModelError
from radproto.model.head import HEAD_FILE
from radproto.model.lexical import LEXICAL_WEIGHTS
from radproto.model.prompt import PROMPT_VERSION

MODEL_FILE = "radproto_model.json"
FORMAT_VERSION = 2  # 2: the protocol head (protocol_head.safetensors)


def read_record(path: Path) -> dict[str, Any]:
    """The record of the model directory `path`, of this build's format and prompt."""
    if not (path / MODEL_FILE).is_file():
        raise ModelError(f"'{path}' is not a model directory (no {MODEL_FILE}); "
                         "load_classifier (model/sources.py) also takes a models:/ or "
                         "runs:/ URI, 'default' or 'embedded'")
    try:
        record = json.loads((path / MODEL_FILE).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path / MODEL_FILE}: cannot read: {exc}") from exc
    if record.get("format_version") != FORMAT_VERSION or \
            record.get("prompt_version") != PROMPT_VERSION:
        raise ModelError(f"{path}: a model of format {record.get('format_version')} "
                         f"(prompt {record.get('prompt_version')}); this build reads "
                         f"format {FORMAT_VERSION} (prompt {PROMPT_VERSION}, scored by "
                         "the protocol head): train it again")
    return record


def model_version(directory: Path, record: Mapping[str, Any]) -> str:
    """The registry version named in the metadata, else "m-" + hash(weights + config)."""
    named = (record.get("metadata") or {}).get("model_version")
    if named:
        return str(named)
    digest = hashlib.sha256()
    for weights in weight_files(directory):
        with weights.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    identity = {k: record.get(k) for k in ("kind", "base_model", "model_config",
                                            "catalog_version", "prompt_version",
                                            "temperature", "abstain_threshold")}
    if record.get("lexical_weight"):  # only blended models: older versions stay as they were
        identity["lexical_weight"] = record["lexical_weight"]
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return "m-" + digest.hexdigest()[:12]


def weight_files(directory: Path) -> list[Path]:
    """The adapter or (possibly sharded) model weight files of a model directory."""
    patterns = ("adapter_model.safetensors", "adapter_model.bin", "model*.safetensors",
                "pytorch_model*.bin", HEAD_FILE, LEXICAL_WEIGHTS)
    found = {p for pattern in patterns for p in directory.glob(pattern) if p.is_file()}
    return sorted(found)

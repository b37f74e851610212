"""The classifier as an MLflow pyfunc model, so Spark can run it (`mlflow.pyfunc.spark_udf`).

The saved MLflow model directory holds the pyfunc wrapper (MLmodel, python_model.pkl,
artifacts/model/) and, at its root, a copy of the radproto model directory, so that
`load_classifier("models:/radproto@champion")` finds `radproto_model.json` right where the
registry download puts it. Input: a pandas DataFrame with the order-file columns
(ordered_exam, history, diagnosis, notes); output: one row per order with protocol,
confidence, abstained and the top 3 as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from radproto.model.order import ORDER_FILE_FIELDS

#: Spark result type for spark_udf(..., result_type=SPARK_RESULT_TYPE).
SPARK_RESULT_TYPE = "protocol string, confidence double, abstained boolean, top3 string"
OUTPUT_COLUMNS = ("protocol", "confidence", "abstained", "top3")
_NOT_MODEL = ("checkpoint", "*.partial")
PIP_REQUIREMENTS = ["torch", "transformers", "peft", "mlflow", "pandas", "numpy", "pyyaml",
                    "pydantic", "safetensors", "tokenizers", "radproto"]


class RadprotoPyfunc(mlflow.pyfunc.PythonModel):
    """Scores order rows with the radproto classifier stored under artifacts["model"]."""

    def load_context(self, context: Any) -> None:
        import torch

        from radproto.model.classifier import ProtocolClassifier

        # Spark runs one Python worker per core: RADPROTO_PYFUNC_THREADS=1 avoids
        # oversubscribing the machine.
        threads = int(os.environ.get("RADPROTO_PYFUNC_THREADS", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.classifier = ProtocolClassifier.load(context.artifacts["model"], device="cpu")

    # No type hints here: mlflow would try (and fail) to derive a schema from them.
    def predict(self, context, model_input, params=None):  # type: ignore[override]
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(
            model_input)
        rows = [{k: _text(record.get(k)) for k in ORDER_FILE_FIELDS}
                for record in frame.to_dict("records")]
        suggestions = self.classifier.score_orders(rows)
        return pd.DataFrame({
            "protocol": [s.protocol for s in suggestions],
            "confidence": [float(s.confidence) for s in suggestions],
            "abstained": [bool(s.abstained) for s in suggestions],
            "top3": [json.dumps([[t.protocol, round(t.probability, 6)] for t in s.top(3)])
                     for s in suggestions],
        }, columns=list(OUTPUT_COLUMNS))


def _text(value: Any) -> str:
    if value is None:
        return ""
    try:
        import math

        if isinstance(value, float) and math.isnan(value):
            return ""
    except TypeError:  # pragma: no cover
        pass
    return str(value)


def save_pyfunc(model_dir: str | Path, path: str | Path) -> Path:
    """Write the MLflow pyfunc directory for a radproto model directory; returns it."""
    import pandas as pd
    from mlflow.models import infer_signature

    model_dir, path = Path(model_dir), Path(path)
    example = pd.DataFrame([{k: "" for k in ORDER_FILE_FIELDS}])
    output = pd.DataFrame([{"protocol": "", "confidence": 0.0, "abstained": False,
                            "top3": "[]"}])
    with tempfile.TemporaryDirectory(prefix="radproto-model-") as scratch:
        # The training checkpoint (optimizer state, best weights) is no part of the model.
        clean = Path(scratch) / "model"
        shutil.copytree(model_dir, clean, ignore=shutil.ignore_patterns(*_NOT_MODEL))
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=RadprotoPyfunc(),
            artifacts={"model": str(clean)},
            pip_requirements=PIP_REQUIREMENTS,
            signature=infer_signature(example, output),
        )
        # The radproto loader reads the model directory at the root of what the registry
        # returns.
        for item in clean.iterdir():
            target = path / item.name
            if target.exists():
                continue
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)
    return path

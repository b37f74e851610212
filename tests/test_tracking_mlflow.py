"""MLflow: a training run logs params, metrics and artifacts, registers a version with an
alias, and the model reloads from the registry with identical probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_train_support import small_catalog, tiny_config, write_small_corpus, write_tiny_base

from radproto.training.finetune import train
from radproto.training.tracking import register_model, registry_has


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mlflow")
    catalog = small_catalog()
    base = write_tiny_base(root / "base")
    corpus = write_small_corpus(root / "corpus", catalog)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = tiny_config(base, corpus, root / "model", max_steps=4, tracking_uri=uri,
                         register_name="radproto", alias="champion", baseline=True)
    result = train(config, catalog, progress=False)
    return {"root": root, "uri": uri, "result": result, "catalog": catalog, "corpus": corpus}


def test_run_logs_params_metrics_and_artifacts(trained: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained["uri"])
    run = client.get_run(trained["result"].run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lora_r"] == "4" and run.data.params["max_steps"] == "4"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]  # per-step metrics
    assert {"val_loss", "temperature", "val_top1", "val_baseline_top1"} <= set(run.data.metrics)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"catalog", "prompt", "calibration", "config", "validation_report", "model"} <= names
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"MLmodel", "radproto_model.json", "adapter_model.safetensors",
            "tokenizer.json"} <= model_files
    assert "checkpoint" not in model_files  # optimizer state stays out of the model
    report = {Path(a.path).name
              for a in client.list_artifacts(run.info.run_id, "validation_report")}
    assert {"metrics.json", "report.md", "reliability.png", "confusion.png"} <= report


def test_registered_with_alias_and_reloads_with_identical_probabilities(trained: dict) -> None:
    from mlflow import MlflowClient

    from radproto.model.classifier import ProtocolClassifier
    from radproto.training.orderfile import read_orders
    from radproto.training.tracking import load_model

    assert trained["result"].registered_uri == "models:/radproto@champion"
    client = MlflowClient(tracking_uri=trained["uri"], registry_uri=trained["uri"])
    version = client.get_model_version_by_alias("radproto", "champion")
    assert str(version.version) == "1" and version.run_id == trained["result"].run_id
    assert registry_has("models:/radproto@champion", tracking_uri=trained["uri"])
    assert not registry_has("models:/radproto@nobody", tracking_uri=trained["uri"])

    rows = read_orders(trained["corpus"] / "test.jsonl")[:8]
    local = ProtocolClassifier.load(trained["root"] / "model")
    remote = load_model("models:/radproto@champion", tracking_uri=trained["uri"])
    assert remote.model_version == "radproto/1"
    assert remote.temperature == local.temperature
    a = local.probabilities(local.catalog_log_probs(rows))
    b = remote.probabilities(remote.catalog_log_probs(rows))
    np.testing.assert_array_equal(a, b)
    assert [s.protocol for s in local.score_orders(rows)] == \
        [s.protocol for s in remote.score_orders(rows)]


def test_alias_moves_to_a_new_version(trained: dict) -> None:
    from mlflow import MlflowClient

    uri = register_model(trained["result"].model_uri, "radproto", tracking_uri=trained["uri"],
                         alias="challenger", run_id=trained["result"].run_id)
    assert uri == "models:/radproto@challenger"
    client = MlflowClient(tracking_uri=trained["uri"], registry_uri=trained["uri"])
    assert str(client.get_model_version_by_alias("radproto", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("radproto", "champion").version) == "1"


def test_pyfunc_predicts_like_the_classifier(trained: dict) -> None:
    import mlflow.pyfunc
    import pandas as pd

    from radproto.model.classifier import ProtocolClassifier
    from radproto.training.orderfile import read_orders

    rows = read_orders(trained["corpus"] / "test.jsonl")[:6]
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=trained["uri"]).get_run(trained["result"].run_id)
    model = mlflow.pyfunc.load_model(f"{run.info.artifact_uri}/model")
    frame = pd.DataFrame([{k: r[k] for k in ("ordered_exam", "history", "diagnosis", "notes")}
                          for r in rows])
    out = model.predict(frame)
    expected = ProtocolClassifier.load(trained["root"] / "model").score_orders(rows)
    assert list(out["protocol"]) == [s.protocol for s in expected]
    np.testing.assert_allclose(out["confidence"], [s.confidence for s in expected], rtol=1e-9)


def test_the_default_model_is_the_champion_once_registered_else_the_shipped_one(
        trained: dict, tmp_path: Path) -> None:
    from radproto.adapter.default_model import default_model_uri

    assert default_model_uri(trained["uri"]) == "models:/radproto@champion"
    assert default_model_uri(f"sqlite:///{tmp_path / 'empty.db'}") == "default"


def _dev_file(trained: dict, path: Path) -> Path:
    """The validation split as a stand-in development set (labelled orders)."""
    import shutil

    shutil.copy(trained["corpus"] / "validation.jsonl", path)
    return path


def test_the_alias_moves_only_to_a_model_at_least_as_good_on_the_dev_set(
        trained: dict, tmp_path: Path) -> None:
    from radproto.model.classifier import ProtocolClassifier
    from radproto.training.orderfile import read_orders
    from radproto.training.promotion import decide, top1_on
    from radproto.training.tracking import load_model

    dev = _dev_file(trained, tmp_path / "dev.jsonl")
    catalog = trained["catalog"]
    champion = load_model("models:/radproto@champion", catalog=catalog,
                          tracking_uri=trained["uri"])
    same = decide(champion, name="radproto", alias="champion", tracking_uri=trained["uri"],
                  catalog=catalog, data=dev)
    assert same.promote and same.new_top1 == same.holder_top1  # as good: it moves
    # The champion with its head rows shifted by one protocol: every answer moves to a
    # neighbour, so it is worse on the dev set.
    import copy

    import torch

    shifted = copy.deepcopy(champion.head)
    with torch.no_grad():
        shifted.weight.copy_(torch.roll(champion.head.weight, 1, dims=0))
        shifted.bias.copy_(torch.roll(champion.head.bias, 1, dims=0))
    worse_model = ProtocolClassifier(champion.model, champion.tokenizer, catalog, head=shifted,
                                     config=champion.config)
    rows = read_orders(dev, require_label=True)
    assert top1_on(worse_model, rows, catalog) < same.holder_top1
    worse = decide(worse_model, name="radproto", alias="champion",
                   tracking_uri=trained["uri"], catalog=catalog, data=dev)
    forced = decide(worse_model, name="radproto", alias="champion",
                    tracking_uri=trained["uri"], catalog=catalog, data=dev, force=True)
    assert not worse.promote and "<" in worse.reason
    assert forced.promote and forced.reason == "forced (--force)"
    fresh = decide(worse_model, name="radproto", alias="champion",
                   tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}", catalog=catalog, data=dev)
    assert fresh.promote  # nobody holds the alias yet

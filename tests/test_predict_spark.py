"""The classifier as an MLflow pyfunc on a local Spark session (mlflow.pyfunc.spark_udf)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train_support import small_catalog, tiny_config, write_small_corpus, write_tiny_base

from radproto.training.pyfunc import SPARK_RESULT_TYPE, save_pyfunc

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers use this venv
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[1]").appName("radproto-test")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .getOrCreate())
    yield session
    session.stop()


def test_spark_udf_matches_the_classifier(spark, tmp_path: Path) -> None:
    import mlflow.pyfunc

    from radproto.model.classifier import ProtocolClassifier
    from radproto.training.finetune import train
    from radproto.training.orderfile import read_orders

    catalog = small_catalog()
    corpus = write_small_corpus(tmp_path / "corpus", catalog)
    train(tiny_config(write_tiny_base(tmp_path / "base"), corpus, tmp_path / "model",
                      max_steps=2), catalog, progress=False)
    pyfunc_dir = save_pyfunc(tmp_path / "model", tmp_path / "pyfunc")
    rows = read_orders(corpus / "test.jsonl")[:6]
    columns = ["ordered_exam", "history", "diagnosis", "notes"]
    frame = spark.createDataFrame([tuple(r[c] for c in columns) for r in rows], columns)
    udf = mlflow.pyfunc.spark_udf(spark, str(pyfunc_dir), result_type=SPARK_RESULT_TYPE,
                                  env_manager="local")
    out = frame.withColumn("suggestion", udf(*columns)).select("suggestion.*").collect()

    expected = ProtocolClassifier.load(tmp_path / "model").score_orders(rows)
    assert [r["protocol"] for r in out] == [s.protocol for s in expected]
    np.testing.assert_allclose([r["confidence"] for r in out],
                               [s.confidence for s in expected], rtol=1e-6)
    assert all(isinstance(r["abstained"], bool) and r["top3"].startswith("[[") for r in out)

"""Loading, LoRA, NF4 on request, and model directories (save/load, MLflow URIs).

Uses a tiny random Llama saved as a local base-model directory, with the embedded tokenizer.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from radproto.model.catalog import Catalog, Protocol, load_catalog
from radproto.model.classifier import (
    MODEL_FILE,
    ModelConfig,
    ProtocolClassifier,
    add_lora,
    load_base_model,
)
from radproto.model.errors import ConfigError, ModelError
from radproto.model.sources import load_classifier

ORDERS = [
    {"ordered_exam": "CT head", "history": "fall on anticoagulation", "diagnosis": "",
     "notes": "eval bleed"},
    {"ordered_exam": "MRI lumbar spine", "history": "back pain with saddle anesthesia",
     "diagnosis": "", "notes": ""},
]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama saved as an ordinary Hugging Face model directory."""
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    directory = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def adapted(config: ModelConfig, catalog, seed: int, **kwargs) -> ProtocolClassifier:
    """A classifier with a LoRA adapter whose weights are not the identity."""
    model, tokenizer = load_base_model(config, "cpu")
    model = add_lora(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # LoRA B starts at zero: make the adapter matter
    return ProtocolClassifier(model.eval(), tokenizer, catalog, config=config, **kwargs)


@pytest.fixture(scope="module")
def trained(base_dir, catalog) -> ProtocolClassifier:
    config = ModelConfig(base_model=str(base_dir), lora_r=4, lora_alpha=8,
                         compute_dtype="float32")  # exact round trips: no bf16 serving
    return adapted(config, catalog, 2, temperature=1.7, abstain_threshold=0.3)


def test_model_config_validates_and_round_trips():
    config = ModelConfig(lora_r=8, lora_targets=["q_proj", "v_proj"])
    assert config.lora_targets == ("q_proj", "v_proj")
    assert ModelConfig.from_dict(config.to_dict() | {"unknown": 1}) == config
    with pytest.raises(ConfigError):
        ModelConfig(quantization="int3")  # type: ignore[arg-type]


def test_lora_targets_all_linear_layers_and_only_lora_trains(base_dir):
    config = ModelConfig(base_model=str(base_dir), lora_r=4, lora_alpha=8, lora_dropout=0.1)
    model, tokenizer = load_base_model(config, "cpu")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    peft_model = add_lora(model, config)
    lora_modules = {name.split(".")[-1] for name, module in peft_model.named_modules()
                    if hasattr(module, "lora_A")}
    assert lora_modules == set(config.lora_targets)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora_config = peft_model.peft_config["default"]
    assert (lora_config.r, lora_config.lora_alpha, lora_config.lora_dropout) == (4, 8, 0.1)


def test_cpu_defaults_to_full_precision(base_dir):
    model, _ = load_base_model(ModelConfig(base_model=str(base_dir)), "cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert getattr(model, "quantization_method", None) is None


def test_nf4_on_request_on_cpu(base_dir, catalog):
    import bitsandbytes as bnb

    config = ModelConfig(base_model=str(base_dir), quantization="nf4", lora_r=4, lora_alpha=8)
    model, tokenizer = load_base_model(config, "cpu")
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized, "no 4-bit linear layers"
    quant = model.config.quantization_config
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
    assert quant["bnb_4bit_quant_type"] == "nf4"
    assert quant["bnb_4bit_use_double_quant"] is True
    peft_model = add_lora(model, config)
    scorer = ProtocolClassifier(peft_model, tokenizer, catalog, config=config)
    (suggestion,) = scorer.score_orders(ORDERS[:1])
    probs = [s.probability for s in suggestion.scores]
    assert np.isfinite(probs).all() and sum(probs) == pytest.approx(1.0)


def test_save_load_round_trip_gives_identical_probabilities(trained, tmp_path, catalog):
    before = trained.probabilities(trained.catalog_log_probs(ORDERS))
    directory = trained.save(tmp_path / "model", metadata={"epochs": 1, "val_accuracy": 0.5})
    record = json.loads((directory / MODEL_FILE).read_text())
    assert record["kind"] == "adapter"
    assert record["temperature"] == 1.7 and record["abstain_threshold"] == 0.3
    assert record["catalog_version"] == catalog.version
    assert record["prompt_version"] == "p2" and record["format_version"] == 2
    assert record["metadata"]["epochs"] == 1
    assert (directory / "adapter_config.json").is_file()
    assert (directory / "protocol_head.safetensors").is_file()
    assert re.fullmatch(r"m-[0-9a-f]{12}", trained.model_version)

    loaded = load_classifier(directory)
    after = loaded.probabilities(loaded.catalog_log_probs(ORDERS))
    np.testing.assert_allclose(after, before, atol=1e-7, rtol=0)
    assert loaded.temperature == 1.7 and loaded.abstain_threshold == 0.3
    assert loaded.model_version == trained.model_version
    assert loaded.catalog.version == catalog.version
    assert loaded.metadata["val_accuracy"] == 0.5
    assert loaded.tokenizer.pad_token_id != loaded.tokenizer.eos_token_id
    (suggestion,) = loaded.score_orders(ORDERS[:1])
    assert suggestion.model_version == trained.model_version


def test_model_version_follows_the_weights(trained, tmp_path):
    first = trained.save(tmp_path / "a")
    version_a = trained.model_version
    trained.temperature = 1.2
    try:
        trained.save(tmp_path / "b")
        assert trained.model_version != version_a  # calibration is part of the model
    finally:
        trained.temperature = 1.7
    named = trained.save(tmp_path / "c", metadata={"model_version": "radproto/7"})
    assert load_classifier(named).model_version == "radproto/7"
    trained.metadata.pop("model_version")
    assert load_classifier(first).model_version == version_a


def test_merged_model_directory_loads_without_the_base(trained, tmp_path):
    before = trained.probabilities(trained.catalog_log_probs(ORDERS))
    directory = trained.save(tmp_path / "merged", merged=True)
    assert json.loads((directory / MODEL_FILE).read_text())["kind"] == "merged"
    assert (directory / "model.safetensors").is_file()
    assert hasattr(trained.model, "peft_config")  # the live model still has its adapter
    loaded = ProtocolClassifier.load(directory)
    after = loaded.probabilities(loaded.catalog_log_probs(ORDERS))
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)


def test_loading_with_a_new_catalog_scores_it(trained, tmp_path, catalog):
    directory = trained.save(tmp_path / "model")
    site = catalog.extended_with(Catalog(
        [Protocol(name="MRI Wrist WO Contrast", modality="MR", body_region="wrist",
                  contrast="none")], source="site"))
    loaded = load_classifier(directory, catalog=site)
    assert loaded.untrained_protocols == ("MRI Wrist WO Contrast",)
    assert loaded.head.names == site.names
    (suggestion,) = loaded.score_orders(ORDERS[:1])
    assert suggestion.catalog_version == site.version
    assert "MRI Wrist WO Contrast" in {s.protocol for s in suggestion.scores}
    assert sum(s.probability for s in suggestion.scores) == pytest.approx(1.0)


def test_a_model_of_the_previous_format_is_refused(trained, tmp_path):
    directory = trained.save(tmp_path / "model")
    record = json.loads((directory / MODEL_FILE).read_text())
    record.update(format_version=1, prompt_version="p1")  # a prefix-tree model
    (directory / MODEL_FILE).write_text(json.dumps(record))
    with pytest.raises(ModelError, match="train it again"):
        load_classifier(directory)


def test_a_head_that_does_not_fit_the_catalog_is_refused(trained, tmp_path):
    from radproto.model.head import HEAD_FILE, save_head

    directory = trained.save(tmp_path / "model")
    (directory / HEAD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot read the protocol head"):
        load_classifier(directory)
    small = copy.deepcopy(trained.head)
    with torch.no_grad():
        small.weight = torch.nn.Parameter(small.weight[:3].clone())
        small.bias = torch.nn.Parameter(small.bias[:3].clone())
    save_head(small, directory)
    with pytest.raises(ModelError, match="3 rows for a catalog of"):
        load_classifier(directory)


def test_bad_model_locations_raise_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        load_classifier(tmp_path)
    (tmp_path / MODEL_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        load_classifier(tmp_path)
    with pytest.raises(ModelError):
        load_base_model(ModelConfig(base_model=str(tmp_path / "missing")), "cpu")


def test_mlflow_runs_and_models_uris(trained, tmp_path):
    import mlflow

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    directory = trained.save(tmp_path / "model")
    expected = trained.probabilities(trained.catalog_log_probs(ORDERS[:1]))
    try:
        experiment = mlflow.create_experiment(
            "radproto-test", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifacts(str(directory), artifact_path="model")
        by_run = load_classifier(f"runs:/{run.info.run_id}/model", tracking_uri=tracking)
        np.testing.assert_allclose(
            by_run.probabilities(by_run.catalog_log_probs(ORDERS[:1])), expected, atol=1e-7)
        assert by_run.model_version == trained.model_version

        client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        client.create_registered_model("radproto-protocol")
        version = client.create_model_version(
            "radproto-protocol", f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_registered_model_alias("radproto-protocol", "champion", version.version)
        by_alias = load_classifier("models:/radproto-protocol@champion", tracking_uri=tracking)
        assert by_alias.model_version == f"radproto-protocol/{version.version}"
        by_number = load_classifier(f"models:/radproto-protocol/{version.version}",
                                    tracking_uri=tracking)
        np.testing.assert_allclose(
            by_number.probabilities(by_number.catalog_log_probs(ORDERS[:1])), expected,
            atol=1e-7)
        with pytest.raises(ModelError):
            load_classifier("models:/radproto-protocol@missing", tracking_uri=tracking)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_tokenizer_without_a_spare_token_gets_a_new_pad_deterministically(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "CT": 2, "head": 3, "Protocol": 4, ":": 5}
    backend = Tokenizer(WordLevel(vocab, unk_token="</s>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                        eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    first, tok = load_base_model(ModelConfig(base_model=str(tmp_path)), "cpu")
    second, _ = load_base_model(ModelConfig(base_model=str(tmp_path)), "cpu")
    assert tok.pad_token_id == len(vocab) and tok.pad_token_id != tok.eos_token_id
    assert first.get_input_embeddings().weight.shape[0] == len(vocab) + 1
    for model in (first, second):
        assert torch.count_nonzero(model.get_output_embeddings().weight[len(vocab):]) == 0
    assert torch.equal(first.get_output_embeddings().weight,
                       second.get_output_embeddings().weight)


def test_untouched_base_saves_a_reference_and_other_weights_save_in_full(base_dir, tmp_path,
                                                                          catalog):
    config = ModelConfig(base_model=str(base_dir), compute_dtype="float32")
    model, tokenizer = load_base_model(config, "cpu")
    base = ProtocolClassifier(model, tokenizer, catalog, config=config,
                              metadata={"kind": "base"})
    expected = base.catalog_log_probs(ORDERS[:1])
    reference = base.save(tmp_path / "base")
    assert json.loads((reference / MODEL_FILE).read_text())["kind"] == "base"
    # no model weights: only the head, whose rows belong to the model directory
    assert [p.name for p in reference.glob("*.safetensors")] == ["protocol_head.safetensors"]
    np.testing.assert_allclose(load_classifier(reference).catalog_log_probs(ORDERS[:1]),
                               expected, atol=1e-6, rtol=0)
    unknown = ProtocolClassifier(model, tokenizer, catalog, config=config)
    full = unknown.save(tmp_path / "full")
    assert json.loads((full / MODEL_FILE).read_text())["kind"] == "merged"


def test_cpu_serving_merges_the_adapter_and_saves_it_unchanged(base_dir, catalog, tmp_path):
    from safetensors.torch import load_file

    from radproto.model.loading import cpu_has_native_bf16

    config = ModelConfig(base_model=str(base_dir), lora_r=4, lora_alpha=8)  # dtype auto
    original = adapted(config, catalog, 3)
    expected = original.probabilities(original.catalog_log_probs(ORDERS))
    original.save(tmp_path / "first")

    loaded = ProtocolClassifier.load(tmp_path / "first")
    serving = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    params = dict(loaded.model.named_parameters())
    assert all(p.dtype == serving for n, p in params.items() if "lora_" not in n)
    assert all(p.dtype == torch.float32 for n, p in params.items() if "lora_" in n)
    assert any(getattr(m, "merged", False) for m in loaded.model.modules())
    got = loaded.probabilities(loaded.catalog_log_probs(ORDERS))
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(got - expected).max() < 0.02

    loaded.save(tmp_path / "second")  # e.g. radproto calibrate: the adapter as trained
    first = load_file(str(tmp_path / "first" / "adapter_model.safetensors"))
    second = load_file(str(tmp_path / "second" / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

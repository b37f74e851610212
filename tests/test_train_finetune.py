"""radproto train on a tiny random Llama: calibration, resume, early stopping, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_support import small_catalog, tiny_config, write_small_corpus, write_tiny_base

from radproto.model.errors import ConfigError
from radproto.training.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE
from radproto.training.config import apply_overrides, load_config, load_preset
from radproto.training.data import epoch_batches
from radproto.training.finetune import train
from radproto.training.stopping import TrainingInterrupted
from radproto.training.trainer import Trainer, learning_rate


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("train")
    catalog = small_catalog()
    return {"catalog": catalog, "base": write_tiny_base(root / "base"),
            "corpus": write_small_corpus(root / "corpus", catalog)}


def _state(out: Path) -> dict:
    return torch.load(out / CHECKPOINT_DIR / CHECKPOINT_FILE, weights_only=False)


def test_calibration_is_fitted_and_stored(assets: dict, tmp_path: Path) -> None:
    from radproto.model.classifier import ProtocolClassifier, fit_temperature
    from radproto.training.data import load_training_data, subsample
    from radproto.training.orderfile import read_orders

    config = tiny_config(assets["base"], assets["corpus"], tmp_path / "model", max_steps=4)
    result = train(config, assets["catalog"], progress=False)
    record = json.loads((tmp_path / "model" / "radproto_model.json").read_text())
    assert record["temperature"] == pytest.approx(result.temperature)
    assert record["temperature"] != 1.0
    assert record["metadata"]["train"]["calibration"]["fitted_on"] == "12 validation orders"
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "model" / "protocol_head.safetensors").is_file()
    assert (tmp_path / "model" / "validation_report" / "metrics.json").is_file()

    # The stored temperature is the NLL optimum on the same validation subset, re-scored
    # with the saved model.
    _, valid = load_training_data(config, assets["catalog"])
    rows = subsample(valid, config.val_size, config.seed)
    assert len(read_orders(assets["corpus"] / "validation.jsonl")) > len(rows)
    loaded = ProtocolClassifier.load(tmp_path / "model")
    assert loaded.temperature == pytest.approx(result.temperature)
    log_probs = loaded.catalog_log_probs(rows)
    labels = np.array([assets["catalog"].names.index(r["label"]) for r in rows])
    assert fit_temperature(log_probs, labels) == pytest.approx(record["temperature"], rel=1e-4)


def test_resume_ends_in_the_same_state_as_an_uninterrupted_run(assets: dict,
                                                               tmp_path: Path) -> None:
    # Dropout on, so the RNG state is part of what must be restored.
    common = dict(max_steps=7, eval_interval=2, lora_dropout=0.2, calibrate=False)
    full = tiny_config(assets["base"], assets["corpus"], tmp_path / "full", **common)
    train(full, assets["catalog"], progress=False)

    split = tiny_config(assets["base"], assets["corpus"], tmp_path / "split", **common)

    def interrupt(step: int, trainer: Trainer) -> None:
        if step == 3:  # between two checkpoints: the stop itself must checkpoint
            trainer.request_stop()

    with pytest.raises(TrainingInterrupted):
        train(split, assets["catalog"], progress=False, on_step=interrupt)
    assert _state(tmp_path / "split")["step"] == 3
    result = train(split, assets["catalog"], resume=True, progress=False)
    assert result.steps == 7

    a, b = _state(tmp_path / "full"), _state(tmp_path / "split")
    assert (a["step"], a["epoch"], a["position"]) == (b["step"], b["epoch"], b["position"])
    assert a["weights"].keys() == b["weights"].keys()
    assert any(n.startswith("head.") for n in a["weights"])  # LoRA and the head
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name
    assert a["best_weights"].keys() == b["best_weights"].keys()
    for name in a["best_weights"]:
        assert torch.equal(a["best_weights"][name], b["best_weights"][name]), name
    assert a["best_val"] == b["best_val"]
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key]["exp_avg"], sb[key]["exp_avg"])
        assert torch.equal(sa[key]["exp_avg_sq"], sb[key]["exp_avg_sq"])
    assert a["config"] == {**b["config"], "out_dir": a["config"]["out_dir"]}


def test_early_stopping_stops_and_keeps_the_best_weights(assets: dict, tmp_path: Path) -> None:
    # A min_delta no step can beat: every evaluation after the first counts as "no gain".
    config = tiny_config(assets["base"], assets["corpus"], tmp_path / "m", max_steps=50,
                         eval_interval=2, patience=2, min_delta=100.0, calibrate=False)
    result = train(config, assets["catalog"], progress=False)
    assert result.stopped == "early_stopping"
    assert result.steps == 4  # evaluations at 0 (best), 2 and 4 (no gain x2)
    state = _state(tmp_path / "m")
    assert state["best_step"] == 0 and state["bad_evals"] == 2
    # The saved adapter holds the best (step-0) weights: LoRA B starts at zero.
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "m" / "adapter_model.safetensors")
    b_weights = [v for k, v in saved.items() if "lora_B" in k]
    assert b_weights and all(torch.count_nonzero(v) == 0 for v in b_weights)
    # and the saved head is the step-0 head: rows from the names, no bias
    from radproto.model.classifier import load_base_model
    from radproto.model.head import name_rows
    from radproto.training.model_setup import model_config_for

    head = load_file(tmp_path / "m" / "protocol_head.safetensors")
    base, tokenizer = load_base_model(model_config_for(config), "cpu")
    torch.testing.assert_close(head["weight"], name_rows(base, tokenizer,
                                                         assets["catalog"].names))
    assert torch.count_nonzero(head["bias"]) == 0


def test_a_wall_budget_spent_on_calibration_leaves_training_one_step(
        assets: dict, tmp_path: Path) -> None:
    config = tiny_config(assets["base"], assets["corpus"], tmp_path / "m", max_steps=50,
                         calib_size=4, wall_budget_minutes=0.001)
    result = train(config, assets["catalog"], progress=False)
    assert result.stopped == "time_budget" and result.steps == 1
    record = json.loads((tmp_path / "m" / "radproto_model.json").read_text())
    assert record["metadata"]["train"]["budget_seconds"] < 0.1  # still calibrated and saved


def test_a_generous_wall_budget_changes_nothing(assets: dict, tmp_path: Path) -> None:
    config = tiny_config(assets["base"], assets["corpus"], tmp_path / "m", max_steps=4,
                         calib_size=4, wall_budget_minutes=60)
    result = train(config, assets["catalog"], progress=False)
    assert result.stopped == "max_steps" and result.steps == 4


def test_patience_counts_only_evaluations_without_gain(assets: dict, tmp_path: Path) -> None:
    """With patience 1 the run goes on while every evaluation beats the best so far and
    stops at the first that does not (whether the tiny model learns is not the point)."""
    config = tiny_config(assets["base"], assets["corpus"], tmp_path / "m", max_steps=40,
                         eval_interval=10, patience=1, min_delta=0.0, learning_rate=1e-3,
                         lr_schedule="constant", batch_size=16, max_length=64,
                         val_size=24, calibrate=False)
    result = train(config, assets["catalog"], progress=False)
    history = _state(tmp_path / "m")["history"]
    best, first_miss = history[0]["val_loss"], None
    for entry in history[1:]:
        if entry["val_loss"] >= best:
            first_miss = entry["step"]
            break
        best = entry["val_loss"]
    if first_miss is None:
        assert (result.stopped, result.steps) == ("max_steps", 40)
        assert result.best_val_loss < history[0]["val_loss"]
    else:
        assert (result.stopped, result.steps) == ("early_stopping", first_miss)
    assert result.best_val_loss == pytest.approx(best)


def test_lora_on_top_layers_only_freezes_the_rest(assets: dict, tmp_path: Path) -> None:
    from radproto.model.classifier import add_lora, load_base_model
    from radproto.training.model_setup import model_config_for

    config = tiny_config(assets["base"], assets["corpus"], tmp_path / "m", lora_layers=1)
    model, _ = load_base_model(model_config_for(config), "cpu")
    model = add_lora(model, model_config_for(config), top_layers=config.lora_layers)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n for n in trainable)


def test_packed_training_follows_the_padded_run(assets: dict, tmp_path: Path) -> None:
    """Packing changes the layout, not the run: same examples per step, same losses, same
    LoRA and head weights (float32 on CPU), and the saved model scores as the service
    would."""
    runs = {}
    for packing in ("off", "on"):
        out = tmp_path / packing
        config = tiny_config(assets["base"], assets["corpus"], out, max_steps=4,
                             eval_interval=1, packing=packing, lora_dropout=0.0)
        result = train(config, assets["catalog"], progress=False)
        runs[packing] = (result, _state(out))
    (padded, padded_state), (packed, packed_state) = runs["off"], runs["on"]
    assert padded.throughput["packing"] is False and packed.throughput["packing"] is True
    assert packed.throughput["tokens"] == padded.throughput["tokens"] > 0
    losses = [h["val_loss"] for h in padded_state["history"]]
    assert len(losses) == 5 and len(set(losses)) == 5  # every step changed the model
    assert [h["val_loss"] for h in packed_state["history"]] == pytest.approx(losses, rel=1e-4)
    assert packed_state["weights"].keys() == padded_state["weights"].keys()
    # Adam moves a weight by about the learning rate (5e-3) per step whatever its gradient's
    # size, so a near-zero gradient summed in another order can move it slightly differently:
    # allow 2% of one step (1e-4); a wrong layout moves weights by whole steps. (1e-5 failed
    # by 1.3e-5 on one element of 256 on an AVX2-only CPU.)
    for name, tensor in padded_state["weights"].items():
        torch.testing.assert_close(packed_state["weights"][name], tensor, rtol=1e-3, atol=1e-4)
    assert packed.temperature == pytest.approx(padded.temperature, rel=1e-3)
    record = json.loads((tmp_path / "on" / "radproto_model.json").read_text())
    assert record["metadata"]["train"]["throughput"]["packing"] is True


def test_auto_precision_uses_bf16_only_where_the_cpu_has_it() -> None:
    from radproto.training.model_setup import cpu_has_native_bf16, resolve_precision

    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    if cpuinfo.is_file():
        assert cpu_has_native_bf16() == native
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("fp32", "cuda:0") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_every_shipped_preset_loads() -> None:
    from radproto.training.config import preset_names

    assert {"default", "tiny-test", "gpu-7b"} <= set(preset_names())
    configs = {name: load_preset(name) for name in preset_names()}
    gpu = configs["gpu-7b"]
    assert (gpu.packing, gpu.quantization, gpu.batch_size) == ("auto", "auto", 32)


def test_schedule_warms_up_then_decays() -> None:
    config = load_preset("default").replace(warmup_steps=10, learning_rate=1e-3,
                                                min_lr_ratio=0.1)
    assert learning_rate(0.0, 0, config) < learning_rate(0.0, 9, config) < 1e-3
    assert learning_rate(0.0, 10, config) == pytest.approx(1e-3)
    assert learning_rate(1.0, 500, config) == pytest.approx(1e-4)
    assert learning_rate(0.5, 250, config) == pytest.approx(1e-4 + 0.9e-3 * 0.5)


def test_epoch_batches_cover_every_example_once_and_are_seeded() -> None:
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10]
    batches = epoch_batches(lengths, 3, seed=1, epoch=0, group_by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert batches == epoch_batches(lengths, 3, seed=1, epoch=0, group_by_length=True)
    assert batches != epoch_batches(lengths, 3, seed=1, epoch=1, group_by_length=True)


def test_config_file_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("lora_r: 8\nbatch_size: 16\nlearnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 3, "learnig_rate")
    path.write_text("lora_r: 8\n\nbatch_size: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.line, err.value.field) == (3, "batch_size")
    path.write_text("precision: fp8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.line, err.value.field) == (1, "precision")
    path.write_text("epochs: 2\nlora_targets: [q_proj, v_proj]\n")
    config = load_config(path)
    assert config.epochs == 2.0 and config.lora_targets == ["q_proj", "v_proj"]


def test_set_overrides_are_typed_and_checked() -> None:
    config = apply_overrides(load_preset("default"),
                             ["learning_rate=3e-4", "group_by_length=false", "lora_layers=4"])
    assert (config.learning_rate, config.group_by_length, config.lora_layers) == \
        (3e-4, False, 4)
    # YAML reads on/off as booleans; the auto|on|off fields take them as written
    config = apply_overrides(config, ["packing=on", "gradient_checkpointing=off"])
    assert (config.packing, config.gradient_checkpointing) == ("on", "off")
    with pytest.raises(ConfigError, match=r"precision.*not 'on'"):
        apply_overrides(config, ["precision=on"])
    with pytest.raises(ConfigError, match="unknown field"):
        apply_overrides(config, ["no_such_field=1"])
    with pytest.raises(ConfigError, match="batch_size"):
        apply_overrides(config, ["batch_size=0"])


def test_a_run_can_start_from_a_trained_model(assets: dict, tmp_path: Path) -> None:
    """start_from: the trained adapter and head, re-keyed to this run's catalog; a model
    built otherwise is refused, naming the field."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from radproto.model.catalog import Catalog, Protocol
    from radproto.model.head import HEAD_FILE

    first = tiny_config(assets["base"], assets["corpus"], tmp_path / "first", max_steps=3)
    train(first, assets["catalog"], progress=False)
    site = Catalog([*assets["catalog"].protocols,
                    Protocol(name="MRI Site Special WO Contrast", modality="MR",
                             body_region="head", contrast="none")])
    second = tiny_config(assets["base"], assets["corpus"], tmp_path / "second", max_steps=1,
                         start_from=str(tmp_path / "first"))
    trainer = Trainer(second, site, progress=False)
    trainer.setup()
    saved = load_file(str(tmp_path / "first" / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(trainer.model)
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k].cpu()) for k in saved)
    rows = load_file(str(tmp_path / "first" / HEAD_FILE))["weight"]
    names = assets["catalog"].names
    assert torch.equal(trainer.head.weight[: len(names)].detach().cpu(), rows)
    assert trainer.head.names[-1] == "MRI Site Special WO Contrast"  # a row from its name
    assert not torch.equal(trainer.head.weight[-1], torch.zeros_like(trainer.head.weight[-1]))

    for change in ({"lora_r": 8}, {"lora_layers": 1}):
        other = tiny_config(assets["base"], assets["corpus"], tmp_path / "other",
                            start_from=str(tmp_path / "first"), **change)
        with pytest.raises(ConfigError) as refused:
            Trainer(other, assets["catalog"], progress=False).setup()
        assert refused.value.field == "start_from"


def test_the_default_preset_builds_the_shipped_models_adapter() -> None:
    """`radproto train --preset default --set start_from=default` fine-tunes the shipped
    model: the preset must build the adapter the shipped model was trained with, or
    start_from refuses it (above)."""
    from radproto.model.sources import shipped_model_dir

    shipped = json.loads((shipped_model_dir() / "train_config.json").read_text())
    preset = load_preset("default")
    for key in ("base_model", "lora_r", "lora_alpha", "lora_layers", "lora_targets",
                "max_length"):
        assert getattr(preset, key) == shipped[key], key
    adapter = json.loads((shipped_model_dir() / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (preset.lora_r, preset.lora_alpha)


def test_embeddings_looked_up_on_the_host_train_like_the_device_table() -> None:
    """embeddings_on_host's lookup (rows gathered where the table lives, then moved to the
    ids' device) gives the same loss and LoRA gradients through gradient checkpointing; on
    CPU there is nothing to move, so the helper leaves the model alone."""
    import types

    from test_train_support import random_prompts, tiny_llama, with_lora

    from radproto.model.head import new_head
    from radproto.training import model_setup

    catalog = small_catalog()
    results = []
    for on_host in (False, True):
        model, tokenizer = tiny_llama()
        model = with_lora(model)
        model.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        assert model_setup.embeddings_on_host(model) == 0.0  # not on CUDA: stays
        if on_host:
            embeddings = model.get_input_embeddings()
            embeddings.forward = types.MethodType(model_setup._host_lookup_forward, embeddings)
        head = new_head(model, tokenizer, catalog.names)
        prompts = random_prompts(3, 4, vocab=len(tokenizer))
        width = max(map(len, prompts))
        ids = torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in prompts])
        lengths = torch.tensor([len(p) for p in prompts])
        loss, _ = model_setup.head_loss_module(model, head)(ids, torch.arange(4), lengths)
        loss.backward()
        grads = [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]
        assert grads and all(g.abs().sum() > 0 for g in grads)
        results.append((loss.item(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_validation_pass_leaves_4bit_training_gradients_alone(tmp_path: Path) -> None:
    """On a CPU with AVX-512 BF16, bitsandbytes repacks 4-bit weights for its inference kernel
    at the first forward in eval mode without gradients (a validation pass), and that kernel
    has no backward. keep_4bit_layout (build_model calls it) stops the repacking, so the
    LoRA gradients after a validation pass are those of a model that never validated."""
    from test_train_support import with_lora

    from radproto.model.loading import ModelConfig, load_base_model
    from radproto.training.model_setup import keep_4bit_layout

    base = write_tiny_base(tmp_path / "base")

    def lora_grads(validate_first: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model, _ = load_base_model(ModelConfig(base_model=str(base), quantization="nf4",
                                               compute_dtype="float32"), "cpu")
        assert keep_4bit_layout(model) > 0
        model = with_lora(model)
        ids = torch.randint(3, 200, (2, 12))
        if validate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
            states = [m.weight.quant_state for m in model.modules()
                      if getattr(getattr(m, "weight", None), "quant_state", None) is not None]
            assert states and not any(getattr(s, "packing_format_for_cpu", False)
                                      for s in states)
        model.train()
        model(input_ids=ids).logits.float().pow(2).mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    fresh, validated = lora_grads(False), lora_grads(True)
    assert fresh.keys() == validated.keys() and fresh
    for name, grad in fresh.items():
        torch.testing.assert_close(validated[name], grad)

"""Training data: the train and validation rows of a corpus or order file, and batches.

Rows are order-file rows (training/orderfile.py) with labels resolved to catalog names; an
example is a row's prompt token ids and its protocol's index in the catalog.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radproto.model.catalog import Catalog
from radproto.model.encoding import batch_prompt_token_ids
from radproto.model.errors import ConfigError
from radproto.training.config import TrainConfig

log = logging.getLogger(__name__)

_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev")}
_ORDER_SUFFIXES = (".jsonl", ".parquet", ".csv", ".ndjson", ".json")
PROMPT_FIELDS = ("ordered_exam", "history", "diagnosis", "notes")


def split_file(directory: Path, split: str) -> Path | None:
    for stem in _SPLIT_NAMES[split]:
        for suffix in _ORDER_SUFFIXES:
            candidate = directory / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _stable_bucket(row: dict[str, Any], seed: int) -> float:
    key = row.get("id") or json.dumps([row.get(k, "") for k in sorted(row) if k != "label"],
                                      sort_keys=True, default=str)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_training_data(config: TrainConfig, catalog: Catalog
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, validation rows), labels resolved to catalog names.

    A corpus directory gives its train and validation splits; an order file (a site's
    history) is split by a stable hash of each row into train and val_fraction validation.
    """
    from radproto.training.orderfile import read_orders

    if not config.data:
        raise ConfigError("no training data: give --data or set 'data' in the config",
                          field="data")
    train: list[dict[str, Any]] = []
    valid: list[dict[str, Any]] = []
    for item in config.data:
        path = Path(item)
        if path.is_dir():
            train_file = split_file(path, "train")
            if train_file is None:
                raise ConfigError(f"'{path}' holds no train.jsonl/.parquet/.csv", field="data")
            train += read_orders(train_file, require_label=True)
            valid_file = split_file(path, "validation")
            if valid_file is not None:
                valid += read_orders(valid_file, require_label=True)
            else:
                log.warning("%s has no validation split; holding out part of train", path)
                rows, train = train, []
                for row in rows:
                    (valid if _stable_bucket(row, config.seed) < config.val_fraction
                     else train).append(row)
        elif path.is_file():
            for row in read_orders(path, require_label=True):
                (valid if _stable_bucket(row, config.seed) < config.val_fraction
                 else train).append(row)
        else:
            raise ConfigError(f"no such corpus directory or order file: '{path}'", field="data")
    train, unknown_train = _resolve_labels(train, catalog)
    valid, unknown_valid = _resolve_labels(valid, catalog)
    if unknown_train or unknown_valid:
        log.warning("skipped %d rows whose label is not in the catalog",
                    unknown_train + unknown_valid)
    if not train:
        raise ConfigError("no training rows with a catalog label", field="data")
    if not valid:
        raise ConfigError("no validation rows with a catalog label", field="data")
    return train, valid


def _resolve_labels(rows: list[dict[str, Any]], catalog: Catalog
                    ) -> tuple[list[dict[str, Any]], int]:
    kept, unknown = [], 0
    for row in rows:
        name = catalog.resolve(str(row.get("label", "")))
        if name is None:
            unknown += 1
            continue
        kept.append({**row, "label": name})
    return kept, unknown


def subsample(rows: list[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """A fixed random subset (the whole list when size is 0 or larger than it)."""
    if size <= 0 or size >= len(rows):
        return list(rows)
    picked = sorted(random.Random(f"val-{seed}").sample(range(len(rows)), size))
    return [rows[i] for i in picked]


def epoch_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                  group_by_length: bool) -> list[list[int]]:
    """The micro-batches of one epoch: a seeded shuffle, then (optionally) examples of
    similar length grouped inside windows of 64 batches, the batch order shuffled again."""
    rng = random.Random(f"order-{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 64
        grouped: list[int] = []
        for start in range(0, len(order), window):
            grouped += sorted(order[start:start + window], key=lambda i: lengths[i])
        order = grouped
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def prompt_fields(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The four fields the prompt reads, of each order-file row."""
    return [{k: r.get(k, "") for k in PROMPT_FIELDS} for r in rows]


def encode_rows(tokenizer: Any, rows: Sequence[dict[str, Any]], catalog: Catalog,
                max_length: int) -> list[dict[str, Any]]:
    """Training examples: the prompt's token ids and the label's index in the catalog."""
    index = {name: i for i, name in enumerate(catalog.names)}
    prompts = batch_prompt_token_ids(tokenizer, rows, max_length)
    return [{"input_ids": ids, "label": index[row["label"]]}
            for ids, row in zip(prompts, rows, strict=True)]

"""docs/radproto.example.yaml lists every service setting, so it cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from radproto.adapter.settings import ServiceSettings, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "radproto.example.yaml"


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= _keys(kind, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _example_keys(data: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in data.items():
        if isinstance(value, dict) and name in ("fhir", "security"):
            keys |= _example_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_the_example_lists_every_setting_and_no_other():
    example = _example_keys(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    settings = _keys(ServiceSettings)
    assert settings - example == set(), "settings missing from docs/radproto.example.yaml"
    assert example - settings == set(), "docs/radproto.example.yaml names unknown settings"


def test_the_example_values_are_the_defaults(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("RADPROTO_"):
            monkeypatch.delenv(name)
    assert load_settings(EXAMPLE) == load_settings()

"""Shared fixtures: stores on SQLite and on the real PostgreSQL, test classifiers, HL7 samples."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from radproto.model.catalog import Catalog, default_catalog
from radproto.model.order import Order
from radproto.model.prompt import PROMPT_VERSION
from radproto.model.suggestion import ProtocolScore, Suggestion

#: ../shared beside the checkout (CI lays a copy there): the third-party fixtures live in it.
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    # Tests iterate over the fixture files; without them they would pass on nothing.
    if not (SHARED_DIR / "fixtures" / "third_party" / "hl7").is_dir():
        raise pytest.UsageError(f"{SHARED_DIR}/fixtures/third_party is missing: the tests read "
                                "the shared fixtures from ../shared beside the checkout")

REPO = Path(__file__).resolve().parents[1]
HL7_FIXTURES = REPO / ".." / "shared" / "fixtures" / "third_party" / "hl7"
PG_BASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


# ---------------------------------------------------------------------------- stores


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'radproto.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'radproto.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str):
    from radproto.adapter.store import open_store

    s = open_store(store_url)
    yield s
    s.close()


# ---------------------------------------------------------------------------- classifiers


class KeywordClassifier:
    """A deterministic test double of the model (NOT of the database): it implements the
    pipeline's Classifier protocol by matching catalog words against the ordered exam, so
    adapter tests that push thousands of messages do not pay for a language model."""

    model_version = "keyword-test-1"

    def __init__(self, catalog: Catalog | None = None, *, delay_s: float = 0.0) -> None:
        self.catalog = catalog or default_catalog()
        self.delay_s = delay_s
        self.calls = 0

    def score_orders(self, orders: Sequence[Order | dict]) -> list[Suggestion]:
        import time

        if self.delay_s:
            time.sleep(self.delay_s)
        self.calls += 1
        return [self._one(o) for o in orders]

    def _one(self, order: Order | dict) -> Suggestion:
        fields = order.prompt_fields() if isinstance(order, Order) else dict(order)
        words = set(re.findall(r"[a-z]+", " ".join(fields.values()).lower()))
        raw = []
        for protocol in self.catalog.protocols:
            name_words = set(re.findall(r"[a-z]+", protocol.name.lower()))
            raw.append(1.0 + 4.0 * len(words & name_words))
        total = sum(raw)
        scores = sorted((ProtocolScore(protocol=p.name, probability=r / total)
                         for p, r in zip(self.catalog.protocols, raw, strict=True)),
                        key=lambda s: -s.probability)
        return Suggestion(scores=tuple(scores), protocol=scores[0].protocol,
                          confidence=scores[0].probability, model_version=self.model_version,
                          catalog_version=self.catalog.version, prompt_version=PROMPT_VERSION,
                          raw_message_id=order.raw_message_id if isinstance(order, Order) else "")


@pytest.fixture
def keyword_classifier() -> KeywordClassifier:
    return KeywordClassifier()


@pytest.fixture(scope="session")
def tiny_classifier():
    """A real ProtocolClassifier on a tiny random Llama (untrained: scores are meaningless,
    the plumbing is real)."""
    from test_train_support import tiny_llama

    from radproto.model.classifier import ModelConfig, ProtocolClassifier

    model, tokenizer = tiny_llama(hidden=32, layers=1)
    model.eval()
    return ProtocolClassifier(model, tokenizer, default_catalog(),
                              config=ModelConfig(quantization="none", max_length=768),
                              model_version="tiny-random")


# ---------------------------------------------------------------------------- HL7 samples


def load_hl7_fixture(path: Path) -> bytes:
    """A third-party sample as it would be on the wire: segments CR-separated, and file 06's
    Markdown-escaped MSH-2 ("^\\~\\&") un-escaped (see SOURCE.txt)."""
    data = path.read_bytes()
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if data.startswith(b"MSH|^\\~\\&"):
        data = b"MSH|^~\\&" + data[len(b"MSH|^\\~\\&"):]
    return b"\r".join(seg for seg in data.split(b"\r") if seg.strip()) + b"\r"


def hl7_fixture_files() -> list[Path]:
    return sorted(HL7_FIXTURES.glob("*.hl7"))


def orm_message(control_id: str, *, placer: str = "P1", action: str = "NW",
                exam: str = "CT HEAD WITHOUT CONTRAST", reason: str = "headache",
                version: str = "2.3.1", sender: str = "RIS", facility: str = "HOSP",
                accept_ack: str = "", app_ack: str = "") -> bytes:
    """A small synthetic ORM^O01 (no real patient: the name and MRN are invented)."""
    segments = [
        f"MSH|^~\\&|{sender}|{facility}|RADPROTO|RAD|20260101120000||ORM^O01|{control_id}|P|"
        f"{version}|||{accept_ack}|{app_ack}",
        "PID|1||MRN0001^^^HOSP^MR||TEST^PATIENT||19800101|F",
        f"ORC|{action}|{placer}^RIS||||||||||",
        "|".join(["OBR", "1", f"{placer}^RIS", "", f"X1^{exam}^L", *[""] * 26, reason]),
    ]
    return ("\r".join(segments) + "\r").encode()


# -- the embedded tokenizer and the reference catalog (classifier tests) ---------------------
REFERENCE_CATALOG = SHARED_DIR / "reference" / "protocol_catalog.csv"
CACHE_DIR = Path(os.environ.get("RADPROTO_CACHE_DIR") or Path.home() / ".cache" / "radproto")


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded model's tokenizer, pad token distinct from EOS."""
    from radproto.model.loading import embedded_base_dir, ensure_pad_token, load_tokenizer

    tok = load_tokenizer(embedded_base_dir(CACHE_DIR))
    ensure_pad_token(tok)
    return tok


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """The 58-protocol reference catalog (the default catalog where it is absent)."""
    from radproto.model.catalog import load_catalog

    if REFERENCE_CATALOG.is_file():
        return load_catalog(REFERENCE_CATALOG, mode="replace")
    return load_catalog()

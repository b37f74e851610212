"""The protocol catalog: the only source of protocol names and codes.

The default catalog ships inside the package (`default_catalog.csv`). A site replaces or
extends it with its own CSV or YAML file. Loading validates every row and raises a
`CatalogError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from radproto.model.errors import CatalogError

MODALITIES = frozenset({"CT", "MR", "US", "NM", "PET", "XR", "MG", "RF", "IR", "DXA"})
CONTRASTS = frozenset(
    {"none", "with", "without", "with and without", "intra-articular", "radiotracer", "oral"}
)
#: Code systems a protocol may carry, with the FHIR system URI each is written back with.
CODE_SYSTEMS: dict[str, str] = {
    "local": "urn:radproto:protocol",
    "loinc": "http://loinc.org",
    "radlex_rpid": "http://www.radlex.org",
    "cpt": "http://www.ama-assn.org/go/cpt",
}
_CODE_PATTERNS = {
    "local": re.compile(r"^[A-Za-z0-9._-]{1,64}$"),
    "loinc": re.compile(r"^\d{1,7}-\d$"),
    "radlex_rpid": re.compile(r"^RPID\d{1,6}$"),
    "cpt": re.compile(r"^\d{4}[0-9FTU]$"),
}
_LIST_SEPARATOR = ";"
CatalogMode = Literal["extend", "replace"]
DEFAULT_CATALOG_FILE = "default_catalog.csv"


@dataclass(frozen=True)
class Protocol:
    """One imaging protocol a radiologist can assign."""

    name: str
    modality: str
    body_region: str
    contrast: str
    codes: Mapping[str, str] = field(default_factory=dict)  # system key -> code
    aliases: tuple[str, ...] = ()
    indications: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["codes"] = dict(sorted(self.codes.items()))
        data["aliases"] = list(self.aliases)
        data["indications"] = list(self.indications)
        return data


class Catalog:
    """An ordered, validated set of protocols with a content-hash version."""

    def __init__(self, protocols: Iterable[Protocol], *, source: str = "") -> None:
        self.protocols: tuple[Protocol, ...] = tuple(protocols)
        self.source = source
        self._by_key: dict[str, Protocol] = {}
        for protocol in self.protocols:
            for key in (protocol.name, *protocol.aliases):
                folded = key.casefold()
                if folded in self._by_key:
                    raise CatalogError(f"duplicate protocol name or alias '{key}'", path=source)
                self._by_key[folded] = protocol
        canonical = json.dumps([p.to_dict() for p in self.protocols], sort_keys=True)
        self.version = "cat-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.protocols)

    def __len__(self) -> int:
        return len(self.protocols)

    def __iter__(self) -> Iterator[Protocol]:
        return iter(self.protocols)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.casefold() in self._by_key

    def get(self, name_or_alias: str) -> Protocol | None:
        return self._by_key.get(name_or_alias.strip().casefold())

    def resolve(self, name_or_alias: str) -> str | None:
        """The canonical protocol name for a name, alias or code, or None."""
        protocol = self.get(name_or_alias)
        if protocol is not None:
            return protocol.name
        code = name_or_alias.strip()
        for p in self.protocols:
            if code and code in p.codes.values():
                return p.name
        return None

    def extended_with(self, other: Catalog) -> Catalog:
        """This catalog with `other`'s protocols added; a protocol of the same name is replaced."""
        replaced = {p.name.casefold(): p for p in other.protocols}
        merged = [replaced.pop(p.name.casefold(), p) for p in self.protocols]
        merged += [p for p in other.protocols if p.name.casefold() in replaced]
        return Catalog(merged, source=f"{self.source}+{other.source}")

    def to_json(self) -> str:
        return json.dumps(
            {"version": self.version, "protocols": [p.to_dict() for p in self.protocols]}, indent=2
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> Catalog:
        rows = json.loads(text)["protocols"]
        return cls(
            (_protocol_from_row(row, path=source, line=None) for row in rows), source=source
        )


def default_catalog() -> Catalog:
    """The catalog that ships inside the package."""
    text = resources.files("radproto.model").joinpath(DEFAULT_CATALOG_FILE).read_text("utf-8")
    return _parse_csv(text, source=f"<package>/{DEFAULT_CATALOG_FILE}")


def load_catalog(path: str | Path | None = None, *, mode: CatalogMode | None = None) -> Catalog:
    """The default catalog, or a site's file replacing or extending it.

    A YAML file may say `mode: extend` or `mode: replace` itself; a CSV file extends unless
    `mode` says otherwise.
    """
    base = default_catalog()
    if path is None:
        return base
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read the catalog: {exc.strerror}", path=str(path)) from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        site, file_mode = _parse_yaml(text, source=str(path))
    elif path.suffix.lower() == ".csv":
        site, file_mode = _parse_csv(text, source=str(path)), None
    else:
        raise CatalogError("a catalog file must end in .csv, .yaml or .yml", path=str(path))
    chosen = mode or file_mode or "extend"
    return site if chosen == "replace" else base.extended_with(site)


def _parse_csv(text: str, *, source: str) -> Catalog:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "name" not in reader.fieldnames:
        raise CatalogError("the header must include 'name'", path=source, line=1, field="name")
    protocols = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        protocol = _protocol_from_row(_csv_row(row), path=source, line=line)
        _check_unique(protocol, seen, path=source, line=line)
        protocols.append(protocol)
    if not protocols:
        raise CatalogError("the catalog holds no protocols", path=source)
    return Catalog(protocols, source=source)


def _csv_row(row: dict[str, str | None]) -> dict[str, Any]:
    data: dict[str, Any] = {k: (v or "").strip() for k, v in row.items() if k}
    codes = {key: data.pop(key) for key in list(data) if key in CODE_SYSTEMS or key == "local_code"}
    if "local_code" in codes:
        codes["local"] = codes.pop("local_code")
    data["codes"] = {k: v for k, v in codes.items() if v}
    data["aliases"] = _split(data.get("aliases", ""))
    data["indications"] = _split(data.pop("typical_indications", "") or data.get("indications", ""))
    return data


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value or "").split(_LIST_SEPARATOR) if part.strip()]


def _parse_yaml(text: str, *, source: str) -> tuple[Catalog, CatalogMode | None]:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise CatalogError.from_yaml(exc, path=source) from exc
    if not isinstance(root, yaml.MappingNode):
        raise CatalogError("the top level must be a mapping with 'protocols'", path=source, line=1)
    top = {key.value: value for key, value in root.value}
    mode = None
    if "mode" in top:
        mode = top["mode"].value
        if mode not in ("extend", "replace"):
            raise CatalogError(
                f"mode must be 'extend' or 'replace', not '{mode}'",
                path=source,
                line=top["mode"].start_mark.line + 1,
                field="mode",
            )
    items = top.get("protocols")
    if not isinstance(items, yaml.SequenceNode):
        raise CatalogError("'protocols' must be a list", path=source, line=1, field="protocols")
    protocols = []
    seen: dict[str, int] = {}
    for item in items.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            raise CatalogError("each protocol must be a mapping", path=source, line=line)
        row = yaml.safe_load(yaml.serialize(item)) or {}
        field_lines = {key.value: key.start_mark.line + 1 for key, _ in item.value}
        try:
            protocol = _protocol_from_row(row, path=source, line=line)
        except CatalogError as exc:
            raise CatalogError(
                exc.reason, path=source, line=field_lines.get(exc.field.split(".")[0], line),
                field=exc.field,
            ) from None
        _check_unique(protocol, seen, path=source, line=line)
        protocols.append(protocol)
    if not protocols:
        raise CatalogError("the catalog holds no protocols", path=source)
    return Catalog(protocols, source=source), mode  # type: ignore[return-value]


def _check_unique(protocol: Protocol, seen: dict[str, int], *, path: str, line: int) -> None:
    for key, field_name in [(protocol.name, "name")] + [(a, "aliases") for a in protocol.aliases]:
        folded = key.casefold()
        if folded in seen:
            raise CatalogError(
                f"duplicate name '{key}' (first on line {seen[folded]})",
                path=path, line=line, field=field_name,
            )
        seen[folded] = line


def _protocol_from_row(row: Mapping[str, Any], *, path: str, line: int | None) -> Protocol:
    def fail(message: str, field_name: str) -> CatalogError:
        return CatalogError(message, path=path, line=line, field=field_name)

    name = str(row.get("name") or "").strip()
    if not name:
        raise fail("a protocol needs a name", "name")
    if any(ch in name for ch in "|^~\\&\r\n"):
        raise fail(f"'{name}' holds an HL7 delimiter character", "name")
    modality = str(row.get("modality") or "").strip().upper()
    if modality not in MODALITIES:
        raise fail(
            f"unknown modality '{row.get('modality')}' (one of {', '.join(sorted(MODALITIES))})",
            "modality",
        )
    contrast = str(row.get("contrast") or "none").strip().lower()
    if contrast not in CONTRASTS:
        raise fail(f"unknown contrast '{contrast}' (one of {', '.join(sorted(CONTRASTS))})",
                   "contrast")
    raw_codes = row.get("codes") or {}
    if not isinstance(raw_codes, Mapping):
        raise fail("'codes' must map a code system to a code", "codes")
    codes: dict[str, str] = {}
    for system, code in raw_codes.items():
        field_name = f"codes.{system}"
        code = str(code).strip()
        if system not in CODE_SYSTEMS:
            raise fail(f"unknown code system '{system}' (one of {', '.join(CODE_SYSTEMS)})",
                       field_name)
        if not _CODE_PATTERNS[system].match(code) or (
            system == "loinc" and not _loinc_check_digit_ok(code)
        ):
            raise fail(f"malformed {system} code '{code}'", field_name)
        codes[system] = code
    return Protocol(
        name=name,
        modality=modality,
        body_region=str(row.get("body_region") or "").strip(),
        contrast=contrast,
        codes=codes,
        aliases=tuple(_split(row.get("aliases", []))),
        indications=tuple(_split(row.get("indications", []))),
    )


def _loinc_check_digit_ok(code: str) -> bool:
    """LOINC's mod-10 check digit (the Luhn variant LOINC documents)."""
    body, check = code.split("-")
    digits = [int(d) for d in body]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 0:
            doubled = digit * 2
            total += doubled // 10 + doubled % 10
        else:
            total += digit
    return (10 - total % 10) % 10 == int(check)

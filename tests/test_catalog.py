"""The protocol catalog: the default offers the reference protocols; site files are validated."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from radproto.model.catalog import Catalog, default_catalog, load_catalog
from radproto.model.errors import CatalogError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference" / "protocol_catalog.csv"


def test_default_catalog_offers_every_reference_protocol_with_its_codes():
    catalog = default_catalog()
    with REFERENCE.open() as f:
        reference = list(csv.DictReader(f))
    assert len(reference) == 58
    for row in reference:
        protocol = catalog.get(row["name"])
        assert protocol is not None and protocol.name == row["name"]
        assert protocol.modality == row["modality"]
        assert protocol.contrast == row["contrast"]
        assert protocol.codes.get("loinc", "") == row["loinc"]
        assert protocol.codes.get("radlex_rpid", "") == row["radlex_rpid"]


def test_version_is_a_content_hash():
    a, b = default_catalog(), default_catalog()
    assert a.version == b.version and a.version.startswith("cat-")
    changed = Catalog([*a.protocols[:-1]], source="x")
    assert changed.version != a.version


def test_resolve_by_name_alias_and_code():
    catalog = default_catalog()
    assert catalog.resolve("ct head wo contrast") == "CT Head WO Contrast"
    assert catalog.resolve("CTPA") == "CTA Chest Pulmonary Embolism"
    assert catalog.resolve("30799-1") == "CT Head WO Contrast"
    assert catalog.resolve("RPID480") == "MRI Brain W and WO Contrast"
    assert catalog.resolve("no such protocol") is None


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


HEADER = "name,modality,body_region,contrast,local_code,loinc,radlex_rpid,cpt,aliases\n"


def test_site_csv_extends_the_default(tmp_path):
    row = "CT Hip WO Contrast,CT,hip,none,H1,,,73700,CT hip\n"
    path = _write(tmp_path, "site.csv", HEADER + row)
    catalog = load_catalog(path)
    assert len(catalog) == 59
    assert catalog.get("ct hip").codes == {"local": "H1", "cpt": "73700"}
    assert catalog.version != default_catalog().version


def test_site_csv_replaces_the_default(tmp_path):
    path = _write(tmp_path, "site.csv", HEADER + "CT Hip WO Contrast,CT,hip,none,H1,,,,\n")
    assert load_catalog(path, mode="replace").names == ("CT Hip WO Contrast",)


def test_site_protocol_of_the_same_name_replaces_the_default_one(tmp_path):
    path = _write(tmp_path, "site.csv", HEADER + "CT Head WO Contrast,CT,head,none,SITE9,,,,\n")
    catalog = load_catalog(path)
    assert len(catalog) == 58
    assert catalog.get("CT Head WO Contrast").codes == {"local": "SITE9"}


@pytest.mark.parametrize(
    ("row", "line", "field", "reason"),
    [
        ("CT Head WO Contrast,CT,head,none,A1,,,,", 3, "name", "duplicate"),
        ("CT Knee,CAT,knee,none,A1,,,,", 3, "modality", "unknown modality"),
        ("CT Knee,CT,knee,none,A1,30799-2,,,", 3, "codes.loinc", "malformed loinc"),
        ("CT Knee,CT,knee,none,A1,,RP22,,", 3, "codes.radlex_rpid", "malformed radlex_rpid"),
        ("CT Knee,CT,knee,none,A1,,,7045,", 3, "codes.cpt", "malformed cpt"),
        ("CT Knee,CT,knee,sometimes,A1,,,,", 3, "contrast", "unknown contrast"),
        (",CT,knee,none,A1,,,,", 3, "name", "needs a name"),
    ],
)
def test_site_csv_errors_name_file_line_and_field(tmp_path, row, line, field, reason):
    first = "CT Head WO Contrast,CT,head,none,A0,,,,\n"
    path = _write(tmp_path, "site.csv", HEADER + first + row + "\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(path, mode="replace")
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert reason in str(err) and str(path) in str(err) and f"line {line}" in str(err)


def test_site_yaml_with_line_numbers(tmp_path):
    text = (
        "mode: replace\n"
        "protocols:\n"
        "  - name: MRI Hip WO Contrast\n"
        "    modality: MR\n"
        "    body_region: hip\n"
        "    contrast: none\n"
        "    codes: {local: MH1, cpt: '73721'}\n"
        "    aliases: [MRI hip]\n"
        "  - name: US Hip\n"
        "    modality: ultrasound\n"
    )
    path = _write(tmp_path, "site.yaml", text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert (info.value.line, info.value.field) == (10, "modality")

    good = _write(tmp_path, "good.yaml", text.replace("ultrasound", "US"))
    catalog = load_catalog(good)
    assert catalog.names == ("MRI Hip WO Contrast", "US Hip")
    assert catalog.get("MRI hip").codes == {"local": "MH1", "cpt": "73721"}


def test_yaml_bad_code_names_the_codes_line(tmp_path):
    text = (
        "protocols:\n"
        "  - name: MRI Hip WO Contrast\n"
        "    modality: MR\n"
        "    codes:\n"
        "      loinc: 'abc'\n"
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(_write(tmp_path, "c.yaml", text))
    assert info.value.field == "codes.loinc" and info.value.line == 4


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(_write(tmp_path, "c.yaml", "protocols:\n  - name: [unclosed\n"))
    assert info.value.line is not None


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(CatalogError, match="must end in"):
        load_catalog(_write(tmp_path, "c.txt", "x"))
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.csv")


def test_json_round_trip_keeps_the_version():
    catalog = default_catalog()
    again = Catalog.from_json(catalog.to_json())
    assert again.version == catalog.version and again.names == catalog.names

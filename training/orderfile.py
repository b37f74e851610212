"""The order file format: JSONL, CSV or Parquet rows of order text, optionally labelled.

Every row has the fields `ordered_exam`, `history`, `diagnosis` and `notes` (a missing or
null one reads as ""), and for training and evaluation a `label` (a catalog protocol name).
Other columns (`id`, `style`, `modifiers`, ...) are kept as they are and ignored by readers.
The format is chosen by the file's suffix. Problems raise `OrderFileError` naming the file,
the line (JSONL/CSV: the physical line; Parquet: the 1-based row) and the field.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from radproto.model.errors import OrderFileError
from radproto.model.order import ORDER_FILE_FIELDS

LABEL_FIELD = "label"
#: The text fields every row has once read: the four prompt fields and the label.
TEXT_FIELDS: tuple[str, ...] = (*ORDER_FILE_FIELDS, LABEL_FIELD)

_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
_CSV_SUFFIXES = frozenset({".csv"})
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


def read_orders(path: str | Path, *, require_label: bool = False) -> list[dict[str, Any]]:
    """The rows of an order file, each with every text field present (missing ones as "").

    With `require_label`, a row without a non-empty `label` is an error (training and
    evaluation need one); otherwise `label` reads as "" when absent.
    """
    path = Path(path)
    kind = _kind(path, for_writing=False)
    if not path.is_file():
        raise OrderFileError("no such order file", path=str(path))
    if kind == "jsonl":
        raw_rows = _read_jsonl(path)
    elif kind == "csv":
        raw_rows = _read_csv(path)
    else:
        raw_rows = _read_parquet(path)
    return [_clean_row(row, path=path, line=line, require_label=require_label)
            for line, row in raw_rows]


def write_orders(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as an order file chosen by suffix (JSONL for any unknown one); the count."""
    path = Path(path)
    rows = [dict(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = _kind(path, for_writing=True)
    columns = _columns(rows)
    if kind == "csv":
        _write_csv(path, rows, columns)
    elif kind == "parquet":
        _write_parquet(path, rows, columns)
    else:
        with path.open("w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def _kind(path: Path, *, for_writing: bool) -> str:
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix in _JSONL_SUFFIXES or for_writing:
        return "jsonl"
    raise OrderFileError(
        f"unsupported order file type '{suffix or path.name}' (use .jsonl, .csv or .parquet)",
        path=str(path),
    )


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise OrderFileError(f"not UTF-8 text ({exc.reason})", path=str(path),
                                     line=number) from None
            if not text.strip():
                continue  # a blank line (often the last) is not a row
            try:
                rows.append((number, json.loads(text)))
            except json.JSONDecodeError as exc:
                raise OrderFileError(f"not valid JSON: {exc.msg} (column {exc.colno})",
                                     path=str(path), line=number) from None
    return rows


def _read_csv(path: Path) -> list[tuple[int, Any]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # keep CRs inside cells
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise OrderFileError(f"not UTF-8 text ({exc.reason})", path=str(path)) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
        if not header:
            raise OrderFileError("the CSV file has no header row", path=str(path), line=1)
        rows = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise OrderFileError(
                    f"{len(header) + len(row[None])} cells but {len(header)} header columns",
                    path=str(path), line=reader.line_num,
                )
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise OrderFileError(f"malformed CSV: {exc}", path=str(path),
                             line=reader.line_num) from None
    return rows


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise OrderFileError(f"not a readable Parquet file: {exc}", path=str(path)) from None
    for name in TEXT_FIELDS:
        if name in table.column_names:
            kind = table.schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                    or pa.types.is_null(kind)):
                raise OrderFileError(f"column must hold text, not {kind}", path=str(path),
                                     field=name)
    return list(enumerate(table.to_pylist(), start=1))


def _clean_row(row: Any, *, path: Path, line: int, require_label: bool) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise OrderFileError(f"a row must be a JSON object, not {type(row).__name__}",
                             path=str(path), line=line)
    cleaned = dict(row)
    for name in TEXT_FIELDS:
        value = cleaned.get(name)
        if value is None:
            value = ""
        elif not isinstance(value, str):
            raise OrderFileError(f"must be text, not {type(value).__name__}", path=str(path),
                                 line=line, field=name)
        cleaned[name] = value
    if require_label and not cleaned[LABEL_FIELD].strip():
        raise OrderFileError("a label (the protocol name) is required", path=str(path),
                             line=line, field=LABEL_FIELD)
    return cleaned


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The text fields first, then every other column in first-seen order (deterministic)."""
    columns = list(TEXT_FIELDS)
    seen = set(columns)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    if not any(LABEL_FIELD in row for row in rows) and rows:
        columns.remove(LABEL_FIELD)  # unlabelled orders stay unlabelled
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)  # lists and numbers survive as JSON text


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)  # CRLF rows: a bare CR or LF inside a cell gets quoted
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def _write_parquet(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for column in columns:
        values = [row.get(column) for row in rows]
        if column in TEXT_FIELDS:
            arrays.append(pa.array([_cell(v) for v in values], type=pa.string()))
            continue
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowException, TypeError, ValueError):
            # mixed types in an extra column: keep them as JSON text rather than fail
            arrays.append(pa.array([None if v is None else _cell(v) for v in values],
                                   type=pa.string()))
    table = pa.Table.from_arrays(arrays, names=columns)
    pq.write_table(table, path)

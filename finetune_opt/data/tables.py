"""Read labelled text files (CSV, TSV, JSON, JSONL) or a Hub split into columns, keeping where each
row came from, so that every data error names the file and line (or the split and row)."""

import csv
import io
import json
from dataclasses import dataclass

from finetune_opt.errors import ConfigError
from finetune_opt.tasks.base import FORMATS, check_format

@dataclass
class Table:
    source: str      # a file path, or "<dataset> <split>"
    columns: dict    # our column name -> list of values
    rows: list       # per row: where it is, e.g. "line 12" or "row 3"

    def __len__(self):
        return len(self.rows)

    def where(self, i: int) -> str:
        return f"{self.source} {self.rows[i]}"


def read_utf8(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")  # MRPC's TSVs start with a BOM
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line} is not UTF-8 (byte 0x{raw[e.start]:02x}); "
                          f"re-save the file as UTF-8") from None


def read_table(path: str, columns: dict, names: tuple | None = None, delimiter: str | None = None,
               quoting: int = csv.QUOTE_MINIMAL) -> Table:
    """The `columns` (file column -> our name) of a file; the format follows the extension unless
    `delimiter` is given. `names`: the columns by position of a file without a header row."""
    ext = check_format(path) if delimiter is None else None
    text = read_utf8(path)
    if delimiter is None and FORMATS[ext] is None:
        records, rows = _json_records(path, text, ext)
        found = list(dict.fromkeys(k for r in records if isinstance(r, dict) for k in r))
    else:
        found, records, rows = _delimited_records(path, text, delimiter or FORMATS[ext], quoting, names)
    return _select(path, found, records, rows, columns)


def _delimited_records(path, text, delimiter, quoting, names):
    # csv's default limit (131,072 characters a field) is a parser guard, not a data rule: no field
    # can be longer than the file, and max_length truncates what the model sees.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = list(names) if names else next(reader, [])
    records, rows = [], []
    for fields in reader:
        if not fields:  # a blank line
            continue
        if len(fields) != len(header):
            raise ConfigError(f"{path} line {reader.line_num}: {len(fields)} fields, expected {len(header)} "
                              f"({', '.join(header)}); a row with a missing or extra field")
        records.append(dict(zip(header, fields)))
        rows.append(f"line {reader.line_num}")
    return header, records, rows


def _json_records(path, text, ext):
    """A JSON array of objects, or one object per line (JSONL; also accepted in .json, as datasets does)."""
    if ext == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
        return records, [f"record {i + 1}" for i in range(len(records))]
    records, rows = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} line {n}: not valid JSON ({e.msg})") from None
            rows.append(f"line {n}")
    return records, rows


def _select(source, found, records, rows, columns) -> Table:
    for column in columns:
        if column not in found:
            raise ConfigError(f"{source} has no column {column!r}; found: {', '.join(found) or 'no columns'}")
    out = {ours: [] for ours in columns.values()}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ConfigError(f"{source} {rows[i]}: not an object with columns, got {record!r:.60}")
        for column, ours in columns.items():
            value = record.get(column)
            if value is None or value == "":
                raise ConfigError(f"{source} {rows[i]}: no value in column {column!r} (a row with a missing field)")
            out[ours].append(value)
    return Table(source, out, rows)


def table_from_dataset(dataset, source: str, columns: dict) -> Table:
    """A Hub split (datasets.Dataset) as a Table; rows are numbered from 0, as datasets indexes them."""
    found = dataset.column_names
    records = dataset.select_columns([c for c in columns if c in found]).to_list()
    return _select(source, found, records, [f"row {i}" for i in range(len(records))], columns)

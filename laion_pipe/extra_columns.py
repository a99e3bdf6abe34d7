"""A URL list's other columns (img2dataset's `save_additional_columns`): how they travel with each
pair from extract to the dataset, under which names and with which types.

- Carried as one JSON object per pair. Candidates and dedup's parts hold them in one nullable
  string column, `source` (schema.CANDIDATE_SCHEMA; null for pairs found in crawl pages). Dedup
  shuffles CANDIDATE_SCHEMA rows without knowing what a list held, and lists with different
  columns mix in one run. Download expands the object into columns of its parquet and keys of
  each sample's `.json`; select copies them into the dataset's parquet and `.json`.
- Under their own names (`SAMPLE_ID`, `LICENSE`, `NSFW`, DataComp's `face_bboxes`), except a name
  one of our files already uses (`RESERVED`: the candidate, download, dataset and sample-`.json`
  columns, e.g. `similarity`, `punsafe`, `WIDTH`, `sha256`, `key`, `status`): that one is carried
  as `source_{name}` (`source_similarity` is the list's similarity, `similarity` ours). So a
  published value never overwrites a computed one; `score.published` makes a published score
  the dataset's own, on request.
- A source's ids keep their place: a list's `uid` (DataComp) is the pair's uid, and a list's
  integer `hash` (LAION's mmh3 of its URL and TEXT) is the dataset's `hash` column, instead of a
  hash recomputed from the URL and caption as this run has them.
- Types: what the list had where JSON keeps it (integers, floats, booleans, strings, nested lists
  and structs of those); timestamps, dates and decimals as their ISO / decimal text; binary as
  text (UTF-8, invalid bytes replaced). CSV, TSV and text lists have text columns. Each extract
  partition records its list's types in its manifest (`details.source_schema`); download merges them
  over the run's current extract partitions (`run_schema`), so every shard and dataset folder of
  a run has the same columns with the same types (a column missing from a list is null there).
"""
from __future__ import annotations

import base64
import datetime as _dt
import decimal
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pyarrow as pa

from .schema import CANDIDATE_SCHEMA, DATASET_SCHEMA, IMAGES_SCHEMA

PREFIX = "source_"
SAMPLE_JSON_KEYS: tuple[str, ...] = ("url", "caption", "key", "status", "width", "height", "original_width",
                                     "original_height", "sha256")
"""img2dataset's keys of a sample's `.json` (select.sample_json writes them next to the dataset row)."""

RESERVED: frozenset[str] = frozenset(CANDIDATE_SCHEMA.names) | frozenset(IMAGES_SCHEMA.names) | frozenset(
    DATASET_SCHEMA.names) | frozenset(SAMPLE_JSON_KEYS)
"""Names our files use at some stage: a list's column of such a name is carried as `source_{name}`."""

LIST_HASH = PREFIX + "hash"
"""Where a list's `hash` column travels: select makes it the dataset's `hash` when it is an integer."""

INFO_KEY = "source_schema"


def carried_names(columns: Sequence[str]) -> dict[str, str]:
    """The name each of a list's columns travels under: its own, or `source_{name}` when ours
    use it (and `source_source_{name}` if the list also has a `source_{name}`, and so on)."""
    taken = set(columns) | RESERVED
    out: dict[str, str] = {}
    for c in columns:
        name = c
        if c in RESERVED:
            name = PREFIX + c
            while name in taken or name in out.values():
                name = PREFIX + name
        out[c] = name
    return out


# --- types ------------------------------------------------------------------------------------------


def json_type(t: pa.DataType) -> pa.DataType:
    """The type a column of type `t` has once carried through JSON (see the module docstring)."""
    if pa.types.is_dictionary(t):
        return json_type(t.value_type)
    if pa.types.is_boolean(t) or pa.types.is_null(t):
        return t
    if pa.types.is_integer(t):
        return pa.uint64() if t == pa.uint64() else pa.int64()
    if pa.types.is_floating(t):
        return pa.float32() if t == pa.float32() else pa.float64()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(json_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, json_type(f.type)) for f in t])
    return pa.string()  # strings, binary, timestamps, dates, decimals, anything else: text


def json_value(v: Any) -> Any:
    """orjson's `default`: what JSON cannot hold, as text."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (_dt.date, _dt.time, _dt.timedelta)):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON")


def encode(obj: dict) -> str:
    """One pair's carried columns as the `source` JSON text (NaN becomes null)."""
    return orjson.dumps(obj, default=json_value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def value_type(v: Any) -> pa.DataType:
    """The JSON-carried type of a Python value (a JSON lines list has no schema)."""
    if v is None:
        return pa.null()
    if isinstance(v, bool):
        return pa.bool_()
    if isinstance(v, int):
        return pa.int64()
    if isinstance(v, float):
        return pa.float64()
    if isinstance(v, (list, dict)):
        try:
            return json_type(pa.array([v]).type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return pa.string()
    return pa.string()


def merge_types(types: Iterable[pa.DataType]) -> pa.DataType:
    """One type for a column seen with several: nulls give way; integers and floats make
    float64; anything else mixed is text."""
    found = [t for t in types if not pa.types.is_null(t)]
    if not found:
        return pa.null()
    first = found[0]
    if all(t == first for t in found):
        return first
    if all(pa.types.is_integer(t) for t in found):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in found):
        return pa.float64()
    return pa.string()


def merge_schemas(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """The columns of several lists, in order of first appearance, with merged types."""
    seen: dict[str, list[pa.DataType]] = {}
    for s in schemas:
        for f in s:
            seen.setdefault(f.name, []).append(f.type)
    return pa.schema([pa.field(n, merge_types(ts)) for n, ts in seen.items()])


def schema_info(schema: pa.Schema) -> str:
    """A schema as text for a manifest (`details.source_schema`)."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_info(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def run_schema(out: str) -> pa.Schema:
    """The carried columns of every current extract partition of run `out`, merged (empty when
    the run read no URL list). What download writes its extra columns with."""
    from . import runner

    return merge_schemas(
        schema_from_info(d.manifest["details"][INFO_KEY])
        for d in runner.current(out, "extract")
        if INFO_KEY in (d.manifest.get("details") or {})
    )


def published_columns(published: dict[str, str]) -> dict[str, str]:
    """`score.published` (score -> a list's column) as score -> the name that column travels
    under (a list's `similarity` is carried as `source_similarity`)."""
    return {score: carried_names([column])[column] for score, column in (published or {}).items()}


# --- expanding the JSON -----------------------------------------------------------------------------


def decode(text: str | None) -> dict:
    """A pair's carried columns ({} for a crawl pair)."""
    if not text:
        return {}
    obj = orjson.loads(text)
    return obj if isinstance(obj, dict) else {}


def _coerce(v: Any, t: pa.DataType) -> Any:
    """`v` as a value of type `t` where it can be; None where it cannot (text always can)."""
    if v is None:
        return None
    if pa.types.is_string(t):
        return v if isinstance(v, str) else encode(v)
    if pa.types.is_boolean(t):
        return v if isinstance(v, bool) else None
    if pa.types.is_integer(t):
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    if pa.types.is_floating(t):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        try:
            return float(v) if isinstance(v, str) else None
        except ValueError:
            return None
    return v


def column(values: list[Any], t: pa.DataType) -> pa.Array:
    """An array of type `t` from carried values; a value that does not fit becomes null."""
    if pa.types.is_null(t):
        return pa.nulls(len(values))
    try:
        return pa.array([_coerce(v, t) for v in values], type=t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        out = []
        for v in values:
            try:
                pa.array([_coerce(v, t)], type=t)
                out.append(_coerce(v, t))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                out.append(None)
        return pa.array(out, type=t)


def append_columns(table: pa.Table, rows: list[dict], schema: pa.Schema) -> pa.Table:
    """`table` with one column per field of `schema`, from each row's carried values (`rows[i]`
    belongs to table row i)."""
    for f in schema:
        if f.name in table.column_names:
            continue
        table = table.append_column(pa.field(f.name, f.type), column([r.get(f.name) for r in rows], f.type))
    return table


def extra_names(schema: pa.Schema, ours: Iterable[str]) -> list[str]:
    """The carried columns of a file with `schema` whose own columns are `ours`."""
    mine = set(ours)
    return [n for n in schema.names if n not in mine]

"""The dataset schema: the single source of truth about the fields that preprocessing writes and
training and scoring read back.

A schema is a YAML file parsed into the frozen dataclasses below. ``load_schema`` validates it
completely, before any Spark session exists, and every error names the file, the field (or
section) and the problem. Example (``schemas/frappe.yaml``)::

    name: frappe
    format: {type: tsv, header: true}
    fields:
      - {name: user, kind: categorical}
      - {name: item, kind: categorical}
      ...
    target:
      kind: implicit                    # every log is a positive (+1)
      negatives: {per_positive: 2, replace: item}
    split: {train: 0.7, validation: 0.2, test: 0.1}
    seed: 2017

Sections
--------
``format``  how raw logs are read (scoring parses its logs with the same section):

    type        csv | tsv | json | parquet | libfm
    header      csv/tsv: the first line of every file names the columns (default true)
    columns     csv/tsv without header: the column names, in order
    delimiter   csv/tsv: one character (default "," for csv, tab for tsv)
    quote       csv/tsv: quote character or null (default '"' for csv, none for tsv); a quote
                inside a quoted value is doubled, as in RFC 4180, and a quoted value may hold
                line breaks (a record spans at most 100 lines)
    num_features, max_features
                libfm only: the feature-id space (default: largest id + 1) and the widest line
                accepted (default: the widest line seen)
    ids         libfm only: keep (default) | remap. keep: ids are the feature ids as they are;
                remap: the ids used are numbered 0, 1, ... in increasing order, and vocabulary/
                records each one (value: the id in the file), for id spaces that are mostly unused
                (hashed ids). With keep and no num_features, preprocessing refuses an id space of
                over 2^20 ids of which fewer than a quarter are used, stating the table's size.

    libFM lines are ``label id:value id:value ...``; a line that gives an id twice is rejected
    (file, line and id). A libfm schema declares no fields and no tables, and its target is
    explicit (the first token).

    Every text format is UTF-8 (a byte-order mark is ignored). Blank lines (empty or white space
    only) are not rows, in every format. Numeric values (after their transform), labels and
    libFM values beyond float32's range (+-3.4e38) are rejected rows.

``tables``  optional side tables joined to the logs: ``{name, format, key, log_key}``, where
    ``key`` is the table's key column and ``log_key`` the log column holding it. A field with ``table: NAME``
    takes its column from that table. A key listed twice keeps its smallest row.

``fields``  one entry per field, in slot order:

    name        identifier, unique (not starting with "_")
    kind        categorical (one value) | multi_categorical (a delimited list, several features
                in one field) | numeric (a real value x on the field's single feature)
    column      source column (default: the field name); table: side table holding it
    required    an empty value rejects the row (default true); when false a missing value is
                the out-of-vocabulary id (categorical), no value (multi) or 0.0 (numeric)
    min_count   categorical/multi: values seen fewer times go to the out-of-vocabulary id
    oov         categorical/multi: reserve id 0 of the field for unknown values (default true)
    hash_buckets  categorical/multi: hash values into this many ids instead of indexing them
    delimiter, max_values, normalize
                multi_categorical: list separator, number of slots (longer lists are
                truncated), and values 1/n instead of 1
    transform, standardize
                numeric: none | log | log1p, then (x - mean) / std with training statistics

    A field of kind ``history`` is derived, not read: ``{name, kind: history, of: FIELD,
    items: FIELD, max_values: N}`` gives every row the bag of the other values of ``items`` that
    its ``of`` value has in the training split (a user's other rated movies; SVD++'s implicit
    feedback), each weighted x = 1/sqrt(n), n the row's values after the cap, pooled into one
    vector by the models. ``of`` and ``items`` name categorical fields of the schema (``of`` not
    hashed: buckets would merge users' bags). Only training rows feed bags (positives only, for an
    implicit target); a training row's bag lacks its own occurrence of its item; a row whose ``of``
    value is unknown (its out-of-vocabulary id) or has no training rows gets an empty bag. Cap: the
    ``max_values`` values first in the order of xxhash64(seed, of id, item id) (a seeded sample),
    or, with ``order_by: COLUMN`` (a number of the logs, such as a timestamp; a row without one is
    rejected), the values of the latest training rows first (ties: the seeded order).
    The field has its own ids (``items``' size, same local ids) and ``max_values`` slots. Not for
    libfm schemas; raw logs cannot be scored with it yet (score a preprocessed split).

``target``  ``{kind: explicit, column: NAME}`` (a rating) or ``{kind: implicit, negatives:
    {per_positive: N, replace: FIELD, max_tries: T}}``: every log is a positive with label +1,
    and N negatives with label -1 copy it with FIELD replaced by a value drawn uniformly from
    FIELD's vocabulary that makes no observed positive.

``split``   fractions ``{train, validation, test}`` (default 0.7 / 0.2 / 0.1, as the paper).
``seed``    seeds negative sampling and the split (``--seed`` overrides it).
``training``  hints for the trainer: ``{batch_size: N}`` (default 128, the paper's Frappe value).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from afm_dist.dataset import SPLITS, TRAIN

FORMAT_TYPES = ("csv", "tsv", "json", "parquet", "libfm")
LIBFM_IDS = ("keep", "remap")  # format.ids of a libfm schema
FIELD_KINDS = ("categorical", "multi_categorical", "numeric", "history")
HISTORY_KEYS = ("of", "items", "order_by")  # Field attributes of a history field only (left out of other fields' hash)
TARGET_KINDS = ("explicit", "implicit")
TRANSFORMS = ("none", "log", "log1p")
LIBFM_FIELD = "features"  # the single field a libFM data set is laid out as

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SchemaError(ValueError):
    """A schema that cannot be used; the message names the file, the field and the problem."""


@dataclass(frozen=True)
class InputFormat:
    type: str
    header: bool = True
    columns: tuple[str, ...] | None = None
    delimiter: str | None = None
    quote: str | None = None
    num_features: int | None = None
    max_features: int | None = None
    ids: str = "keep"  # libfm: keep | remap

    @property
    def delimited(self) -> bool:
        return self.type in ("csv", "tsv")


@dataclass(frozen=True)
class SideTable:
    name: str
    format: InputFormat
    key: str  # the table's key column
    log_key: str  # the log column that holds the key


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    column: str
    table: str | None = None
    required: bool = True
    # categorical and multi_categorical
    min_count: int = 1  # 1 keeps every value seen, as the paper's one-hot encoding
    oov: bool = True
    hash_buckets: int | None = None
    # multi_categorical
    delimiter: str | None = None
    max_values: int | None = None
    normalize: bool = False
    # numeric
    transform: str = "none"
    standardize: bool = False
    # history (derived: built from other fields, read from no column; max_values is its cap)
    of: str | None = None  # the field whose value owns the bag (user)
    items: str | None = None  # the field whose values fill it (movie)
    order_by: str | None = None  # a log column (a time): the cap keeps the latest values; None: a seeded sample

    @property
    def width(self) -> int:
        """Number of slots the field takes in ids/vals/mask."""
        return self.max_values if self.kind in ("multi_categorical", "history") else 1

    @property
    def derived(self) -> bool:
        """True if the field is built from other fields (history) rather than read from a column."""
        return self.kind == "history"

    @property
    def indexed(self) -> bool:
        """True if the field's ids come from a vocabulary built on the data."""
        return self.kind in ("categorical", "multi_categorical") and self.hash_buckets is None

    @property
    def first_id(self) -> int:
        """Local id of the field's first real value (0 is the out-of-vocabulary id if any)."""
        return 1 if self.kind != "numeric" and self.hash_buckets is None and self.oov else 0


@dataclass(frozen=True)
class Negatives:
    per_positive: int = 2  # the paper pairs every log with two negatives
    replace: str = ""
    max_tries: int = 10


@dataclass(frozen=True)
class Target:
    kind: str
    column: str | None = None
    negatives: Negatives | None = None


@dataclass(frozen=True)
class Split:
    train: float = 0.7  # 70/20/10, as the paper
    validation: float = 0.2
    test: float = 0.1


@dataclass(frozen=True)
class Training:
    """Hints the trainer reads from the data set's metadata (``afm_dist.train``)."""

    batch_size: int = 128  # the paper's Frappe batch size (MovieLens: 4096)


@dataclass(frozen=True)
class Schema:
    name: str
    format: InputFormat
    fields: tuple[Field, ...]
    target: Target
    tables: tuple[SideTable, ...] = ()
    split: Split = field(default_factory=Split)
    seed: int = 2017
    description: str = ""
    training: Training = field(default_factory=Training)

    @property
    def source_fields(self) -> tuple[Field, ...]:
        """The fields read from the logs and side tables (every field but the derived ones), in order."""
        return tuple(f for f in self.fields if not f.derived)

    @property
    def history_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == "history")

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def table(self, name: str) -> SideTable:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    def log_columns(self) -> list[str]:
        """Columns read from the logs, in first-use order: fields, history order_by columns, label,
        side-table join keys."""
        cols: list[str] = []
        for f in self.source_fields:
            if f.table is None:
                cols.append(f.column)
        cols.extend(f.order_by for f in self.history_fields if f.order_by)
        if self.target.column:
            cols.append(self.target.column)
        cols.extend(t.log_key for t in self.tables)
        return list(dict.fromkeys(cols))

    def table_columns(self, table: str) -> list[str]:
        """Columns read from a side table: its key, then the columns of its fields."""
        t = self.table(table)
        return list(dict.fromkeys([t.key] + [f.column for f in self.fields if f.table == table]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (lists, not tuples), as stored in a data set's metadata."""
        return json.loads(self.canonical_json())

    def canonical_json(self) -> str:
        plain = asdict(self)
        # A history field's keys are left out of the other fields, so schemas without one keep their hash.
        plain["fields"] = [{k: v for k, v in f.items() if not (k in HISTORY_KEYS and v is None)}
                           for f in plain["fields"]]
        return json.dumps(plain, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """sha256 of the canonical JSON of the parsed schema (formatting and comments ignored)."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def with_seed(self, seed: int) -> "Schema":
        return replace(self, seed=seed)


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def load_schema(path: str | os.PathLike) -> Schema:
    """Read and validate a schema file; raise SchemaError naming the file, field and problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SchemaError(f"{path}: cannot read the schema ({e.strerror or e})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SchemaError(f"{path}: not valid YAML ({e})") from e
    return parse_schema(data, source=str(path))


def parse_schema(data: Any, *, source: str = "<schema>") -> Schema:
    """Validate a schema given as plain data (what YAML produced)."""
    return _Parser(source).schema(data)


def schema_from_dict(d: dict[str, Any]) -> Schema:
    """Rebuild a Schema from ``Schema.to_dict()`` (as stored in a data set's metadata)."""

    def fmt(x: dict[str, Any]) -> InputFormat:
        cols = x.get("columns")
        return InputFormat(**{**x, "columns": tuple(cols) if cols is not None else None})

    t = d["target"]
    return Schema(
        name=d["name"],
        description=d.get("description", ""),
        format=fmt(d["format"]),
        fields=tuple(Field(**f) for f in d["fields"]),
        target=Target(kind=t["kind"], column=t.get("column"),
                      negatives=Negatives(**t["negatives"]) if t.get("negatives") else None),
        tables=tuple(SideTable(name=x["name"], format=fmt(x["format"]), key=x["key"], log_key=x["log_key"])
                     for x in d.get("tables", [])),
        split=Split(**d["split"]),
        seed=d["seed"],
        training=Training(**d.get("training", {})),
    )


class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, problem: str) -> SchemaError:
        return SchemaError(f"{self.source}: {where}: {problem}")

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                hint = " (YAML reads unquoted on/off/yes/no as booleans)" if isinstance(key, bool) else ""
                raise self.fail(where, f"unknown key {key!r}{hint} (expected one of: {', '.join(allowed)})")
        for key in required:
            if key not in value or value[key] is None:
                raise self.fail(where, f"missing required key {key!r}")
        return value

    def string(self, value: Any, where: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not allow_empty and value == ""):
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    def integer(self, value: Any, where: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {value!r}")
        if value < minimum:
            raise self.fail(where, f"must be at least {minimum}, got {value}")
        return value

    def char(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
            raise self.fail(where, f"expected a single character, got {value!r}")
        return value

    # -- sections ---------------------------------------------------------------------------

    def schema(self, data: Any) -> Schema:
        top = self.mapping(
            data, "schema",
            ("name", "description", "format", "tables", "fields", "target", "split", "seed", "training"),
            ("name", "format", "target"),
        )
        name = self.string(top["name"], "name")
        description = self.string(top.get("description", ""), "description", allow_empty=True)
        fmt = self.input_format(top["format"], "format", allow_libfm=True)
        tables = self.tables(top.get("tables") or [])
        if fmt.type == "libfm":
            history = [f.get("name") for f in top.get("fields") or [] if isinstance(f, dict) and f.get("kind") == "history"]
            if history:
                raise self.fail(f"field {history[0]!r}", "a history field needs categorical fields of the logs, and a "
                                                         "libfm schema has none: declare the logs' columns in a "
                                                         "csv/tsv/json/parquet schema, or drop the field")
            if top.get("fields"):
                raise self.fail("fields", "a libfm schema declares no fields: ids are kept as they are in the file")
            if tables:
                raise self.fail("tables", "a libfm schema cannot join side tables")
            fields: tuple[Field, ...] = ()
        else:
            fields = self.fields(top.get("fields"), fmt, tables)
        target = self.target(top["target"], fmt, fields)
        split = self.split(top.get("split", {}))
        seed = self.integer(top.get("seed", 2017), "seed", minimum=0)
        training = self.mapping(top.get("training", {}), "training", ("batch_size",))
        batch_size = self.integer(training.get("batch_size", Training.batch_size), "training.batch_size", minimum=1)
        self.check_columns(fmt, tables, fields, target)
        return Schema(name=name, description=description, format=fmt, fields=fields, target=target,
                      tables=tables, split=split, seed=seed, training=Training(batch_size=batch_size))

    def input_format(self, value: Any, where: str, *, allow_libfm: bool) -> InputFormat:
        d = self.mapping(value, where, ("type", "header", "columns", "delimiter", "quote",
                                        "num_features", "max_features", "ids"), ("type",))
        kind = d["type"]
        types = FORMAT_TYPES if allow_libfm else tuple(t for t in FORMAT_TYPES if t != "libfm")
        if kind not in types:
            raise self.fail(f"{where}.type", f"unknown input format {kind!r} (expected one of: {', '.join(types)})")
        delimited = kind in ("csv", "tsv")
        for key in ("header", "columns", "delimiter", "quote"):
            if key in d and not delimited:
                raise self.fail(f"{where}.{key}", f"only applies to csv and tsv input, not {kind}")
        for key in ("num_features", "max_features", "ids"):
            if key in d and kind != "libfm":
                raise self.fail(f"{where}.{key}", f"only applies to libfm input, not {kind}")
        ids = d.get("ids", "keep")
        if ids not in LIBFM_IDS:
            raise self.fail(f"{where}.ids", f"unknown value {ids!r} (expected one of: {', '.join(LIBFM_IDS)})")
        if not delimited:
            return InputFormat(
                type=kind, header=False,
                num_features=None if d.get("num_features") is None
                else self.integer(d["num_features"], f"{where}.num_features", minimum=1),
                max_features=None if d.get("max_features") is None
                else self.integer(d["max_features"], f"{where}.max_features", minimum=1),
                ids=ids,
            )
        header = self.boolean(d.get("header", True), f"{where}.header")
        delimiter = self.char(d.get("delimiter", "," if kind == "csv" else "\t"), f"{where}.delimiter")
        quote = d.get("quote", '"' if kind == "csv" else None)
        if quote is not None:
            quote = self.char(quote, f"{where}.quote")
            if quote == delimiter:
                raise self.fail(f"{where}.quote", "must differ from the delimiter")
        columns = d.get("columns")
        if header and columns is not None:
            raise self.fail(f"{where}.columns", "give columns only for files without a header (header: false)")
        if not header:
            if not isinstance(columns, list) or not columns:
                raise self.fail(f"{where}.columns", "a file without header needs the list of its column names")
            columns = tuple(self.string(c, f"{where}.columns") for c in columns)
            dup = _first_duplicate(columns)
            if dup:
                raise self.fail(f"{where}.columns", f"column {dup!r} is listed twice")
        return InputFormat(type=kind, header=header, columns=columns, delimiter=delimiter, quote=quote)

    def tables(self, value: Any) -> tuple[SideTable, ...]:
        if not isinstance(value, list):
            raise self.fail("tables", f"expected a list of tables, got {type(value).__name__}")
        out = []
        for i, t in enumerate(value):
            where = f"tables[{i}]"
            d = self.mapping(t, where, ("name", "format", "key", "log_key"), ("name", "format", "key", "log_key"))
            name = self.string(d["name"], f"{where}.name")
            if not _IDENTIFIER.match(name):
                raise self.fail(f"table {name!r}", "the name must be an identifier (letters, digits, _)")
            where = f"table {name!r}"
            out.append(SideTable(
                name=name,
                format=self.input_format(d["format"], f"{where}.format", allow_libfm=False),
                key=self.string(d["key"], f"{where}.key"),
                log_key=self.string(d["log_key"], f"{where}.log_key"),
            ))
        dup = _first_duplicate([t.name for t in out])
        if dup:
            raise self.fail(f"table {dup!r}", "declared twice")
        return tuple(out)

    def fields(self, value: Any, fmt: InputFormat, tables: tuple[SideTable, ...]) -> tuple[Field, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail("fields", "expected a non-empty list of fields")
        out: list[Field] = []
        for i, f in enumerate(value):
            out.append(self.field(f, i, {t.name for t in tables}))
        dup = _first_duplicate([f.name for f in out])
        if dup:
            raise self.fail(f"field {dup!r}", "the name is used by more than one field")
        by_name = {f.name: f for f in out}
        for f in out:
            if f.kind == "history":
                self.check_history(f, by_name)
        return tuple(out)

    def check_history(self, f: Field, by_name: dict[str, Field]) -> None:
        """``of`` and ``items`` name two different categorical fields read from the data; ``of`` not hashed."""
        where = f"field {f.name!r}"
        for key in ("of", "items"):
            name = getattr(f, key)
            other = by_name.get(name)
            if other is None:
                raise self.fail(where, f"{key}: no field named {name!r}; name a categorical field declared under "
                                       f"fields (known: {', '.join(n for n, g in by_name.items() if not g.derived)})")
            if other.kind != "categorical":
                raise self.fail(where, f"{key}: field {name!r} is {other.kind}; a history bag needs a categorical "
                                       "field (one value a row)")
        if f.of == f.items:
            raise self.fail(where, f"of and items both name {f.of!r}; a bag holds values of another field")
        if by_name[f.of].hash_buckets is not None:
            raise self.fail(where, f"of: field {f.of!r} is hashed (hash_buckets), so values sharing a bucket would "
                                   "share one bag; index it instead (drop hash_buckets)")

    def field(self, value: Any, index: int, table_names: set[str]) -> Field:
        common = ("name", "kind", "column", "table", "required")
        categorical = ("min_count", "oov", "hash_buckets")
        per_kind = {
            "categorical": common + categorical,
            "multi_categorical": common + categorical + ("delimiter", "max_values", "normalize"),
            "numeric": common + ("transform", "standardize"),
            "history": ("name", "kind") + HISTORY_KEYS + ("max_values",),
        }
        if not isinstance(value, dict) or "name" not in value:
            raise self.fail(f"fields[{index}]", "expected a mapping with a name")
        name = self.string(value["name"], f"fields[{index}].name")
        where = f"field {name!r}"
        if not _IDENTIFIER.match(name):
            raise self.fail(where, "the name must be an identifier (a letter, then letters, digits or _)")
        kind = value.get("kind")
        if kind not in FIELD_KINDS:
            raise self.fail(where, f"unknown kind {kind!r} (expected one of: {', '.join(FIELD_KINDS)})")
        allowed = per_kind[kind]
        for key in value:
            if key not in allowed:
                known = set().union(*per_kind.values())
                problem = (f"key {key!r} does not apply to a {kind} field" if key in known
                           else f"unknown key {key!r} (expected one of: {', '.join(allowed)})")
                raise self.fail(where, problem)
        if kind == "history":
            for key in ("of", "items", "max_values"):
                if key not in value:
                    raise self.fail(where, f"a history field needs of, items and max_values (missing {key})")
            order_by = value.get("order_by")
            return Field(name=name, kind=kind, column=name, oov=False,
                         of=self.string(value["of"], f"{where}.of"), items=self.string(value["items"], f"{where}.items"),
                         max_values=self.integer(value["max_values"], f"{where}.max_values", minimum=1),
                         order_by=None if order_by is None else self.string(order_by, f"{where}.order_by"))
        table = value.get("table")
        if table is not None:
            table = self.string(table, f"{where}.table")
            if table not in table_names:
                raise self.fail(where, f"table {table!r} is not declared under tables")
        f = Field(
            name=name, kind=kind,
            column=self.string(value.get("column", name), f"{where}.column"),
            table=table,
            required=self.boolean(value.get("required", True), f"{where}.required"),
        )
        if kind in ("categorical", "multi_categorical"):
            min_count = self.integer(value.get("min_count", 1), f"{where}.min_count", minimum=1)
            oov = self.boolean(value.get("oov", True), f"{where}.oov")
            buckets = value.get("hash_buckets")
            if buckets is not None:
                buckets = self.integer(buckets, f"{where}.hash_buckets", minimum=1)
                if "min_count" in value or "oov" in value:
                    raise self.fail(where, "hash_buckets replaces the vocabulary: drop min_count and oov")
            elif not oov and min_count > 1:
                raise self.fail(where, f"min_count {min_count} sends rare values to the out-of-vocabulary id; "
                                       "it needs oov: true")
            elif not oov and not f.required:
                raise self.fail(where, "a missing value of an optional field needs the out-of-vocabulary id "
                                       "(oov: true), or make the field required")
            f = replace(f, min_count=min_count, oov=oov if buckets is None else False, hash_buckets=buckets)
        if kind == "multi_categorical":
            if "delimiter" not in value or "max_values" not in value:
                raise self.fail(where, "a multi_categorical field needs delimiter and max_values")
            f = replace(
                f,
                delimiter=self.string(value["delimiter"], f"{where}.delimiter"),
                max_values=self.integer(value["max_values"], f"{where}.max_values", minimum=1),
                normalize=self.boolean(value.get("normalize", False), f"{where}.normalize"),
            )
        if kind == "numeric":
            transform = value.get("transform", "none")
            if transform not in TRANSFORMS:
                raise self.fail(where, f"unknown transform {transform!r} (expected one of: {', '.join(TRANSFORMS)})")
            f = replace(f, transform=transform,
                        standardize=self.boolean(value.get("standardize", False), f"{where}.standardize"))
        return f

    def target(self, value: Any, fmt: InputFormat, fields: tuple[Field, ...]) -> Target:
        d = self.mapping(value, "target", ("kind", "column", "negatives"), ("kind",))
        kind = d["kind"]
        if kind not in TARGET_KINDS:
            raise self.fail("target.kind", f"unknown target kind {kind!r} (expected one of: {', '.join(TARGET_KINDS)})")
        if fmt.type == "libfm":
            if kind != "explicit" or "column" in d or "negatives" in d:
                raise self.fail("target", "a libfm file carries its label as the first token of each line: "
                                          "use {kind: explicit} with no column")
            return Target(kind="explicit")
        if kind == "explicit":
            if "negatives" in d:
                raise self.fail("target.negatives", "negative sampling applies to implicit feedback only")
            column = self.string(d.get("column"), "target.column")
            for f in fields:
                if f.table is None and not f.derived and f.column == column:
                    raise self.fail(f"field {f.name!r}", f"reads column {column!r}, which is the target")
            return Target(kind="explicit", column=column)
        if "column" in d:
            raise self.fail("target.column", "implicit feedback has no label column: every log is a positive")
        n = self.mapping(d.get("negatives", {}), "target.negatives",
                         ("per_positive", "replace", "max_tries"))
        per_positive = self.integer(n.get("per_positive", 2), "target.negatives.per_positive", minimum=0)
        max_tries = self.integer(n.get("max_tries", 10), "target.negatives.max_tries", minimum=1)
        replaced = n.get("replace")
        if per_positive > 0:
            replaced = self.string(replaced, "target.negatives.replace")
            by_name = {f.name: f for f in fields}
            if replaced not in by_name:
                raise self.fail("target.negatives.replace", f"no field named {replaced!r}")
            rf = by_name[replaced]
            if rf.kind != "categorical":
                raise self.fail(f"field {replaced!r}",
                                f"negatives replace it, so it must be categorical, not {rf.kind}")
            if rf.table is not None:
                raise self.fail(f"field {replaced!r}", "negatives replace it, so it must come from the logs, "
                                                       f"not from table {rf.table!r}")
        return Target(kind="implicit", negatives=Negatives(per_positive=per_positive, replace=replaced or "",
                                                           max_tries=max_tries))

    def split(self, value: Any) -> Split:
        d = self.mapping(value, "split", SPLITS)
        fractions = {}
        for name in SPLITS:
            v = d.get(name, getattr(Split(), name))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
                raise self.fail(f"split.{name}", f"expected a fraction between 0 and 1, got {v!r}")
            fractions[name] = float(v)
        if fractions[TRAIN] == 0.0:
            raise self.fail("split.train", "the training split cannot be empty")
        total = sum(fractions.values())
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise self.fail("split", f"fractions add up to {total:g}, not 1")
        return Split(**fractions)

    def check_columns(self, fmt: InputFormat, tables: tuple[SideTable, ...], fields: tuple[Field, ...],
                      target: Target) -> None:
        """Columns named by fields, target and tables exist where the schema lists them."""
        if fmt.type == "libfm":
            return
        by_table = {t.name: t for t in tables}
        if target.kind == "implicit" and target.negatives and target.negatives.per_positive > 0:
            replaced = next(f for f in fields if f.name == target.negatives.replace)
            for t in tables:
                if t.log_key == replaced.column:
                    users = [f.name for f in fields if f.table == t.name]
                    if users:
                        raise self.fail(f"field {users[0]!r}",
                                        f"comes from table {t.name!r} joined on column {t.log_key!r}, which negative "
                                        f"sampling replaces (field {replaced.name!r}); this is not supported")
        if fmt.columns is not None:
            for f in fields:
                if f.table is None and not f.derived and f.column not in fmt.columns:
                    raise self.fail(f"field {f.name!r}", f"column {f.column!r} is not in format.columns")
            for f in fields:
                if f.order_by and f.order_by not in fmt.columns:
                    raise self.fail(f"field {f.name!r}", f"order_by: column {f.order_by!r} is not in format.columns")
            if target.column and target.column not in fmt.columns:
                raise self.fail("target.column", f"column {target.column!r} is not in format.columns")
            for t in tables:
                if t.log_key not in fmt.columns:
                    raise self.fail(f"table {t.name!r}", f"join column {t.log_key!r} is not in format.columns")
        for f in fields:
            if f.table is not None:
                cols = by_table[f.table].format.columns
                if cols is not None and f.column not in cols:
                    raise self.fail(f"field {f.name!r}", f"column {f.column!r} is not in table {f.table!r}'s columns")
        for t in tables:
            if t.format.columns is not None and t.key not in t.format.columns:
                raise self.fail(f"table {t.name!r}", f"key column {t.key!r} is not in its columns")


def _first_duplicate(items) -> str | None:
    seen = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None

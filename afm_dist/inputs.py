"""The input plan: which files a job reads and what their headers say, checked against the dataset
schema before any Spark session exists (no Spark here).

``plan`` resolves the log files and the side tables' files (directories are expanded), reads the
header of every delimited file and checks it against the schema: a missing column fails naming
the field that reads it, so that such a mistake costs seconds, not a cluster job.

Text input is UTF-8. A UTF-8 byte-order mark is ignored (here and when Spark reads the lines); a
file that starts with a UTF-16 or UTF-32 one is refused, naming it and how to convert it. A
header is the first line of the file that is not blank.

Compressed text: a file named ``.gz`` or ``.bz2`` is read decompressed, here as by Spark (whose
Hadoop codecs choose by the same extension); one named for a codec that Spark does not decompress
without native libraries (``.zst``, ``.lz4``, ``.snappy``, ...) or at all (``.xz``, ``.zip``, ...)
is refused by name before Spark starts.

Given splits (the paper's protocol with published files): ``plan(..., splits={"train": [...],
"validation": [...], "test": [...]})`` keeps which split each file is for (``Plan.splits``); the
files are read and encoded together, in one feature space, and each row stays in its file's split.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

from afm_dist.io import strip_file_scheme, unreadable_by_spark
from afm_dist.schema import InputFormat, Schema


class InputError(ValueError):
    """Input files that do not match the schema, or a bad job argument; the message says which."""


BOM = "\ufeff"  # a byte-order mark, as text
# The characters of a blank line: a line holding nothing else is not a row, in any format.
BLANK_CHARS = " \t\r\f\u000b" + BOM
# Byte-order marks of the encodings afm-dist does not read (longest first).
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
               (b"\xfe\xff", "UTF-16"))


# Compressed text that Spark's text reader decompresses by extension (Hadoop's codecs in pure Java).
_CODECS = {".gz": gzip.open, ".bz2": bz2.open}
# Names of compressed files that it does not: read as text they would be binary garbage.
_UNREADABLE_CODECS = (".zst", ".zstd", ".lz4", ".snappy", ".deflate", ".lzo", ".xz", ".lzma", ".zip", ".7z", ".z")


# ---------------------------------------------------------------------------------------------
# Planning (driver only, before Spark)


@dataclass(frozen=True)
class InputFiles:
    """Resolved input files of the logs or of one side table."""

    paths: tuple[str, ...]
    columns: tuple[str, ...] | None = None  # delimited input: the columns, in order
    header_lines: tuple[str, ...] = ()  # delimited input with header: the exact header text(s)


@dataclass(frozen=True)
class Plan:
    schema: Schema
    logs: InputFiles
    tables: Mapping[str, InputFiles] = field(default_factory=dict)
    # Given splits: split name -> its files (a subset of ``logs.paths``); empty for a random split.
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def inputs(self) -> list[str]:
        return list(self.logs.paths) + [p for t in self.tables.values() for p in t.paths]


def plan(schema: Schema, inputs: Sequence[str], tables: Mapping[str, Sequence[str]] | None = None, *,
         splits: Mapping[str, Sequence[str]] | None = None) -> Plan:
    """Check the input files against ``schema``; ``tables`` maps side-table names to files.

    ``splits`` (instead of ``inputs``, which is then empty): split name (train, validation, test)
    -> files or directories of that split; train and test are required, validation optional
    (without it, validation rows are drawn from the train files with the schema's proportions).

    Raises:
        InputError: a file missing or not matching the schema, a file given for two splits, or
            inputs and splits both (or neither) given; the message names the file or flag.
    """
    tables = dict(tables or {})
    given: dict[str, tuple[str, ...]] = {}
    if splits:
        if inputs:
            raise InputError("--input (one input split at random) and --train/--validation/--test (given splits) "
                             "exclude each other: pass one of them")
        unknown = set(splits) - {"train", "validation", "test"}
        if unknown:
            raise InputError(f"unknown split(s) {sorted(unknown)}: the splits are train, validation and test")
        for name in ("train", "test"):
            if not splits.get(name):
                raise InputError(f"given splits need --{name} files (and optionally --validation)")
        owner: dict[str, str] = {}
        for name, paths in splits.items():
            if not paths:
                continue
            given[name] = _expand(paths, f"--{name}")
            for path in given[name]:
                if path in owner:
                    raise InputError(f"{path} is given for both --{owner[path]} and --{name}: "
                                     "a file belongs to one split")
                owner[path] = name
        inputs = list(owner)
    for name in tables:
        if name not in {t.name for t in schema.tables}:
            raise InputError(f"--table {name}=...: the schema {schema.name!r} declares no table {name!r}")
    users: dict[str, str] = {}
    for f in schema.source_fields:
        if f.table is None:
            users.setdefault(f.column, f"field '{f.name}'")
    for f in schema.history_fields:
        if f.order_by:
            users.setdefault(f.order_by, f"field '{f.name}' (order_by)")
    if schema.target.column:
        users.setdefault(schema.target.column, "target")
    for t in schema.tables:
        users.setdefault(t.log_key, f"table '{t.name}' (join column)")
    logs = _resolve(schema.format, inputs, "--train/--validation/--test" if given else "--input", users)
    resolved = {}
    for t in schema.tables:
        if t.name not in tables:
            raise InputError(f"table '{t.name}': pass its file(s) with --table {t.name}=PATH")
        t_users = {t.key: f"table '{t.name}' (key)"}
        for f in schema.fields:
            if f.table == t.name:
                t_users.setdefault(f.column, f"field '{f.name}'")
        resolved[t.name] = _resolve(t.format, tables[t.name], f"--table {t.name}", t_users)
    return Plan(schema=schema, logs=logs, tables=resolved, splits=given)


def _expand(paths: Sequence[str], what: str) -> tuple[str, ...]:
    files: list[str] = []
    for raw in paths:
        p = Path(strip_file_scheme(raw)).expanduser()
        if p.is_dir():
            # As Spark lists a directory: hidden and "_" names (_SUCCESS, _temporary/, .crc side
            # files) and Hadoop's copies in progress (NAME._COPYING_) are not input.
            found = sorted(str(c.resolve()) for c in p.rglob("*")
                           if c.is_file() and not c.name.endswith("._COPYING_")
                           and not any(part.startswith((".", "_")) for part in c.relative_to(p).parts))
            if not found:
                raise InputError(f"{what} {raw}: the directory holds no input file")
            files.extend(found)
        elif p.is_file():
            files.append(str(p.resolve()))
        else:
            raise InputError(f"{what} {raw}: no such file or directory")
    if not files:
        raise InputError(f"{what}: no input given")
    for f in files:
        why = unreadable_by_spark(f)
        if why:
            raise InputError(f"{what} {why}")
    return tuple(dict.fromkeys(files))


def _open_bytes(path: str, what: str) -> BinaryIO:
    """The file's bytes as Spark reads them: decompressed when its name ends in .gz or .bz2.

    Raises:
        InputError: a compressed file of a codec Spark does not read, naming the file.
    """
    suffix = Path(path).suffix.lower()
    if suffix in _UNREADABLE_CODECS:
        raise InputError(f"{what} {path}: {suffix} files are not read (compressed input is read when it is gzip "
                         "(.gz) or bzip2 (.bz2)); decompress it, or compress it with gzip or bzip2")
    return _CODECS.get(suffix, open)(path, "rb")


def _read_start(path: str, what: str, read) -> object:
    """``read(binary file)`` on the file as Spark reads it (``_open_bytes``).

    Raises:
        InputError: a compressed file whose bytes are not of its codec (a .gz that is not gzip,
            or cut short), naming the file.
    """
    try:
        with _open_bytes(path, what) as f:
            return read(f)
    except (OSError, EOFError) as e:
        if Path(path).suffix.lower() not in _CODECS:
            raise
        raise InputError(f"{what} {path}: cannot be decompressed as its name says ({e}); "
                         "check the file (an interrupted copy?) or its name") from e


def _check_encoding(path: str, what: str) -> None:
    """Refuse a text file that starts with the byte-order mark of another encoding than UTF-8."""
    start = _read_start(path, what, lambda f: f.read(4))
    for mark, encoding in _OTHER_BOMS:
        if start.startswith(mark):
            raise InputError(f"{what} {path}: the file is {encoding} (it starts with a {encoding} byte-order mark); "
                             f"afm-dist reads UTF-8 text: convert it, e.g. iconv -f {encoding} -t UTF-8")


def _first_line(path: str, what: str) -> str | None:
    """The file's first line that is not blank, without byte-order mark and line end (\\n, \\r\\n
    and \\r all end a line, as for Spark), decompressed as Spark reads it; None when there is none."""
    def first(f: BinaryIO) -> str | None:
        for line in io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline=None):
            line = line.rstrip("\n")
            if line.startswith(BOM):
                line = line[1:]
            if line.strip(BLANK_CHARS):
                return line
        return None
    return _read_start(path, what, first)


def _split_header(line: str, fmt: InputFormat) -> list[str]:
    if fmt.quote is None:
        return next(csv.reader([line], delimiter=fmt.delimiter, quoting=csv.QUOTE_NONE))
    return next(csv.reader([line], delimiter=fmt.delimiter, quotechar=fmt.quote, doublequote=True))


def _resolve(fmt: InputFormat, paths: Sequence[str], what: str, users: Mapping[str, str]) -> InputFiles:
    files = _expand(paths, what)
    if fmt.type != "parquet":
        for path in files:
            _check_encoding(path, what)
    if not fmt.delimited:
        return InputFiles(paths=files)
    if not fmt.header:
        return InputFiles(paths=files, columns=fmt.columns)
    columns: list[str] | None = None
    lines: list[str] = []
    first_file = ""
    for path in files:
        line = _first_line(path, what)
        if line is None:
            continue  # an empty (or blank) file: no header, no rows
        cols = [c.strip() for c in _split_header(line, fmt)]
        if columns is None:
            columns, first_file = cols, path
            for col, user in users.items():
                if col not in cols:
                    raise InputError(f"{user}: column {col!r} is not in the header of {path} "
                                     f"(columns: {', '.join(cols)})")
                if cols.count(col) > 1:
                    raise InputError(f"{user}: column {col!r} appears twice in the header of {path}")
        elif cols != columns:
            raise InputError(f"{what}: {path} has columns {cols}, but {first_file} has {columns}; "
                             "all files of one input must share the header")
        if line not in lines:
            lines.append(line)
    if columns is None:
        raise InputError(f"{what}: every file is empty, so there is no header to read")
    return InputFiles(paths=files, columns=tuple(columns), header_lines=tuple(lines))


def parse_table_specs(specs: Sequence[str]) -> dict[str, list[str]]:
    """``--table NAME=PATH`` arguments (side tables of the schema) -> {name: [paths]}.

    Raises:
        InputError: a spec that is not NAME=PATH.
    """
    tables: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--table {spec!r}: expected NAME=PATH, e.g. movies=movies.csv")
        tables.setdefault(name, []).append(path)
    return tables

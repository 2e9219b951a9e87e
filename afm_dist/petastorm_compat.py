"""Petastorm 0.13.1 (its last release) on a pyarrow without the legacy dataset API and on NumPy 2.

Petastorm's readers call what pyarrow 15-16 and NumPy 2 removed (petastorm#758, #803, #806; no
fix released). ``install()`` puts a stand-in for each removed name in front of the Petastorm
modules that call it, and only where the running pyarrow or NumPy lacks that name; on the old
stack (pyarrow 14, NumPy 1) it changes nothing. It never changes pyarrow or NumPy themselves: each
stand-in is seen only through the name the Petastorm module looks up (its module-level ``pq``,
``pyarrow`` or ``np``), so other code in the process sees the real libraries.

What each shim replaces (Petastorm 0.13.1 file:line) and why:

- ``pyarrow.filesystem`` (gone in pyarrow 16): ``petastorm/utils.py:23`` imports its
  ``LocalFileSystem`` at import time (only for an ``isinstance`` at :128), and
  ``petastorm/fs_utils.py:88-89`` gives ``pyarrow.localfs`` (that module's instance) to every
  ``file://`` reader. Stand-in: ``LocalFileSystem`` below, the legacy methods Petastorm calls
  (``open``, ``exists``, ``isdir``, ``ls``, ``rm``) over ``pyarrow.fs.LocalFileSystem``, so files
  are still read by Arrow's native file, not a Python file object.
- ``pq.ParquetDataset(..., validate_schema=, metadata_nthreads=)`` with ``.pieces``, ``.partitions``,
  ``.common_metadata``, ``.fs``, ``.paths``, and ``pq.ParquetDatasetPiece`` (the legacy dataset
  API, gone in pyarrow 15): ``petastorm/reader.py:431``, ``petastorm/arrow_reader_worker.py:164,
  172, 355-358``, ``petastorm/py_dict_reader_worker.py:138``,
  ``petastorm/etl/dataset_metadata.py:107, 117, 223-288, 313-334, 350, 402``,
  ``petastorm/etl/rowgroup_indexing.py:54, 100``, ``petastorm/etl/metadata_util.py:50``,
  ``petastorm/unischema.py:317-321`` (through the dataset it is given). Stand-in:
  ``ParquetDataset`` and ``ParquetDatasetPiece`` below, which list files and Hive partitions as
  the legacy ``ParquetManifest`` did (sorted paths; names starting with ``_`` or ``.`` skipped), so
  pieces, row groups and therefore shards and seeded orders are the same as on pyarrow 14.
- ``pyarrow.hdfs`` (gone in pyarrow 16): ``petastorm/hdfs/namenode.py:24`` imports and subclasses
  its ``HadoopFileSystem`` at import time. Stand-in: ``HadoopFileSystem`` below, a class that
  refuses to be used with what to do instead; ``hdfs://`` URLs are not shimmed (Petastorm calls
  ``pyarrow.hdfs.connect``): on the current stack read HDFS through an fsspec URL such as
  ``webhdfs://``.
- ``np.unicode_`` / ``np.string_`` (gone in NumPy 2): ``petastorm/unischema.py:148-150, 481,
  491-493`` and ``petastorm/arrow_reader_worker.py:67``. Stand-in: ``np.str_`` / ``np.bytes_``, the
  types they were aliases of.

The two import-time stand-ins (``pyarrow.filesystem``, ``pyarrow.hdfs``) are in ``sys.modules`` only
while ``install`` imports Petastorm, then taken away again. The shims live in the process that calls
``install``: Petastorm's thread pool (the loader's) sees them; its process pool
(``reader_pool_type="process"``) starts workers that import Petastorm without them.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

HAS_LEGACY_DATASET = hasattr(pq, "ParquetDatasetPiece")
HAS_LEGACY_FILESYSTEM = importlib.util.find_spec("pyarrow.filesystem") is not None
HAS_LEGACY_HDFS = importlib.util.find_spec("pyarrow.hdfs") is not None
HAS_NUMPY_ALIASES = hasattr(np, "unicode_")  # NumPy 2 raises AttributeError for the removed aliases

# Petastorm modules that call pq.ParquetDataset / pq.ParquetDatasetPiece (imported by `install`).
_PQ_USERS = ("petastorm.reader", "petastorm.arrow_reader_worker", "petastorm.py_dict_reader_worker",
             "petastorm.etl.dataset_metadata", "petastorm.etl.rowgroup_indexing", "petastorm.etl.metadata_util")
_NP_USERS = ("petastorm.unischema", "petastorm.arrow_reader_worker")


class LocalFileSystem:
    """The part of pyarrow's legacy ``pyarrow.filesystem.LocalFileSystem`` that Petastorm calls, over
    ``pyarrow.fs.LocalFileSystem``. Paths are local paths (``file://`` stripped by Petastorm)."""

    def __init__(self) -> None:
        self._fs = pafs.LocalFileSystem()

    def open(self, path: str, mode: str = "rb"):
        """A native Arrow file: random access for reading (``rb``), a stream for writing (``wb``)."""
        if "r" in mode:
            return self._fs.open_input_file(path)
        return self._fs.open_output_stream(path)

    def exists(self, path: str) -> bool:
        return self._fs.get_file_info(path).type != pafs.FileType.NotFound

    def isdir(self, path: str) -> bool:
        return self._fs.get_file_info(path).type == pafs.FileType.Directory

    def isfile(self, path: str) -> bool:
        return self._fs.get_file_info(path).type == pafs.FileType.File

    def ls(self, path: str) -> list[str]:
        return sorted(os.path.join(path, name) for name in os.listdir(path))

    def rm(self, path: str, recursive: bool = False) -> None:
        if self.isdir(path):
            if not recursive:
                raise OSError(f"{path} is a directory; pass recursive=True")
            self._fs.delete_dir(path)
        else:
            self._fs.delete_file(path)

    delete = rm

    def __reduce__(self):  # Petastorm's process pool pickles the filesystem into its workers
        return LocalFileSystem, ()


class HadoopFileSystem:
    """Stands in for ``pyarrow.hdfs.HadoopFileSystem``, which ``petastorm/hdfs/namenode.py:24`` imports
    (and subclasses) at import time; pyarrow 16 removed it. Using it is refused with what to do."""

    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError(
            f"hdfs:// URLs need pyarrow's legacy HDFS client, which pyarrow {pa.__version__} no longer has; "
            "read HDFS through an fsspec URL (webhdfs://namenode:port/path)")


class _Partition:
    """One Hive partition level, as the legacy ``PartitionSet``: its ``name``, its values as strings
    (``keys``, in order of first appearance) and ``dictionary`` (int64 when every value is an integer)."""

    def __init__(self, name: str) -> None:
        self.name, self.keys = name, []
        self._index: dict[str, int] = {}

    def get_index(self, key: str) -> int:
        if key not in self._index:
            self._index[key] = len(self.keys)
            self.keys.append(key)
        return self._index[key]

    @property
    def dictionary(self) -> pa.Array:
        try:
            return pa.array([int(k) for k in self.keys], type=pa.int64())
        except ValueError:
            return pa.array(self.keys, type=pa.string())


class _Partitions(list):
    """The legacy ``ParquetPartitions``: the levels in order (falsy when there are none), and their
    ``partition_names``."""

    @property
    def partition_names(self) -> set[str]:
        return {p.name for p in self}

    def get_index(self, level: int, name: str, key: str) -> int:
        if level == len(self):
            if name in self.partition_names:
                raise ValueError(f"{name} was the name of the partition in another level")
            self.append(_Partition(name))
        return self[level].get_index(key)

    def accepts(self, part_key: tuple[str, int], condition, level: int) -> bool:
        """pyarrow 14's ``filter_accepts_partition``: the partition value, typed as the filter's, against it."""
        column, op, value = condition
        if part_key[0] != column:
            return True
        kind = type(next(iter(value))) if op in ("in", "not in") else type(value)
        v = kind(self[level].dictionary[part_key[1]].as_py())
        ops = {"=": v.__eq__, "==": v.__eq__, "!=": v.__ne__, "<": v.__lt__, ">": v.__gt__, "<=": v.__le__,
               ">=": v.__ge__, "in": lambda c: v in c, "not in": lambda c: v not in c}
        if op not in ops:
            raise ValueError(f"'{op}' is not a valid operator in predicates.")
        return bool(ops[op](value))


class ParquetDatasetPiece:
    """The legacy ``pq.ParquetDatasetPiece``: one file, or one row group of it, with its partition keys.

    ``read`` returns that file's (or row group's) columns, with each partition level added as a
    dictionary column, as pyarrow 14's piece did.
    """

    def __init__(self, path: str, open_file_func: Callable[[str], Any] | None = None, file_options=None,
                 row_group: int | None = None, partition_keys: list[tuple[str, int]] | None = None) -> None:
        self.path, self.row_group = path, row_group
        self.partition_keys = partition_keys or []
        self.open_file_func = open_file_func or LocalFileSystem().open
        self.file_options = file_options or {}

    def __eq__(self, other) -> bool:
        return isinstance(other, ParquetDatasetPiece) and (self.path, self.row_group, self.partition_keys) == (
            other.path, other.row_group, other.partition_keys)

    def __hash__(self) -> int:
        return hash((self.path, self.row_group, tuple(self.partition_keys)))

    def __repr__(self) -> str:
        return f"ParquetDatasetPiece({self.path!r}, row_group={self.row_group}, partition_keys={self.partition_keys})"

    def open(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.open_file_func(self.path), **self.file_options)

    def get_metadata(self) -> pq.FileMetaData:
        return self.open().metadata

    def read(self, columns: Iterable[str] | None = None, use_threads: bool = True, partitions=None,
             file=None, use_pandas_metadata: bool = False) -> pa.Table:
        reader = pq.ParquetFile(file, **self.file_options) if file is not None else self.open()
        columns = list(columns) if columns is not None else None
        if self.row_group is not None:
            table = reader.read_row_group(self.row_group, columns=columns, use_threads=use_threads,
                                          use_pandas_metadata=use_pandas_metadata)
        else:
            table = reader.read(columns=columns, use_threads=use_threads, use_pandas_metadata=use_pandas_metadata)
        if file is None:
            reader.close()
        if self.partition_keys and not partitions:
            raise ValueError("Must pass partition sets")
        for name, index in self.partition_keys:
            level = next(p for p in partitions if p.name == name)
            indices = pa.array(np.full(table.num_rows, index, dtype=np.int32))
            table = table.append_column(name, pa.DictionaryArray.from_arrays(indices, level.dictionary))
        return table


def _skipped(name: str) -> bool:
    # pyarrow 14's ParquetManifest._should_silently_exclude
    return name.endswith(".crc") or name.endswith("_$folder$") or name.startswith((".", "_"))


class ParquetDataset:
    """The legacy ``pq.ParquetDataset`` as Petastorm uses it: ``paths``, ``fs``, ``pieces``,
    ``partitions`` (the Hive levels ``name=value`` of directories; falsy when none; None for a list
    of files), ``metadata_path`` / ``common_metadata_path`` and ``metadata`` / ``common_metadata``
    (the ``_metadata`` / ``_common_metadata`` files' metadata, the latter falling back to the former,
    or None) and ``schema``. A directory is walked as pyarrow 14's ``ParquetManifest`` walked it:
    each level's files and directories sorted, private ones (``_x``, ``.x`` without ``=``) skipped,
    partition codes given in that order, and the pieces sorted by path at the end; so pieces, row
    groups and therefore shards and seeded orders are pyarrow 14's. ``validate_schema`` and
    ``metadata_nthreads`` are accepted and ignored; ``filters`` select pieces by partition values.

    Raises:
        OSError: a listed path that is not a file.
        ValueError: files beside partition directories, a directory that is not ``name=value``.
    """

    def __init__(self, path_or_paths, filesystem=None, schema=None, metadata=None, split_row_groups=False,
                 validate_schema=True, filters=None, metadata_nthreads=1, **_ignored) -> None:
        self.paths = path_or_paths
        self.fs = filesystem if filesystem is not None else LocalFileSystem()
        self.metadata_path = self.common_metadata_path = None
        self.pieces: list[ParquetDatasetPiece] = []
        self.partitions: _Partitions | None = None
        single = path_or_paths[0] if isinstance(path_or_paths, list) and len(path_or_paths) == 1 else path_or_paths
        if isinstance(single, str) and self.fs.isdir(single):
            self.partitions = _Partitions()
            self._visit_level(0, single.rstrip("/") if single != "/" else single, [])
            self.pieces.sort(key=lambda piece: piece.path)
            if self.common_metadata_path is None:  # _common_metadata is a subset of _metadata
                self.common_metadata_path = self.metadata_path
        else:
            paths = single if isinstance(single, list) else [single]
            if not paths:
                raise ValueError("Must pass at least one file path")
            for path in paths:
                if not self.fs.isfile(path):
                    raise OSError(f"Passed non-file path: {path}")
                self.pieces.append(ParquetDatasetPiece(path, open_file_func=self.fs.open))
        self.common_metadata = self._read_metadata(self.common_metadata_path)
        self.metadata = metadata if metadata is not None else self._read_metadata(self.metadata_path)
        if filters:
            disjunction = filters if isinstance(filters[0], list) else [filters]
            self.pieces = [p for p in self.pieces if any(
                all(self.partitions.accepts(key, f, level) for f in conjunction
                    for level, key in enumerate(p.partition_keys)) for conjunction in disjunction)]
        source = self.common_metadata or self.metadata or (self.pieces[0].get_metadata() if self.pieces else None)
        self.schema = source.schema if source is not None else None

    def _visit_level(self, level: int, base: str, part_keys: list[tuple[str, int]]) -> None:
        files, directories = [], []
        for path in self.fs.ls(base):
            name = path.rsplit("/", 1)[-1]
            if self.fs.isdir(path):
                if not (name.startswith(("_", ".")) and "=" not in name):
                    directories.append(path)
            elif name.endswith("_common_metadata"):
                self.common_metadata_path = path
            elif name.endswith("_metadata"):
                self.metadata_path = path
            elif not _skipped(name):
                files.append(path)
        files.sort()
        directories.sort()
        if files and directories:
            raise ValueError(f"Found files in an intermediate directory: {base}")
        for path in directories:
            tail = path.rsplit("/", 1)[-1]
            if "=" not in tail:
                raise ValueError(f"Directory name did not appear to be a partition: {tail}")
            name, key = tail.split("=", 1)
            self._visit_level(level + 1, path, part_keys + [(name, self.partitions.get_index(level, name, key))])
        self.pieces += [ParquetDatasetPiece(f, open_file_func=self.fs.open, partition_keys=part_keys) for f in files]

    def _read_metadata(self, path: str | None):
        if path is None:
            return None
        with self.fs.open(path) as f:
            return pq.read_metadata(f)


class _Namespace(types.ModuleType):
    """A module's stand-in: the given names, then everything else of the real module."""

    def __init__(self, module: types.ModuleType, **names: Any) -> None:
        super().__init__(module.__name__, module.__doc__)
        self.__dict__.update(names)
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def installed() -> list[str]:
    """What ``install`` puts in front of Petastorm on this stack: the removed names it stands in for."""
    out = []
    if not HAS_LEGACY_FILESYSTEM:
        out.append("pyarrow.filesystem")
    if not HAS_LEGACY_HDFS:
        out.append("pyarrow.hdfs")
    if not HAS_LEGACY_DATASET:
        out.append("pyarrow.parquet legacy dataset (ParquetDataset pieces, ParquetDatasetPiece)")
    if not HAS_NUMPY_ALIASES:
        out.append("numpy.unicode_ / numpy.string_")
    return out


def install() -> None:
    """Put the stand-ins in front of Petastorm where this pyarrow / NumPy lacks what it calls.

    Call before the first ``import petastorm`` (its ``utils`` imports ``pyarrow.filesystem`` at import
    time); calling again sets the same names. On pyarrow 14 with NumPy 1 it only imports Petastorm.
    """
    # Names for Petastorm's own imports only, taken away again once Petastorm is imported.
    stubs = {}
    if not HAS_LEGACY_FILESYSTEM and "pyarrow.filesystem" not in sys.modules:
        stubs["pyarrow.filesystem"] = {"LocalFileSystem": LocalFileSystem}
    if not HAS_LEGACY_HDFS and "pyarrow.hdfs" not in sys.modules:
        stubs["pyarrow.hdfs"] = {"HadoopFileSystem": HadoopFileSystem}
    for name, names in stubs.items():
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__dict__.update(names)
    try:
        for name in ("petastorm", "petastorm.fs_utils", *_PQ_USERS, *_NP_USERS):
            importlib.import_module(name)
    finally:
        for name in stubs:
            del sys.modules[name]
    if not HAS_LEGACY_FILESYSTEM:
        fs_utils = sys.modules["petastorm.fs_utils"]
        if not isinstance(fs_utils.pyarrow, _Namespace):
            fs_utils.pyarrow = _Namespace(pa, localfs=LocalFileSystem())
    if not HAS_LEGACY_DATASET:
        legacy = _Namespace(pq, ParquetDataset=ParquetDataset, ParquetDatasetPiece=ParquetDatasetPiece)
        for name in _PQ_USERS:
            sys.modules[name].pq = legacy
    if not HAS_NUMPY_ALIASES:
        aliases = _Namespace(np, unicode_=np.str_, string_=np.bytes_)
        for name in _NP_USERS:
            sys.modules[name].np = aliases

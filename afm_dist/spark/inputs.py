"""Inputs of the scoring and explanation jobs: a preprocessed split, or raw logs to encode."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pyspark.sql import DataFrame, SparkSession

from afm_dist.dataset import IDS, MASK, ROW_ID, VALS, DatasetError, strip_file_scheme


def is_encoded_split(paths: Sequence[str]) -> bool:
    """True when ``paths`` is one directory of Parquet written by jobs/preprocess.py (a split)."""
    if len(paths) != 1:
        return False
    d = Path(strip_file_scheme(paths[0]))
    return d.is_dir() and any(d.glob("*.parquet")) and not any(d.glob("*.csv"))


def load_encoded(spark: SparkSession, paths: Sequence[str], info: dict[str, Any], staging: Path, *,
                 model_dir: str | Path, max_rejected_fraction: float,
                 tables: dict[str, list[str]] | None = None) -> tuple[DataFrame, list[str], int]:
    """Return (encoded rows, key columns to keep, number of rejected raw rows).

    A preprocessed split is read as it is (keys: row_id). Raw logs are parsed with the model's
    dataset schema and encoded with the model's vocabulary; malformed rows are written to
    ``staging/rejected`` and counted.
    """
    if is_encoded_split(paths):
        check_encoded_split(paths[0], info)
        return spark.read.parquet(strip_file_scheme(paths[0])), [ROW_ID], 0
    from afm_dist.spark.encode_raw import encode_raw_logs

    return encode_raw_logs(spark, paths, info, staging, max_rejected_fraction=max_rejected_fraction,
                           model_dir=model_dir, tables=tables)


def check_encoded_split(path: str, info: dict[str, Any]) -> None:
    """Refuse a split without the preprocessed columns, or one of another data set than the model's."""
    import pyarrow.parquet as pq

    split_dir = Path(strip_file_scheme(path))
    columns = pq.read_schema(next(iter(sorted(split_dir.glob("*.parquet"))))).names  # one footer
    missing = {ROW_ID, IDS, VALS, MASK} - set(columns)
    if missing:
        raise DatasetError(f"{path}: Parquet without the columns {sorted(missing)} of a preprocessed split")
    _check_same_layout(split_dir, info)


def parse_tables(specs: Sequence[str]) -> dict[str, list[str]]:
    """``--table NAME=PATH`` arguments (side tables of the schema) -> {name: [paths]}."""
    tables: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise DatasetError(f"--table {spec!r}: expected NAME=PATH, e.g. movies=movies.csv")
        tables.setdefault(name, []).append(path)
    return tables


def _check_same_layout(split_dir: Path, info: dict[str, Any]) -> None:
    """A split of another data set would be scored with the wrong feature ids: refuse it."""
    import json

    meta_path = split_dir.parent / "metadata.json"
    if not meta_path.exists():
        return
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("schema_hash") != info["dataset"]["schema_hash"] or meta.get("num_features") != info["num_features"]:
        raise DatasetError(
            f"{split_dir}: this split was preprocessed with another schema or vocabulary than the model "
            f"was trained on ({meta_path}); score raw logs instead, or the split the model was trained with"
        )



"""Helpers of the preprocessing tests: run the job in-process, read what it wrote."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq

from afm_dist.batch import to_batch
from afm_dist.dataset import SPLITS, split_bag_columns
from tests import conftest

REPO = Path(__file__).resolve().parents[2]


def run_job(spark, *args: str) -> int:
    """Run jobs/preprocess.py in this process (``tests.conftest.run_job``)."""
    return conftest.run_job("preprocess", list(args), spark)


def read_split(out: Path, split: str) -> list[dict]:
    """Rows of a split as dicts (ids, vals, mask as lists of all M slots: a history field's bag
    column, kept as it is, also put back at its slots), sorted by row_id."""
    table = pq.read_table(out / split)
    rows = table.to_pylist()
    bags = split_bag_columns(out / split)
    if bags:
        batch = to_batch(table, bags)
        for r, ids, vals, mask in zip(rows, batch.ids.tolist(), batch.vals.tolist(), batch.mask.int().tolist()):
            r.update(ids=ids, vals=vals, mask=mask)
    return sorted(rows, key=lambda r: r["row_id"])


def read_all(out: Path) -> dict[str, list[dict]]:
    return {s: read_split(out, s) for s in SPLITS}


def vocabulary(out: Path) -> dict[tuple[str, str | None], int]:
    """(field, raw value) -> global id; value None is the field's out-of-vocabulary id."""
    return {(r["field"], r["value"]): r["id"] for r in pq.read_table(out / "vocabulary").to_pylist()}


def row_groups(split_dir: Path) -> list[int]:
    """Rows of every Parquet row group of a split directory."""
    sizes = []
    for f in sorted(split_dir.glob("*.parquet")):
        meta = pq.ParquetFile(f).metadata
        sizes += [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return sizes


def read_delimited(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def multiset(rows) -> Counter:
    return Counter(rows)

"""Explain an AFM's predictions with its attention weights, on Spark executors.

    ./spark-submit.sh jobs/explain.py --model out/models/afm --input out/frappe/test --output out/explain

Output DIR (complete or absent):
  field_pairs.csv         mean attention of every field pair over the whole input, largest first
  attention_heatmap.png   the same as a field x field heatmap
  rows.csv, rows/         for a sample of ``--rows`` rows: every active feature pair with both raw
                          values, its attention weight a_ij, its interaction score
                          pᵀ(v_i ⊙ v_j) x_i x_j and their product (the paper's Table 1)
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from afm_dist.checkpoint import read_model_dir
from afm_dist.dataset import ROW_ID, VOCABULARY, DatasetError, mark_complete
from afm_dist.paths import OutputPathError, publish_directory, validate_output_path


JOB = "explain"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an AFM model directory written by afm_dist.train")
    p.add_argument("--input", required=True, nargs="+", help="a preprocessed split directory, or raw log files")
    p.add_argument("--output", required=True)
    p.add_argument("--rows", type=int, default=20, help="rows explained pair by pair (a deterministic sample)")
    p.add_argument("--seed", type=int, default=2017, help="seed of the row sample")
    p.add_argument("--threads", type=int, default=1, help="torch threads per Spark task")
    p.add_argument("--table", action="append", default=[], metavar="NAME=PATH",
                   help="raw input only: file(s) of a side table the model's schema joins (repeat per table)")
    p.add_argument("--max-rejected-fraction", type=float, default=0.01)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    args = parse_args(argv)
    try:
        info, _ = read_model_dir(args.model)
        if info["model"] != "afm":
            raise DatasetError(f"{args.model}: explanations need an AFM (attention weights); this is {info['model']!r}")
        out = validate_output_path(args.output, overwrite=args.overwrite)
    except (DatasetError, OutputPathError) as e:
        print(f"{JOB}: error: {e}", file=sys.stderr)
        return 2

    from afm_dist.spark.session import build_session

    spark = spark or build_session("afm-dist-explain")
    try:
        table = run(spark, args, info, out)
    except DatasetError as e:  # bad input found once Spark read it: nothing was published
        print(f"{JOB}: error: {e}", file=sys.stderr)
        return 2
    print(f"explanations written to {out}")
    print(f"  {'field pair':<30} {'mean attention':>14}")
    for a, b, mean, _ in table[:10]:
        print(f"  {a + ' x ' + b:<30} {mean:>14.4f}")
    return 0


def run(spark, args: argparse.Namespace, info: dict, out: Path) -> list[tuple]:
    """Explain into a staging directory, publish it complete, return the field-pair table."""
    from pyspark.sql import functions as F

    from afm_dist.plots import plot_attention_heatmap
    from afm_dist.spark.inputs import load_encoded, parse_tables
    from afm_dist.spark.scoring import attention_sums, explain_rows

    fields = info["dataset"]["fields"]
    names = [f["name"] for f in fields]
    slot_fields = [i for i, f in enumerate(fields) for _ in range(f["width"])]
    with publish_directory(out, overwrite=args.overwrite) as staging:
        encoded, _, _ = load_encoded(spark, args.input, info, staging, model_dir=args.model, tables=parse_tables(args.table), max_rejected_fraction=args.max_rejected_fraction)

        # Whole input: mean attention per field pair (over the rows where the pair occurs).
        sums = attention_sums(spark, encoded, args.model, slot_fields=slot_fields, threads=args.threads).collect()
        matrix = np.full((len(names), len(names)), np.nan)
        table = []
        for r in sums:
            mean = r["attention"] / r["rows"] if r["rows"] else float("nan")
            matrix[r["field_a"], r["field_b"]] = matrix[r["field_b"], r["field_a"]] = mean
            table.append((names[r["field_a"]], names[r["field_b"]], mean, r["rows"]))
        table.sort(key=lambda t: -t[2] if t[2] == t[2] else 0)
        with open(staging / "field_pairs.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["field_a", "field_b", "mean_attention", "rows"])
            w.writerows(table)
        plot_attention_heatmap(matrix, names, staging / "attention_heatmap.png",
                               title=f"AFM mean attention per field pair ({Path(args.model).name})")

        # A deterministic sample of rows, explained pair by pair with raw values.
        h = F.xxhash64(F.col(ROW_ID), F.lit(args.seed))
        sample = encoded.withColumn("_h", h).orderBy("_h").limit(args.rows).drop("_h")
        pairs = explain_rows(spark, sample, args.model, threads=args.threads)
        pairs = _with_raw_values(spark, pairs, args.model, names, slot_fields)
        pairs = pairs.orderBy(ROW_ID, F.desc("attention"))
        pairs.write.parquet(str(staging / "rows"))
        pairs.toPandas().to_csv(staging / "rows.csv", index=False)  # a sample: small by construction
        mark_complete(staging)
    return table


def _with_raw_values(spark, pairs, model_dir: str, names: list[str], slot_fields: list[int]):
    """Add field names and raw values of both features of each pair, from the model's vocabulary."""
    from pyspark.sql import functions as F

    slot_name = F.create_map(*[x for s, fi in enumerate(slot_fields) for x in (F.lit(s), F.lit(names[fi]))])
    pairs = pairs.withColumn("field_a", slot_name[F.col("slot_a")]).withColumn("field_b", slot_name[F.col("slot_b")])
    vocab_dir = Path(model_dir) / VOCABULARY
    if vocab_dir.is_dir():
        vocab = spark.read.parquet(str(vocab_dir)).select(F.col("id").cast("long").alias("_id"),
                                                         F.col("value").cast("string").alias("_value"))
        for side in ("a", "b"):
            v = vocab.withColumnRenamed("_id", f"id_{side}").withColumnRenamed("_value", f"value_{side}")
            pairs = pairs.join(v, on=f"id_{side}", how="left")
    else:  # a model without a vocabulary (libFM input): the ids are the raw values
        pairs = pairs.withColumn("value_a", F.col("id_a").cast("string")).withColumn("value_b", F.col("id_b").cast("string"))
    return pairs.select(ROW_ID, "field_a", "value_a", "field_b", "value_b", "attention", "interaction",
                        "contribution", "prediction", "label")


if __name__ == "__main__":
    sys.exit(main())

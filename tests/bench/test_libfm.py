"""bench/bench_libfm.py: the libFM export of a split, the scoring of libFM's predictions, and (when
bench/setup_libfm.sh has built libFM; CI has none) a real libFM run read back."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_dist.dataset import IDS, LABEL, MASK, ROW_ID, SPLITS, TRAIN, VALS, DatasetMetadata, FieldLayout, \
    mark_complete, split_path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_libfm as B  # noqa: E402

# The Parquet types jobs/preprocess.py writes (afm_dist/dataset.py).
SCHEMA = pa.schema([(ROW_ID, pa.int64()), (IDS, pa.list_(pa.int32())), (VALS, pa.list_(pa.float32())),
                    (MASK, pa.list_(pa.int8())), (LABEL, pa.float32())])


def write_split(data: Path, split: str, ids, vals, mask, labels) -> None:
    d = split_path(data, split)
    d.mkdir(parents=True)
    table = pa.table({ROW_ID: np.arange(len(labels), dtype=np.int64), IDS: ids, VALS: vals, MASK: mask,
                      LABEL: labels}, schema=SCHEMA)
    pq.write_table(table, d / "part-00000.parquet")


def write_metadata(data: Path, num_features: int, num_slots: int, lo: float, hi: float, rows: dict) -> None:
    fields = [FieldLayout(name=f"f{s}", kind="categorical", offset=0, size=num_features, slot=s, width=1)
              for s in range(num_slots)]
    data.mkdir(parents=True, exist_ok=True)
    DatasetMetadata(schema={}, schema_hash="test", fields=fields, num_features=num_features, num_slots=num_slots,
                    target={"kind": "explicit", "min": lo, "max": hi},
                    counts={s: {"rows": n} for s, n in rows.items()}, seed=0, inputs=[]).save(data)
    mark_complete(data)


def test_libfm_lines_omit_masked_slots_and_write_shortest_float32(tmp_path):
    write_split(tmp_path, TRAIN,
                ids=[[3, 10, 7], [0, 2, 9], [5, 0, 0], [12, 4, 1]],
                vals=[[1.0, 0.5, 0.0], [0.1, 1.0, 2.25], [1.0, 0.0, 0.0], [1e-5, -3.0, 123456.0]],
                mask=[[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]],
                labels=[4.5, -1.0, 3.0, 0.1])
    table = B.read_split(tmp_path, TRAIN)
    assert B.libfm_lines(table) == [
        "4.5 3:1 10:0.5",  # slot 3 masked out, though its value is 0 anyway
        "-1 0:0.1 2:1 9:2.25",  # float32 0.1 written as 0.1, not 0.10000000149011612
        "3 5:1",  # padding with id 0 omitted
        "0.1 12:0.00001 4:-3 1:123456",  # slot order kept, not id order
    ]
    path = tmp_path / "train.libfm"
    labels = B.export_split(table, path)
    assert path.read_text() == "4.5 3:1 10:0.5\n-1 0:0.1 2:1 9:2.25\n3 5:1\n0.1 12:0.00001 4:-3 1:123456\n"
    np.testing.assert_array_equal(labels, np.float32([4.5, -1.0, 3.0, 0.1]))

    shuffled = B.read_split(tmp_path, TRAIN, shuffle_seed=7)
    assert sorted(B.libfm_lines(shuffled)) == sorted(B.libfm_lines(table))
    assert B.libfm_lines(shuffled) == B.libfm_lines(B.read_split(tmp_path, TRAIN, shuffle_seed=7))


def test_score_clips_predictions_to_the_training_target_range(tmp_path):
    write_metadata(tmp_path, 4, 1, 1.0, 5.0, {})
    pred = tmp_path / "pred.txt"
    pred.write_text("6.0\n4.0\n3.5\n0.25\n")  # libFM's -out: one prediction a line
    m = B.score(pred, np.array([1.0, 5.0, 3.0, 2.0]), B.load_metadata(tmp_path))
    # clipped to [1, 5]: 5, 4, 3.5, 1; errors 4, -1, 0.5, -1
    assert m["rows"] == 4
    assert m["rmse"] == pytest.approx(math.sqrt((16 + 1 + 0.25 + 1) / 4))
    assert m["mae"] == pytest.approx((4 + 1 + 0.5 + 1) / 4)
    with pytest.raises(B.LibFMError, match="4 predictions for 3 rows"):
        B.score(pred, np.array([1.0, 5.0, 3.0]), B.load_metadata(tmp_path))


def test_missing_libfm_is_one_line_naming_the_setup_script(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AFM_LIBFM_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(B.LibFMError, match="bash bench/setup_libfm.sh"):
        B.libfm_binary()
    data = tmp_path / "data"
    write_metadata(data, 4, 1, 1.0, 5.0, {})
    assert B.main(["--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_libfm.py: libFM is not built") and "Traceback" not in err


def planted_data_set(data: Path, rows: dict[str, int]) -> None:
    """Ratings in [1, 5] from a planted linear model over 3 one-hot fields of 5 values each."""
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 1, 15)
    for split, n in rows.items():
        ids = rng.integers(0, 5, (n, 3)) + np.array([0, 5, 10])
        labels = np.clip(3 + weights[ids].sum(1) + rng.normal(0, 0.3, n), 1, 5)
        write_split(data, split, ids.tolist(), np.ones((n, 3)).tolist(), np.ones((n, 3), dtype=np.int8).tolist(),
                    labels.tolist())
    write_metadata(data, 15, 3, 1.0, 5.0, rows)


def test_libfm_run_is_read_back(tmp_path):
    try:
        B.libfm_binary()
    except B.LibFMError as e:
        pytest.skip(f"libFM is not built here (benchmark only, CI has none): {e}")
    data = tmp_path / "data"
    planted_data_set(data, dict(zip(SPLITS, (300, 100, 100))))
    grid = B.LibFMGrid(dims=(2,), sgd_iter=30, learn_rates=(0.01, 0.05), regulars=("0,0,0.01",), mcmc_iter=30)
    result = B.run_libfm(data, grid=grid, seed=3, work_dir=tmp_path / "work", write=False, progress_every=100)
    assert result["rows"] == {"train": 300, "validation": 100, "test": 100}
    for method, trials in (("sgd", 2), ("mcmc", 1)):
        r = result["methods"][method]
        assert len(r["trials"]) == trials
        assert r["chosen"] == min(r["trials"], key=lambda t: t["validation"]["rmse"])["settings"]
        # Our RMSE of its -out predictions is what libFM itself reports (6 digits) for the test file...
        assert r["test_rmse"] == pytest.approx(r["libfm_reported_test_rmse"], rel=1e-5)
        # ...and what the predictions file gives by hand.
        pred = np.clip(np.loadtxt(tmp_path / "work" / f"{method}-test.pred"), 1, 5)
        labels = pq.read_table(split_path(data, "test")).column(LABEL).to_numpy()
        assert r["test_rmse"] == pytest.approx(np.sqrt(np.mean((pred - labels) ** 2)), rel=1e-6)
        assert r["test_rmse"] < 0.5 * np.std(labels)  # it learnt the planted model
        assert f"-method {method}" in r["command"] and "-seed 3" in r["command"]

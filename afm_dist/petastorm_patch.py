"""Two patches to Petastorm 0.13.1's readers: a race that silently drops the last row group, and
a slow conversion of list columns.

The race: ``ThreadPool.get_results`` ends the read when ``all_workers_done()`` and then
``ventilator.completed()``. The ventilator thread can ventilate the last row group between the
two checks: the first saw every *ventilated so far* item processed, the second sees the
ventilation complete, and the reader stops with one row group unread (seen here under load:
4,500 of 5,000 rows). Checking ``completed()`` first is safe, since the ventilator marks itself
complete only after counting its last item. ``apply()`` installs the corrected method; the loader
calls it before creating readers.

The conversion: ``make_batch_reader`` turns each row group's list columns (a split's ``ids``,
``vals`` and ``mask``, M values a row) into a matrix through pandas, a Python list of arrays and
``np.vstack``, on the thread that takes the batches. ``convert_lists`` reads a list column whose
rows all have one width and no nulls straight from Arrow's flat values: the same (rows, width)
matrix, tens of times faster (bench/bench_train.py measures both per row; ``batch.list_matrix``).
Other columns, and list columns it cannot read that way, go through Petastorm's own conversion,
which also raises its own error for rows of different widths.
"""
from __future__ import annotations

import queue

import numpy as np
import pyarrow as pa

from afm_dist import petastorm_compat

petastorm_compat.install()  # before Petastorm is imported: pyarrow >= 16 and NumPy 2 lack names it imports

from petastorm import arrow_reader_worker  # noqa: E402
from petastorm.workers_pool import EmptyResultError, VentilatedItemProcessedMessage  # noqa: E402
from petastorm.workers_pool import thread_pool  # noqa: E402
from petastorm.workers_pool.thread_pool import ThreadPool  # noqa: E402

from afm_dist.batch import list_matrix, ragged_matrix  # noqa: E402
from afm_dist.dataset import BAG_PREFIX  # noqa: E402

_VERIFY_END = thread_pool._VERIFY_END_OF_VENTILATION_PERIOD
_PETASTORM_CONVERT = arrow_reader_worker.convert_arrow_table_to_numpy_dict


def _get_results(self):
    use_non_blocking_get = self._shuffle_rows and (self._seed is None or self._seed == 0)
    while True:
        # The fix: ventilation complete first, then every ventilated item processed.
        if (not self._ventilator or self._ventilator.completed()) and self.all_workers_done():
            raise EmptyResultError()
        if self.current_worker_done(self._get_results_worker_id):
            self._get_results_worker_id = (self._get_results_worker_id + 1) % self.workers_count
            continue
        try:
            result = self._results_queues[self._get_results_worker_id].get(
                block=not use_non_blocking_get, timeout=_VERIFY_END)
        except queue.Empty:
            continue
        if isinstance(result, VentilatedItemProcessedMessage):
            self._ventilated_items_processed_by_worker[self._get_results_worker_id] += 1
            if self._ventilator:
                self._ventilator.processed_item()
            self._get_results_worker_id = (self._get_results_worker_id + 1) % self.workers_count
            continue
        if isinstance(result, Exception):
            self.stop()
            self.join()
            raise result
        return result


def convert_lists(result_table: pa.Table, schema) -> dict[str, np.ndarray]:
    """``convert_arrow_table_to_numpy_dict`` with fixed-width list columns read from Arrow directly.

    Returns a numpy array per column: (rows, width) for a list column whose Petastorm field is 1-D
    (as Petastorm's conversion gives, but sharing Arrow's memory, so read-only: the loader's
    ``fixed_width`` copies it); for a split's bag column (``dataset.BAG_PREFIX``), whose rows
    differ in length, (rows, longest row) padded with -1 (``batch.ragged_matrix``); else what
    Petastorm's conversion gives.

    Raises:
        RuntimeError: Petastorm's, for a list column whose rows differ in width.
    """
    out, rest = {}, []
    for name in result_table.column_names:
        matrix = None
        if pa.types.is_list(result_table.schema.field(name).type) and len(schema.fields[name].shape) <= 1:
            column = result_table.column(name)
            # a split's bag column: rows of different lengths by design, padded with -1
            matrix = ragged_matrix(column) if name.startswith(BAG_PREFIX) else list_matrix(column)
        if matrix is None:
            rest.append(name)
        else:
            out[name] = matrix
    if rest:
        out.update(_PETASTORM_CONVERT(result_table.select(rest), schema))
    return {name: out[name] for name in result_table.column_names}


def apply() -> None:
    """Install the corrected ``ThreadPool.get_results`` and the list conversion (idempotent)."""
    ThreadPool.get_results = _get_results
    arrow_reader_worker.convert_arrow_table_to_numpy_dict = convert_lists

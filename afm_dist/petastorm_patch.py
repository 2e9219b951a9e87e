"""A fix for a race in Petastorm 0.13.1's thread pool that silently drops the last row group.

``ThreadPool.get_results`` ends the read when ``all_workers_done()`` and then
``ventilator.completed()``. The ventilator thread can ventilate the last row group between the
two checks: the first saw every *ventilated so far* item processed, the second sees the
ventilation complete, and the reader stops with one row group unread (seen here under load:
4,500 of 5,000 rows). Checking ``completed()`` first is safe, since the ventilator marks itself
complete only after counting its last item. ``apply()`` installs the corrected method; the loader
calls it before creating readers.
"""
from __future__ import annotations

import queue

from petastorm.workers_pool import EmptyResultError, VentilatedItemProcessedMessage
from petastorm.workers_pool import thread_pool
from petastorm.workers_pool.thread_pool import ThreadPool

_VERIFY_END = thread_pool._VERIFY_END_OF_VENTILATION_PERIOD


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


def apply() -> None:
    """Install the corrected ``ThreadPool.get_results`` (idempotent)."""
    ThreadPool.get_results = _get_results

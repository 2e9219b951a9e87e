"""A trainer rank for the elastic tests: ``python -m afm_dist.train``, except that the rank on the
host named by ``AFM_KILL_HOST`` kills itself with SIGKILL in the middle of its
``AFM_KILL_AT_COMMIT``-th commit, after the copy of the model has begun: a rank lost while a
commit is being made, at a moment no outside ``kill`` can hit reliably. Horovod and the trainer
run as they are; only the moment of the kill is chosen here.

    horovodrun ... python tests/train/elastic_worker.py --data ... --model fm ...
"""
from __future__ import annotations

import os
import signal
import sys

from afm_dist import train
from afm_dist.training import elastic


def _dying_save(save, at: int):
    def dying(self) -> None:
        if self.commits + 1 == at:
            self.model.state_dict()  # the commit has begun
            os.kill(os.getpid(), signal.SIGKILL)
        save(self)
    return dying


if __name__ == "__main__":
    host, at = os.environ.get("AFM_KILL_HOST"), int(os.environ.get("AFM_KILL_AT_COMMIT", "0"))
    if host and at and os.environ.get("HOROVOD_HOSTNAME") == host:
        elastic.TrainingState.save = _dying_save(elastic.TrainingState.save, at)
    sys.exit(train.main())

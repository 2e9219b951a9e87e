"""``horovodrun`` that ends in one line: ``python -m afm_dist.horovodrun [horovodrun's arguments]``.

Horovod's own launcher (``horovod.runner.launch.run_commandline``, run as it is: the same
arguments, the same elastic driver, the same rank output) ends a failed job with Python tracebacks:
an elastic run that stays below ``--min-np`` for ``--elastic-timeout`` seconds logs its driver
thread's ``TimeoutException`` ("failed to activate new hosts -> stop running", with the literal
``{activity}`` of its message) and then raises ``RuntimeError`` naming the first process that exited,
which is the survivor horovodrun itself terminated. Here the timeout's log record is kept back and
whatever ends the job is printed as one line on stderr, with what to do; the exit status is 1.
A worker that goes away while the launcher's rendezvous server answers it (as the survivors do when
the job stops) no longer prints the server thread's ``BrokenPipeError`` traceback after that line.
Anything else horovodrun or the ranks print is untouched.

Exit statuses: 0 when horovodrun succeeded, 1 when it failed, 2 for arguments horovodrun refuses.
"""
from __future__ import annotations

import logging
import re
import socketserver
import sys

from horovod.runner.common.util.timeout import TimeoutException
from horovod.runner.launch import run_commandline


class _ElasticTimeout(logging.Filter):
    """Drops the elastic driver's log record of a timeout waiting for workers and keeps its message."""

    def __init__(self) -> None:
        super().__init__()
        self.message: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, TimeoutException):
            self.message = str(error)
            return False
        return True


def ending(error: BaseException, timeout_message: str | None) -> str:
    """The one line that says why the job ended, from horovodrun's error and the elastic driver's
    timeout message (None when there was none)."""
    if timeout_message is not None:
        seconds = re.search(r"Timeout after (\d+) seconds", timeout_message)
        workers = re.search(r"at least (\d+) Horovod processes", timeout_message)
        return (f"horovodrun: fewer than {workers.group(1) if workers else '--min-np'} workers for "
                f"{seconds.group(1) + ' s' if seconds else 'the elastic timeout'} (--min-np, --elastic-timeout): "
                "the job stops; no model directory is marked complete; when the hosts are back, run the "
                "same command with --resume to go on from the last epoch's checkpoint")
    return "horovodrun: " + " ".join(str(error).split())


_handle_error = socketserver.BaseServer.handle_error


def _quiet_disconnects(self, request, client_address) -> None:
    """socketserver's error handler (a traceback on stderr) for all but a client that went away."""
    if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
        _handle_error(self, request, client_address)


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    socketserver.BaseServer.handle_error = _quiet_disconnects  # this process is the launcher only
    timeout = _ElasticTimeout()
    logging.getLogger().addFilter(timeout)  # the elastic driver logs on the root logger
    try:
        run_commandline()
    except SystemExit as e:  # argparse's refusals, with its own message already printed
        return e.code if isinstance(e.code, int) else 2
    except (RuntimeError, TimeoutException) as e:
        print(ending(e, timeout.message), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

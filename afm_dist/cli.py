"""The job runtime: the arguments the Spark jobs share, and ``run_spark_job``, which owns what
every job does around its work (logging, the Spark session, publishing the output directory with
its completion marker, errors and exit codes). A job is then: parse, ``run_spark_job``, report.

Exit status of every job (and of ``python -m afm_dist.train``):

    0  done; the output directory is complete (completion marker written last)
    2  unusable arguments, schema, input, model or output path, or too many malformed rows: the
       error on stderr names the file, line or field and what to do; no traceback, and nothing
       that looks complete is left behind
    1  the work failed after it started (e.g. a training rank died): the cause is on stderr
       above the job's one-line error; nothing that looks complete is left behind

Paths: every path argument is a local or shared-mount path or a ``file://`` URI; another URL
scheme (``hdfs://``, ``s3://``, ...) is refused before any work (``afm_dist.io.local_path``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from pyspark.sql import SparkSession

from afm_dist.dataset import DatasetError, mark_complete
from afm_dist.inputs import InputError, parse_table_specs
from afm_dist.io import (OutputPathError, UnsupportedSchemeError, check_apart, local_path, publish_directory,
                         storage_failure, unreadable_by_spark, validate_output_path)
from afm_dist.schema import SchemaError
from afm_dist.spark import session as spark_session

C = TypeVar("C")
T = TypeVar("T")

# Errors caused by what the user gave a job: reported in one line, exit status 2.
USER_ERRORS = (DatasetError, InputError, SchemaError, OutputPathError, UnsupportedSchemeError)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# The path arguments of the jobs (argparse names), each a local path once ``local_paths`` ran.
PATH_ARGUMENTS = ("schema", "model", "output", "input", "data", "init_from")
# The input path arguments of the jobs (argparse names), which ``--output`` must keep apart from.
INPUT_ARGUMENTS = ("schema", "model", "input", "data", "init_from", "train", "validation", "test")


# -- shared argument groups ---------------------------------------------------------------------


def add_model(p: argparse.ArgumentParser, what: str = "model directory written by afm_dist.train") -> None:
    p.add_argument("--model", required=True, help=what)


def add_input(p: argparse.ArgumentParser, *, help: str, raw_only_tables: bool = True, required: bool = True) -> None:
    """``--input`` (files or directories) and ``--table NAME=PATH`` (side tables of the schema)."""
    p.add_argument("--input", required=required, nargs="+", default=[], help=help)
    p.add_argument("--table", action="append", default=[], metavar="NAME=PATH",
                   help=("raw input only: " if raw_only_tables else "")
                   + "file(s) of a side table the schema joins (repeat per table; PATH may be a directory)")


def add_output(p: argparse.ArgumentParser, what: str = "output directory to create") -> None:
    """``--output`` and ``--overwrite``."""
    p.add_argument("--output", required=True, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="torch threads per Spark task")


def add_max_rejected_fraction(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-rejected-fraction", type=float, default=0.01,
                   help="fail when more than this fraction of input rows is malformed (default 0.01)")


def model_job_parser(prog: str, description: str, model_help: str) -> argparse.ArgumentParser:
    """The arguments of a job that applies a trained model to a split or raw logs (scoring,
    explanation): ``--model``, ``--input``, ``--table``, ``--output``, ``--overwrite``,
    ``--threads``, ``--max-rejected-fraction``; the job adds its own."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(p, model_help)
    add_input(p, help="a preprocessed split directory, or raw log files")
    add_output(p)
    add_threads(p)
    add_max_rejected_fraction(p)
    return p


def tables(args: argparse.Namespace) -> dict[str, list[str]]:
    """The ``--table`` arguments as {name: [paths]} (raises InputError for a malformed one)."""
    return parse_table_specs(args.table)


def check_common(args: argparse.Namespace) -> None:
    """The argument checks every job makes before Spark starts; path arguments made local
    (``local_paths``).

    Raises:
        InputError: ``--max-rejected-fraction`` outside [0, 1], ``--threads`` below 1, a
            malformed ``--table``.
        UnsupportedSchemeError: a path given as a URL other than ``file://``.
    """
    fraction = getattr(args, "max_rejected_fraction", None)
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise InputError("--max-rejected-fraction must be between 0 and 1")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise InputError("--threads must be at least 1")
    parse_table_specs(getattr(args, "table", []))
    local_paths(args)


def local_paths(args: argparse.Namespace) -> None:
    """Rewrite every path argument (``PATH_ARGUMENTS`` and ``--table NAME=PATH``) in place as a
    local path: ``file://`` URIs become paths, so every later step reads plain paths.

    Raises:
        UnsupportedSchemeError: a path given as a URL of another scheme, naming its flag.
    """
    for name in PATH_ARGUMENTS:
        value, flag = getattr(args, name, None), "--" + name.replace("_", "-")
        if isinstance(value, str):
            setattr(args, name, local_path(value, flag))
        elif isinstance(value, list):
            setattr(args, name, [local_path(v, flag) for v in value])
    if getattr(args, "table", None):
        args.table = [f"{name}={local_path(path, f'--table {name}')}"
                      for name, _, path in (spec.partition("=") for spec in args.table)]


def input_paths(args: argparse.Namespace) -> dict[str, list[str]]:
    """Every input path of a job by flag (``INPUT_ARGUMENTS`` and ``--table NAME=PATH``)."""
    found: dict[str, list[str]] = {}
    for name in INPUT_ARGUMENTS:
        value = getattr(args, name, None)
        if value:
            found["--" + name.replace("_", "-")] = [value] if isinstance(value, str) else list(value)
    for spec in getattr(args, "table", None) or []:
        name, _, path = spec.partition("=")
        found.setdefault(f"--table {name}", []).append(path)
    return found


# -- running a job ------------------------------------------------------------------------------


def error(job: str, e: BaseException, status: int = EXIT_USAGE) -> int:
    """Report an error on stderr, one line and no traceback; return ``status``, the exit status."""
    print(f"{job}: error: {e}", file=sys.stderr, flush=True)
    return status


def setup_logging() -> None:
    """afm-dist's progress at INFO on stderr; the libraries' (py4j, Horovod's launcher) from WARNING."""
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("afm_dist").setLevel(logging.INFO)


def run_spark_job(job: str, args: argparse.Namespace, work: Callable[[SparkSession, Path, C], T], *,
                  prepare: Callable[[], C] | None = None, report: Callable[[T, Path], None] | None = None,
                  spark: SparkSession | None = None, conf: Mapping[str, str] | None = None,
                  on_start: Callable[[SparkSession], None] | None = None, publish: bool = True,
                  failures: tuple[type[Exception], ...] = ()) -> int:
    """Run one job; return its exit status (see the module).

    Before Spark starts: ``check_common(args)``, the output apart from every input
    (``check_apart``: not one of them, not holding one, not inside one), every path one that
    Spark can read (``unreadable_by_spark``), ``prepare()`` (the job's own checks: schema,
    input plan, model; its result is handed to ``work``, None without ``prepare``) and the
    output path (``args.output``, ``args.overwrite``). Then
    ``work(spark, staging, prepared)`` writes into a staging directory beside
    ``args.output``, which is moved into place with the completion marker only when ``work``
    returns; ``report(result, output)`` prints the outcome.

    ``publish=False``: ``work`` writes ``args.output`` itself, in place, completion marker
    included (training: its checkpoints stay there for ``--resume``); ``prepare`` then checks
    the output path, and ``work`` is handed the output path rather than a staging directory.

    ``failures``: errors of the work after it started that the job reports in one line, exit
    status 1 (their cause was reported above them); so is a failure of the storage written to
    (``storage_failure``: a full disk, a read-only or failing filesystem); any other exception is
    a bug (traceback).

    ``spark``: an existing session to use and leave running (tests); otherwise one is built
    (``conf`` at build time, ``on_start`` right after) and stopped at the end.
    """
    setup_logging()
    try:
        check_common(args)
        inputs = input_paths(args)
        check_apart(Path(args.output).expanduser().resolve(), inputs)  # nothing read yet
        for flag, paths in inputs.items():  # files inside directories: the input plan checks them
            for path in paths:
                why = unreadable_by_spark(Path(path).expanduser().resolve())
                if why:
                    raise InputError(f"{flag} {why}")
        prepared = prepare() if prepare is not None else None
        output = validate_output_path(args.output, overwrite=args.overwrite) if publish else Path(args.output)
    except USER_ERRORS as e:
        return error(job, e)
    owned = spark is None
    if owned:
        spark = spark_session.build_session(f"afm-dist-{job}", conf=dict(conf or {}))
        spark.sparkContext.setLogLevel("WARN")
        if on_start is not None:
            on_start(spark)
    try:
        if publish:
            with publish_directory(output, overwrite=args.overwrite) as staging:
                result = work(spark, staging, prepared)
                mark_complete(staging)  # last: readers refuse a directory without it
        else:
            result = work(spark, output, prepared)
    except USER_ERRORS as e:  # found once Spark read the input: nothing was published
        return error(job, e)
    except failures as e:
        return error(job, e, EXIT_FAILED)
    except Exception as e:  # noqa: BLE001 - a failing disk is reported in one line; anything else is a bug
        cause = storage_failure(e)
        if cause is None:
            raise
        return error(job, f"writing {output} failed: {cause}; nothing was published (free space or fix the "
                          "filesystem, then run again)", EXIT_FAILED)
    finally:
        if owned:
            spark.stop()
    if report is not None:
        report(result, output)
    return EXIT_OK

"""Files and directories written so that readers never see half of them, and output-path checks.

One way to do each:

- ``atomic_path``: write a file beside its destination, fsync, then rename it into place
  (``write_text_atomic``, ``write_json_atomic``, and every weights, checkpoint and figure writer);
- ``replace_directory``: copy a directory beside its destination, then swap it in;
- ``publish_directory``: build a job's whole output directory aside and move it into place only
  when the job succeeded;
- ``validate_output_path``: refuse output paths that must not be (over)written, before any work;
- ``check_apart``: refuse an output that is, contains or lies inside one of the job's inputs;
- ``unreadable_by_spark``: the one kind of local path that Spark cannot be handed;
- ``storage_failure``: the storage's own error (a full disk, ...) behind a failed write;
- ``local_path``: a path or ``file://`` URI as a local path, any other URL scheme refused.

Supported filesystems: every path (data sets, model directories, checkpoints, job outputs) is
read and written with the local filesystem API, so a path is local, or on a shared mount (NFS,
a FUSE mount of HDFS or an object store) at the same path on every node; ``file://`` URIs name
such paths. URLs of other schemes (``hdfs://``, ``s3://``, ...) are refused before any work.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

FILE_SCHEME = "file://"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class OutputPathError(ValueError):
    """An output path that must not be written, with the reason and what to do."""


class UnsupportedSchemeError(ValueError):
    """A path given as a URL of a filesystem that afm-dist does not read or write directly."""


def local_path(raw: str, what: str) -> str:
    """``raw`` as a local path: a ``file://`` URI stripped to its path, any other path unchanged.

    ``what`` names the path in the error (e.g. ``--data``).

    Raises:
        UnsupportedSchemeError: ``raw`` is a URL of another scheme (``hdfs://``, ``s3://``, ...).
    """
    scheme = _URL.match(raw)
    if scheme and raw[:len(FILE_SCHEME)].lower() != FILE_SCHEME:
        raise UnsupportedSchemeError(
            f"{what} {raw}: {scheme.group(1)}:// paths are not supported; give a local path, a path on a "
            "filesystem mounted at the same place on every node (NFS, a FUSE mount of HDFS or S3), "
            "or a file:// URI")
    return raw[len(FILE_SCHEME):] if scheme else raw


def strip_file_scheme(path: str) -> str:
    """``file:///a/b`` -> ``/a/b``; any other path unchanged."""
    return path[len(FILE_SCHEME):] if path.startswith(FILE_SCHEME) else path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it to
    ``path``, so that readers see either the old file or the whole new one. On failure the
    temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented, key-sorted JSON atomically (see ``atomic_path``)."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def replace_directory(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a copy of the directory ``src``: copied beside ``dst`` first, then swapped in."""
    dst = Path(dst)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


_FORBIDDEN = {Path("/"), Path.home(), Path("/usr"), Path("/etc"), Path("/bin"), Path("/tmp")}


# The causes of a failed write that are the storage's, not the job's: errno -> as Java and the OS say it.
STORAGE_ERRORS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                  errno.EROFS: "Read-only file system", errno.EIO: "Input/output error",
                  errno.EACCES: "Permission denied"}


def storage_failure(e: BaseException) -> str | None:
    """The storage error behind ``e`` ("No space left on device", ...), or None when there is none.

    Looks at an ``OSError``'s errno anywhere in the exception's chain, and at the text of the chain,
    where a Spark writer's failure (``Py4JJavaError``, or the error PySpark converts it to) holds
    the Java exception of its cause.
    """
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRORS:
            return f"{e.filename}: {e.strerror}" if e.filename else e.strerror or STORAGE_ERRORS[e.errno]
        text = str(e)
        for message in STORAGE_ERRORS.values():
            if message in text:
                return message
        e = e.__cause__ or e.__context__
    return None


GLOB_CHARS = "[]{}*?\\"  # what Hadoop's glob reads as a pattern


def unreadable_by_spark(path: str | os.PathLike) -> str | None:
    """Why Spark's readers cannot name ``path``, or None. They expand glob patterns (afm-dist escapes
    the glob characters ``[ ] { } * ? \\``), and an escaped pattern is walked one name at a time,
    where Hadoop reads a name holding ':' as a URI scheme: a path with both cannot be read."""
    text = str(path)
    glob = next((c for c in text if c in GLOB_CHARS), None)
    if ":" in text and glob is not None:
        return (f"{text}: Spark cannot read a path that holds both ':' and {glob!r} (Hadoop reads the one as a "
                "URI scheme, the other as a glob pattern); rename it or move it to a path without one of them")
    return None


def check_apart(output: Path, inputs: Mapping[str, Iterable[str | os.PathLike]]) -> None:
    """Refuse an output directory that is, contains or lies inside one of the job's inputs.

    Publishing the output replaces the directory: an output equal to an input, or holding one,
    deletes that input (scoring ``--input D/test --output D/test`` replaced a data set's test
    split with scores, and the data set still looked complete); an output inside an input
    directory is read back as input by the next run that reads that directory.

    ``output``: the resolved output directory. ``inputs``: the input paths by flag (files or
    directories; absent ones are compared as given).

    Raises:
        OutputPathError: naming the flag, the input and what to do.
    """
    for flag, paths in inputs.items():
        for raw in paths:
            if raw is None or not str(raw).strip():
                continue
            source = Path(local_path(str(raw), flag)).expanduser().resolve()
            if source == output:
                raise OutputPathError(f"--output {output} is the {flag}: writing it would replace that input; "
                                      "choose another output directory")
            if output in source.parents:
                raise OutputPathError(f"--output {output} contains the {flag} {source}: writing it would delete "
                                      "that input; choose another output directory")
            if source in output.parents:
                raise OutputPathError(f"--output {output} lies inside the {flag} {source}: a later run would read "
                                      "the output as input; choose an output directory outside it")


def validate_output_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Check that ``path`` is a sane place to (re)create a job's output directory; return it resolved.

    Raises:
        UnsupportedSchemeError: a URL other than file://.
        OutputPathError: for an empty path, a system directory or the
            current directory (an ``--overwrite`` there would delete far more than a job's
            output), a file, an existing non-empty directory unless ``overwrite`` is set, or a path
            Spark cannot read back (``unreadable_by_spark``).
    """
    raw = str(path).strip()
    if not raw:
        raise OutputPathError("the output path is empty; pass a directory such as out/frappe")
    p = Path(local_path(raw, "output")).expanduser().resolve()
    if p in _FORBIDDEN or p == Path.cwd().resolve() or len(p.parts) < 3:
        raise OutputPathError(f"{p}: refusing to write job output there; choose a dedicated directory")
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{p}: exists and is not a directory")
    why = unreadable_by_spark(p)  # outputs are read back (split counts, predictions)
    if why:
        raise OutputPathError(why)
    if p.exists() and any(p.iterdir()) and not overwrite:
        raise OutputPathError(f"{p}: already exists; pass --overwrite to replace it")
    return p


@contextmanager
def publish_directory(final: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory beside ``final``; move it into place only if the block succeeds.

    A failure (or a kill) leaves ``final`` untouched and at most a ``.staging-*`` sibling that
    nothing reads. The caller writes its completion marker inside the block, last.

    Raises:
        OutputPathError: ``final`` appeared while the block ran and ``overwrite`` is not set.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputPathError(f"{final}: appeared while the job ran; pass --overwrite to replace it")
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)

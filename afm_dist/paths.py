"""Output-path validation and complete-or-absent directory publishing."""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from afm_dist.dataset import strip_file_scheme


class OutputPathError(ValueError):
    """An output path that must not be written, with the reason and what to do."""


_FORBIDDEN = {Path("/"), Path.home(), Path("/usr"), Path("/etc"), Path("/bin"), Path("/tmp")}


def validate_output_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Check that ``path`` is a sane place to (re)create a job's output directory.

    Refuses empty paths, URLs other than file://, system directories and the current directory
    (an ``--overwrite`` there would delete far more than a job's output), and an existing
    directory unless ``overwrite`` is set.
    """
    raw = str(path).strip()
    if not raw:
        raise OutputPathError("the output path is empty; pass a directory such as out/frappe")
    if "://" in raw and not raw.startswith("file://"):
        raise OutputPathError(
            f"{raw}: only local or shared-filesystem paths are supported for output "
            "(mount HDFS/S3 through a filesystem path, e.g. /dbfs/...)"
        )
    p = Path(strip_file_scheme(raw)).expanduser().resolve()
    if p in _FORBIDDEN or p == Path.cwd().resolve() or len(p.parts) < 3:
        raise OutputPathError(f"{p}: refusing to write job output there; choose a dedicated directory")
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{p}: exists and is not a directory")
    if p.exists() and any(p.iterdir()) and not overwrite:
        raise OutputPathError(f"{p}: already exists; pass --overwrite to replace it")
    return p


@contextmanager
def publish_directory(final: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory beside ``final``; move it into place only if the block succeeds.

    A failure (or a kill) leaves ``final`` untouched and at most a ``.staging-*`` sibling that
    nothing reads. The caller writes its completion marker inside the block, last.
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

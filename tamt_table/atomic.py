"""Writes that readers, and a crash, see whole or not at all: masks, checkpoints, run records, the results table.

A file is written under a temporary name beside its target, synced to disk, then renamed over the target
(``os.replace`` is atomic on POSIX filesystems): a reader sees the old file or the whole new one, and a crash
leaves at most a stray temporary file, never a half-written target. The target gets the permissions of any file
the user creates (0666 less the umask: 0644 under umask 022), whatever mode the writer gave the temporary file
(safetensors' ``save_file`` creates its files 0600). This module imports the standard library only: the table
format, the analysis and the training code (masks, checkpoints, run records, exports) share it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for the caller (or a library such as safetensors or pyarrow) to write
    a file to; once the block ends, the file is synced and renamed over ``path``. If the block raises, the
    temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fchmod(written.fileno(), new_file_mode())
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``data`` as the whole content of ``path``, atomically (:func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` sets it to read it, which
    other threads creating files at that moment would see)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions ``open(path, "w")`` gives a new file: 0666 less the umask."""
    return 0o666 & ~umask()

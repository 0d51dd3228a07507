"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything the library writes (checkpoints, metrics, records, caches, downloads) goes through
`atomic_write`: the bytes go to a temporary file in the target's directory, which is renamed
over the target only once it is complete (`os.replace` is atomic on POSIX and Windows when both
names are on one file system, hence the same directory). With `durable=True` the file is also
fsynced before the rename and the directory after it, so the new file survives a power cut, not
only a crash of this process: the price is two disk flushes, paid by checkpoints.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", durable: bool = False, **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on a clean exit rename it over `path`.

    On an exception the temporary file is removed and `path` is left as it was. A device or a
    pipe (`/dev/null`) is written through, never replaced.
    `open_kwargs` go to `open` (`newline=""` for CSV, an `encoding`).
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        # a device or a pipe (/dev/null, /dev/stdout): there is no file to replace, and a rename
        # would put a regular file where the device was; write through it
        with open(path, mode, **open_kwargs) as f:
            yield f
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)


def write_text_atomically(path: str | os.PathLike[str], text: str, durable: bool = False) -> None:
    """Write `text` to `path` with `atomic_write`."""
    with atomic_write(path, "w", durable=durable) as f:
        f.write(text)

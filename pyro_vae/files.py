"""File safety for what the command line and the library write: every problem with an output path
(a directory in the way, a missing or read-only folder, a full disk, an image suffix matplotlib
cannot write) as one line, found before any work is done for it.

The writing itself goes through `atomic` (`atomic_write`, `write_text_atomically`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .registry import UserError


def check_writable_file(path: str | os.PathLike[str]) -> None:
    """Fail now, in one line, if `path` cannot be written, before any work is done for it: a
    directory, a parent that is missing or a file, a folder without permission (`os.access`:
    root passes it), a file system that refuses files (/proc, read-only)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    parent = next((p for p in path.parents if p.exists()), None)
    if not path.parent.is_dir():
        what = f"{parent} is a file" if parent is not None and not parent.is_dir() else f"no directory {path.parent}"
        raise UserError(f"cannot write {path}: {what}")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"cannot write {path}: permission denied")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UserError(f"cannot write {path}: {path.parent} takes no new files ({error.strerror or error})") from None


def check_image_format(path: str | os.PathLike[str]) -> None:
    """Refuse, in one line, an image path whose suffix matplotlib cannot write (or that has none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    if Path(path).suffix.lower().lstrip(".") not in formats:
        raise UserError(f"--out {path}: name an image file ending in one of: {', '.join('.' + f for f in sorted(formats))}")


def make_directory(path: str | os.PathLike[str], what: str = "") -> None:
    """Create `path` and its parents, a failure as one line: "cannot create {what}{path}: ..."."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {what}{path}: {error.strerror or error}") from None


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """A failure to write `path` (the disk full, the folder gone) as one line."""
    try:
        yield
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None

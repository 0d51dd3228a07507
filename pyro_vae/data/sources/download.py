"""Downloading a dataset's files: from the first mirror that has each, checked against its
published SHA-256 before it is kept."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from ...atomic import atomic_write
from ...registry import UserError

CHUNK = 1 << 20


def download_file(base_urls: tuple[str, ...], name: str, directory: str | os.PathLike[str], sha256: str) -> Path:
    """Fetch `name` from the first base URL that has it into `directory`, and keep it only if
    its SHA-256 is `sha256`.

    The bytes go to a temporary file (`atomic_write`), hashed as they arrive; it is renamed into
    place once the digest matches. A file whose digest differs (corrupted in transit, or not the
    published file) is deleted, and the error names it, the expected and the actual digest.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=60) as response, atomic_write(directory / name) as f:
                digest = hashlib.sha256()
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
                if digest.hexdigest() != sha256:  # raised inside atomic_write: the file is not kept
                    raise UserError(
                        f"{name} downloaded from {url} has SHA-256 {digest.hexdigest()}, expected {sha256}: "
                        "corrupted or not the published file; deleted"
                    )
            return directory / name
        except OSError as error:
            errors.append(f"{url}: {error}")
    raise UserError(f"could not download {name}: " + "; ".join(errors))

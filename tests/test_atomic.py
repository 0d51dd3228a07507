"""The one atomic write: a reader sees the old file or the new one, and a device stays a device."""

import os
import stat
import threading

import pytest

from pyro_vae.atomic import atomic_write, write_text_atomically


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")
    write_text_atomically(path, "new\n", durable=True)
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_is_written_through_not_replaced(tmp_path):
    # as /dev/null or /dev/stdout would be: renaming a temporary file over one puts a regular file
    # where the device was (for /dev/null, for every process on the machine)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()), daemon=True)
    reader.start()
    write_text_atomically(pipe, "through\n")
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert received == ["through\n"]

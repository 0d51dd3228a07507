"""``--force`` clears every file the package writes into a run directory: ``RUN_OUTPUTS`` is complete."""

import re
from pathlib import Path

import pyro_vae
from pyro_vae.runs import RUN_OUTPUTS, clear_run_outputs

# A file of a run directory is written as `<run directory> / "name"` (out / "analogies.png",
# run / "config.toml", path.parent / "best.pt"). Files inside a tracker's own sub-folder
# (`folder / "run_id"` in RUN/mlflow) go with that folder, which RUN_OUTPUTS lists.
RUN_FILE = re.compile(r'\b(?:out|run|parent)\)? / "([\w.]+)"')


def test_every_file_the_package_writes_into_a_run_is_in_run_outputs(tmp_path):
    written = set()
    for source in Path(pyro_vae.__file__).parent.rglob("*.py"):
        written.update(RUN_FILE.findall(source.read_text()))
    assert {"analogies.png", "metrics.csv", "checkpoint.pt", "tensorboard"} <= written  # the pattern finds them
    assert written <= set(RUN_OUTPUTS), sorted(written - set(RUN_OUTPUTS))
    for name in written:
        (tmp_path / name).write_text("stale")
    (tmp_path / "notes.txt").write_text("the user's")
    clear_run_outputs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

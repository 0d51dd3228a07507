"""The MLflow and Weights & Biases loggers, offline: each records the config, every metrics column
per epoch (the learning rate included), the step losses and the run's figures; a resumed run
continues the same tracker run; and a tracker changes no number of the run."""

import json
import struct

import pytest
from conftest import tiny_config

from pyro_vae import train
from pyro_vae.registry import UserError
from pyro_vae.runs import read_metrics

FIGURES = {"reconstructions", "samples", "curves"}


def offline(monkeypatch):
    """No tracker reaches a server: MLflow's default local store, W&B's default offline mode."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A run logged to both trackers for 2 epochs, then resumed for a third (trackers take seconds
    to set up: MLflow creates its database, so one run serves every test)."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    run = tmp_path_factory.mktemp("trackers") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline(monkeypatch)
        train(tiny_config(train={"epochs": 2, "loggers": ["csv", "mlflow", "wandb"], "log_every": 5}), out=run)
        train(None, resume=run, overrides=["train.epochs=3"])
    return run


@pytest.mark.trains
def test_mlflow_records_config_metrics_lr_step_losses_and_figures_and_a_resume_continues_it(tracked):
    from mlflow.tracking import MlflowClient

    run = tracked
    rows = read_metrics(run / "metrics.csv")
    assert len(rows) == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    run_id = (run / "mlflow" / "run_id").read_text().strip()
    recorded = client.get_run(run_id)
    assert recorded.info.status == "FINISHED"
    assert recorded.data.params["train.lr"] == "0.001" and recorded.data.params["model.latent_dim"] == "4"
    for key in ("val_elbo", "lr", "train_kl", "kl_0"):
        history = sorted(client.get_metric_history(run_id, key), key=lambda metric: metric.step)
        assert [(metric.step, metric.value) for metric in history] == [(row["epoch"], pytest.approx(row[key])) for row in rows]
    assert len(client.get_metric_history(run_id, "step_train_loss")) == rows[-1]["step"] // 5
    artifacts = {info.path for info in client.list_artifacts(run_id)} | {
        info.path for info in client.list_artifacts(run_id, "figures")}
    assert {"config.toml"} | {f"figures/{name}.png" for name in FIGURES} <= artifacts
    assert len(client.search_runs([recorded.info.experiment_id])) == 1  # the resume continued it


def wandb_records(path):
    """The records of an offline W&B run file: a 7-byte header, then LevelDB-style log records
    (checksum, length, type: 1 full, 2 first, 3 middle, 4 last) in blocks of 32 KiB."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.trains
def test_wandb_offline_records_config_metrics_lr_step_losses_and_figures(tracked):
    run = tracked
    rows = read_metrics(run / "metrics.csv")
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))  # the resume's offline part beside the first
    assert len({file.name for file in files}) == 1  # one W&B run id: the resume continues it
    config, history = {}, []
    for record in (record for file in files for record in wandb_records(file)):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    assert config["train"]["lr"] == 0.001 and config["model"]["latent_dim"] == 4
    epochs = [entry for entry in history if "epoch" in entry]
    for key in ("val_elbo", "lr", "train_kl"):
        assert [json.loads(entry[f"epoch/{key}"]) for entry in epochs] == pytest.approx([row[key] for row in rows])
    assert [json.loads(entry["epoch"]) for entry in epochs] == [1, 2, 3]
    assert len([entry for entry in history if "step/train_loss" in entry]) == rows[-1]["step"] // 5
    images = {path.name.split("_")[0] for path in files[-1].parent.glob("files/media/images/figures/*.png")}
    assert images == FIGURES


@pytest.mark.trains
def test_trackers_change_no_number_of_the_run(tracked, tmp_path):
    plain = read_metrics(train(tiny_config(train={"epochs": 3}), out=tmp_path / "plain") / "metrics.csv")
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(tracked / "metrics.csv")] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in plain]


@pytest.mark.parametrize("name, module", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_tracker_package_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch, name, module):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # import fails
    with pytest.raises(UserError, match=rf'needs the {name} package: pip install "pyro-vae\[{name}\]"'):
        train(tiny_config(train={"loggers": [name]}), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()

"""Datasets: the IDX reader, MNIST-format directories, download, npz, binarization."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from pyro_vae.data import Split, load_data, read_idx
from pyro_vae.registry import UserError

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_mnist(directory, n_train=24, n_test=6, gz=True):
    rng = np.random.RandomState(0)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, n_test),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / (name + suffix), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_what_was_written(tmp_path, gz):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(path, array)
    assert np.array_equal(read_idx(path), array)


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.idx"
    write_idx(path, np.zeros((4, 5)))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(path)


def test_mnist_directory_loads_scaled_splits(tmp_path):
    arrays = write_mnist(tmp_path / "mnist")
    data = load_data("mnist", path=str(tmp_path / "mnist"))
    assert data.shape == (1, 28, 28)
    assert (len(data.train), len(data.valid), len(data.test)) == (20, 4, 6)
    expected = torch.tensor(arrays["train-images-idx3-ubyte"][:20] / 255.0, dtype=torch.float32)
    assert torch.allclose(data.train.x[:, 0], expected)
    assert data.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def serve_mnist(tmp_path, monkeypatch, digests=None):
    """Generated MNIST files behind a local mirror (after one that lacks them), as `MNIST`'s
    download table: their own SHA-256 digests, or `digests` where given."""
    write_mnist(tmp_path / "mirror", gz=True)
    from pyro_vae.data import MNIST

    monkeypatch.setattr(MNIST, "urls", (f"file://{tmp_path / 'nowhere'}", f"file://{tmp_path / 'mirror'}"))
    monkeypatch.setattr(MNIST, "sha256", digests or {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in (tmp_path / "mirror").iterdir()})


def test_download_fetches_missing_files(tmp_path, monkeypatch):
    serve_mnist(tmp_path, monkeypatch)
    data = load_data("mnist", path=str(tmp_path / "fetched"), download=True)
    assert len(data.test) == 6
    assert sorted(p.name for p in (tmp_path / "fetched").iterdir()) == sorted(
        p.name for p in (tmp_path / "mirror").iterdir())  # the four files, and no temporary one


def test_a_download_of_the_wrong_digest_is_one_line_and_not_kept(tmp_path, monkeypatch):
    expected = {name + ".gz": "0" * 64 for name in IDX_STEMS}
    serve_mnist(tmp_path, monkeypatch, expected)
    actual = hashlib.sha256((tmp_path / "mirror" / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    with pytest.raises(UserError) as error:
        load_data("mnist", path=str(tmp_path / "fetched"), download=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith("train-images-idx3-ubyte.gz downloaded from file://")
    assert f"has SHA-256 {actual}, expected {'0' * 64}" in message
    assert list((tmp_path / "fetched").iterdir()) == []  # neither the file nor its temporary copy


def test_published_digests_are_listed_for_every_downloadable_file():
    from pyro_vae.data import MNIST, BinarizedMNIST, FashionMNIST

    for source in (MNIST, FashionMNIST):
        assert sorted(source.sha256) == sorted(name + ".gz" for name in IDX_STEMS)
    assert sorted(BinarizedMNIST.sha256) == [f"binarized_mnist_{s}.amat" for s in ("test", "train", "valid")]
    for source in (MNIST, FashionMNIST, BinarizedMNIST):
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in source.sha256.values())


def test_missing_files_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="set data.download = true"):
        load_data("mnist", path=str(tmp_path))


def test_digits_and_binarization():
    data = load_data("digits", binarize="none")
    assert data.shape == (1, 8, 8) and (len(data.train), len(data.valid), len(data.test)) == (1297, 250, 250)
    assert 0 <= data.train.x.min() and data.train.x.max() <= 1
    static = load_data("digits", binarize="static")
    assert set(static.train.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(static.train.x, load_data("digits", binarize="static").train.x)

    dynamic = load_data("digits", binarize="dynamic")
    g = torch.Generator().manual_seed(0)
    first = torch.cat(list(dynamic.train_batches(2000, 0, g, "cpu")))
    second = torch.cat(list(dynamic.train_batches(2000, 0, g, "cpu")))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first.sum(0), second.sum(0))  # a fresh draw each epoch
    # The draws are unbiased: pixel means match the grey levels.
    assert abs(first.mean() - dynamic.train.x.mean()) < 0.01


def test_npz_with_and_without_splits(tmp_path):
    np.savez(tmp_path / "own.npz", train=np.random.rand(100, 5))
    data = load_data("npz", path=str(tmp_path / "own.npz"))
    assert (len(data.train), len(data.valid), len(data.test)) == (80, 10, 10) and data.shape == (5,)
    np.savez(tmp_path / "bad.npz", train=np.full((10, 5), np.nan))
    with pytest.raises(UserError, match="NaN or inf"):
        load_data("npz", path=str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "empty.npz", train=np.zeros((0, 5)), valid=np.zeros((2, 5)), test=np.zeros((2, 5)))
    with pytest.raises(UserError, match="train split is empty"):
        load_data("npz", path=str(tmp_path / "empty.npz"))


def test_a_directory_given_as_the_npz_file_is_named_a_directory(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError) as error:
        load_data("npz", path=str(tmp_path / "runs"))
    assert str(error.value) == f"data.path: {tmp_path / 'runs'} is a directory, not a file; give the path of an .npz file"


def test_a_text_file_given_as_npz_is_not_an_npz_and_no_advice_to_unpickle(tmp_path):
    (tmp_path / "notes.npz").write_text("these are notes, not arrays\n")
    with pytest.raises(UserError) as error:
        load_data("npz", path=str(tmp_path / "notes.npz"))
    assert str(error.value) == (f"{tmp_path / 'notes.npz'} is not an .npz file (a zip archive of .npy arrays, "
                                "as np.savez writes)")


def test_an_npz_with_object_arrays_is_refused_without_advice_to_unpickle(tmp_path):
    np.savez(tmp_path / "objects.npz", train=np.random.rand(10, 3), names=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UserError) as error:
        load_data("npz", path=str(tmp_path / "objects.npz"))
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'objects.npz'}: array 'names' holds Python objects, which are not read")
    assert "allow_pickle" not in message and "\n" not in message


def test_binarized_mnist_amat(tmp_path):
    for split, n in (("train", 3), ("valid", 2), ("test", 2)):
        np.savetxt(tmp_path / f"binarized_mnist_{split}.amat", np.random.randint(0, 2, (n, 784)), fmt="%d")
    data = load_data("binarized-mnist", path=str(tmp_path))
    assert data.shape == (1, 28, 28) and len(data.valid) == 2


def test_random_subset_of_a_class_sorted_split_is_seeded_and_unbiased():
    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, like binarized MNIST's test split
    split = Split(labels.float()[:, None], labels)
    subset = split.random_subset(100)
    assert len(subset) == 100 and len(set(subset.labels.tolist())) == 10  # the first 100 hold one class
    assert torch.equal(subset.x[:, 0], subset.labels.float())  # images and labels drawn together
    assert torch.equal(split.random_subset(100).labels, subset.labels)  # seeded: the same every time
    assert not torch.equal(split.random_subset(100, seed=1).labels, subset.labels)
    assert split.random_subset(None) is split and split.random_subset(5000) is split
    with pytest.raises(UserError, match="at least one example"):
        split.random_subset(0)


def test_data_subset_keeps_seeded_examples_of_the_binarized_data_in_order():
    from pyro_vae.build import build_data
    from pyro_vae.config import check_config

    def data(**options):
        return build_data(check_config({"data": {"name": "digits", "binarize": "static", **options}}))

    full = data()
    small = data(subset={"train": 100, "test": 50}, subset_seed=3)
    assert (len(small.train), len(small.valid), len(small.test)) == (100, len(full.valid), 50)
    index = torch.randperm(len(full.train), generator=torch.Generator().manual_seed(3))[:100].sort().values
    assert torch.equal(small.train.x, full.train.x[index])  # the full data's binarized images, in order
    assert torch.equal(small.train.labels, full.train.labels[index])
    assert torch.equal(small.valid.x, full.valid.x)
    other = data(subset={"train": 100}, subset_seed=4)
    assert not torch.equal(other.train.x, small.train.x)
    labeled = data(subset={"train": 100}, subset_seed=3, labeled=20)  # the labels kept are among the subset's
    assert int((labeled.train.labels >= 0).sum()) == 20 and torch.equal(labeled.train.x, small.train.x)


def test_data_subset_applies_to_arrays_given_in_python_and_leaves_them_alone():
    from pyro_vae.build import build_data
    from pyro_vae.config import check_config
    from pyro_vae.data import as_data

    given = as_data({"train": torch.rand(40, 4), "valid": torch.rand(10, 4), "test": torch.rand(10, 4)})
    small = build_data(check_config({"data": {"subset": {"train": 7}}, "model": {"likelihood": "gaussian"}}),
                       data=given)
    assert len(small.train) == 7 and len(given.train) == 40

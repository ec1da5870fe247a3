"""The shipped digits, the IDX reader/writer, and MNIST downloads tested offline."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from nnflow.data import IDXError, datasets, digits, fashion_mnist, mnist, read_idx, write_idx


def test_digits_split_shapes_and_values():
    x_train, y_train = digits("train")
    x_test, y_test = digits("test")
    assert x_train.shape == (1442, 1, 8, 8) and x_test.shape == (355, 1, 8, 8)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() == 1.0
    assert sorted(set(y_train.tolist())) == list(range(10))
    assert np.bincount(y_test).min() >= 30  # every class in the test split
    x_all, y_all = digits("all", flatten=True)
    assert x_all.shape == (1797, 64)
    assert len(x_all) == len(x_train) + len(x_test) == 1797
    assert np.bincount(y_all).tolist() == (np.bincount(y_train) + np.bincount(y_test)).tolist()
    x_train[...] = 0  # callers get their own arrays
    assert digits("train")[0].max() == 1.0
    with pytest.raises(ValueError, match="split must be 'train', 'test' or 'all', got 'val'"):
        digits("val")


def test_digits_ship_inside_the_package_and_are_credited():
    assert (Path(datasets.__file__).parent / "digits.csv.gz").is_file()
    assert "Alpaydin" in digits.__doc__ and "CC BY 4.0" in digits.__doc__


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a-idx", "a-idx.gz"])
def test_idx_round_trip(tmp_path, dtype, name):
    x = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / name, x)
    y = read_idx(tmp_path / name)
    assert y.dtype == np.dtype(dtype) and y.dtype.isnative
    np.testing.assert_array_equal(x, y)


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(IDXError, match="bad-idx' is not an IDX file"):
        read_idx(bad)
    write_idx(tmp_path / "short-idx", np.zeros((4, 4), np.uint8))
    (tmp_path / "cut-idx").write_bytes((tmp_path / "short-idx").read_bytes()[:-3])
    with pytest.raises(IDXError, match=r"cut-idx'.*shape \(4, 4\).*but 13 bytes follow"):
        read_idx(tmp_path / "cut-idx")
    (tmp_path / "notgz-idx.gz").write_bytes(b"plain")
    with pytest.raises(IDXError, match="cannot read IDX file .*notgz-idx.gz"):
        read_idx(tmp_path / "notgz-idx.gz")
    with pytest.raises(IDXError, match="cannot store dtype int64"):
        write_idx(tmp_path / "x-idx", np.zeros(2, np.int64))


def fake_mnist(folder: Path, n: int = 6) -> dict[str, str]:
    """Write tiny MNIST-format files into ``folder``; returns their SHA-256 registry."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    registry = {}
    for prefix, count in (("train", n), ("t10k", n // 2)):
        files = {
            f"{prefix}-images-idx3-ubyte.gz": rng.integers(0, 256, (count, 28, 28), np.uint8),
            f"{prefix}-labels-idx1-ubyte.gz": np.arange(count, dtype=np.uint8) % 10,
        }
        for name, array in files.items():
            path = folder / name
            dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            raw = bytes([0, 0, 0x08, array.ndim]) + dims + array.tobytes()  # the IDX layout
            path.write_bytes(gzip.compress(raw, mtime=0))
            registry[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return registry


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """MNIST's registry pointed at fake files, and a downloader that copies them (no network)."""
    pytest.importorskip("pooch")
    source = tmp_path / "server"
    registry = fake_mnist(source)
    monkeypatch.setitem(datasets.MNIST, "files", registry)
    monkeypatch.setitem(datasets.MNIST, "mirrors", ["https://mirror.invalid/mnist/"])
    downloads = []

    def copy(url, output_file, pooch_instance, check_only=False):
        downloads.append(url)
        shutil.copyfile(source / url.rsplit("/", 1)[1], output_file)

    monkeypatch.setattr(datasets, "DOWNLOADER", copy)
    return tmp_path / "cache", source, downloads


def test_mnist_downloads_once_then_reads_the_cache(offline):
    cache, _, downloads = offline
    x, y = mnist("train", root=cache)
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32 and y.tolist() == [0, 1, 2, 3, 4, 5]
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(downloads) == 2 and (cache / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    x2, _ = mnist("train", root=cache, flatten=True)
    assert len(downloads) == 2 and x2.shape == (6, 784)  # cached: nothing downloaded again
    assert mnist("test", root=cache)[0].shape == (3, 1, 28, 28) and len(downloads) == 4


def test_mnist_environment_variable_sets_the_cache(offline, monkeypatch):
    cache, _, _ = offline
    monkeypatch.setenv("NNFLOW_DATA", str(cache / "env"))
    mnist("test")
    assert (cache / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_mnist_corrupt_download_fails_the_checksum(offline):
    cache, source, _ = offline
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    with pytest.raises(RuntimeError, match=r"could not get t10k-labels-idx1-ubyte.gz(.|\n)*hash"):
        mnist("test", root=cache)
    assert not (cache / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_mnist_corrupt_cache_is_downloaded_again(offline):
    cache, _, downloads = offline
    mnist("test", root=cache)
    (cache / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"bit rot")
    x, _ = mnist("test", root=cache)
    assert x.shape == (3, 1, 28, 28) and len(downloads) == 3


def test_fashion_mnist_uses_its_own_registry_and_folder(tmp_path, monkeypatch):
    pytest.importorskip("pooch")
    registry = fake_mnist(tmp_path / "cache" / "fashion_mnist")  # already in the cache
    monkeypatch.setitem(datasets.FASHION_MNIST, "files", registry)
    monkeypatch.setattr(datasets, "DOWNLOADER", lambda *a, **k: pytest.fail("no download"))
    x, y = fashion_mnist("train", root=tmp_path / "cache")
    assert x.shape == (6, 1, 28, 28) and y.dtype == np.int64


def test_without_pooch_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pooch", None)
    with pytest.raises(ImportError, match=r"pip install 'nnflow\[data\]'"):
        mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        mnist("valid", root=tmp_path)

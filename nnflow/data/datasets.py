"""Datasets: the 8x8 digits shipped with nnflow, and MNIST / Fashion-MNIST downloaded once.

Every loader returns ``(images, labels)``: images ``float32`` in ``[0, 1]`` shaped
``(N, 1, H, W)`` (NCHW, ready for convolutions; ``flatten=True`` gives ``(N, H * W)``), and
labels ``int64``.

Downloads go through `pooch <https://www.fatiando.org/pooch>`_ (an optional dependency:
``pip install 'nnflow[data]'``), which caches each file once and checks its SHA-256. The cache
folder is ``root``, else ``$NNFLOW_DATA``, else the user cache folder (``~/.cache/nnflow`` on
Linux).
"""

from __future__ import annotations

import functools
import gzip
import os
import sys
from importlib import resources
from typing import Any

import numpy as np

from .idx import read_idx

__all__ = ["digits", "mnist", "fashion_mnist", "cache_dir"]


def digits(split: str = "train", flatten: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The UCI 8x8 handwritten digits, shipped inside nnflow: no download.

    Source: "Optical Recognition of Handwritten Digits", E. Alpaydin and C. Kaynak (1998), UCI
    Machine Learning Repository, license CC BY 4.0 — the copy of its test set widely
    redistributed with Python libraries: 1797 images of 8x8 pixels (values 0..16, scaled here to
    ``[0, 1]``), labels 0..9, about 180 of each.

    The split is fixed, stratified and needs no random generator: the 5th, 10th, 15th, ...
    image of each digit (in file order) is in the test set (355 images, 34 to 36 per digit),
    the others in the training set (1442).

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        flatten: images as ``(N, 64)`` instead of ``(N, 1, 8, 8)``.

    >>> x, y = digits("test")
    >>> x.shape, x.dtype, y.shape, y.dtype
    ((355, 1, 8, 8), dtype('float32'), (355,), dtype('int64'))
    >>> digits("train", flatten=True)[0].shape
    (1442, 64)
    """
    table = _digits_table()
    test = _digits_test_rows()
    select = {"train": ~test, "test": test, "all": np.ones_like(test)}.get(split)
    if select is None:
        raise ValueError(f"digits: split must be 'train', 'test' or 'all', got {split!r}")
    images = (table[select, :64] / np.float32(16)).astype(np.float32)
    labels = table[select, 64].astype(np.int64)
    return (images if flatten else images.reshape(-1, 1, 8, 8)), labels


@functools.cache
def _digits_table() -> np.ndarray:
    data = resources.files(__package__).joinpath("digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(data).decode().splitlines(), delimiter=",", dtype=np.uint8)
    table.setflags(write=False)  # cached: callers get fresh arrays computed from it
    return table


def _digits_test_rows() -> np.ndarray:
    """Rows in the test split: every 5th occurrence of each label."""
    labels = _digits_table()[:, 64]
    rank = np.zeros(len(labels), np.int64)  # how many earlier rows share the label
    for digit in range(10):
        rows = labels == digit
        rank[rows] = np.arange(rows.sum())
    return rank % 5 == 4


# -- MNIST-format datasets, downloaded once ------------------------------------------------------
MNIST = {
    "mirrors": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "files": {  # SHA-256 of each gzipped file
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    },
}
FASHION_MNIST = {
    "mirrors": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ],
    "files": {
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
        ),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
        ),
    },
}
DOWNLOADER: Any = None  # a pooch downloader (tests put one here that copies local files)


def cache_dir(root: str | os.PathLike | None = None) -> str:
    """The folder downloads are cached in (``root``, ``$NNFLOW_DATA`` or the user cache).

    >>> cache_dir("/tmp/data")
    '/tmp/data'
    """
    if root is not None:
        return os.fspath(root)
    if os.environ.get("NNFLOW_DATA"):
        return os.environ["NNFLOW_DATA"]
    return os.path.join(os.path.expanduser("~"), ".cache", "nnflow")


def mnist(
    split: str = "train", root: str | os.PathLike | None = None, flatten: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST (LeCun, Cortes and Burges): 60,000 training and 10,000 test images of 28x28.

    Downloaded on first use into ``cache_dir(root)/mnist`` and checked against SHA-256; later
    calls read the cache. Needs ``pooch`` (``pip install 'nnflow[data]'``).

    Args:
        split: ``"train"`` or ``"test"``.
        root: the cache folder (see ``cache_dir``).
        flatten: images as ``(N, 784)`` instead of ``(N, 1, 28, 28)``.

    Example (downloads 11 MB the first time)::

        x, y = nnflow.data.mnist("test")   # float32 (10000, 1, 28, 28), int64 (10000,)
    """
    return _load_idx_pair("mnist", MNIST, split, root, flatten)


def fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None, flatten: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando Research, MIT license).

    The same format, sizes and arguments as :func:`mnist`; 10 classes of clothing.

    Example (downloads 30 MB the first time)::

        x, y = nnflow.data.fashion_mnist("train")
    """
    return _load_idx_pair("fashion_mnist", FASHION_MNIST, split, root, flatten)


def _load_idx_pair(name: str, spec: dict, split: str, root, flatten: bool):
    if split not in ("train", "test"):
        raise ValueError(f"{name}: split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    folder = os.path.join(cache_dir(root), name)
    images = read_idx(_fetch(name, spec, f"{prefix}-images-idx3-ubyte.gz", folder))
    labels = read_idx(_fetch(name, spec, f"{prefix}-labels-idx1-ubyte.gz", folder))
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{name}: {split} images have shape {images.shape} and labels {labels.shape}; "
            f"expected (N, H, W) and (N,)"
        )
    x = (images / np.float32(255)).astype(np.float32)
    x = x.reshape(len(x), -1) if flatten else x[:, None]
    return x, labels.astype(np.int64)


def _fetch(name: str, spec: dict, filename: str, folder: str) -> str:
    """The path of ``filename`` in ``folder``, downloaded and verified first if needed."""
    try:
        import pooch
    except ImportError:
        raise ImportError(
            f"nnflow.data.{name}() downloads its files with pooch, which is not installed: "
            f"pip install 'nnflow[data]'  (or: pip install pooch)"
        ) from None
    known_hash = "sha256:" + spec["files"][filename]
    errors = []
    for mirror in spec["mirrors"]:
        try:
            return pooch.retrieve(
                mirror + filename,
                known_hash=known_hash,
                fname=filename,
                path=folder,
                downloader=DOWNLOADER,
                progressbar=sys.stderr.isatty(),
            )
        except Exception as error:  # network errors, HTTP errors, checksum mismatches
            errors.append(f"  {mirror + filename}: {type(error).__name__}: {error}")
    raise RuntimeError(
        f"nnflow.data.{name}: could not get {filename} into {folder}; tried:\n" + "\n".join(errors)
    )

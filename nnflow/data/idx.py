"""The IDX file format of MNIST-style datasets: read and write, gzipped or not.

An IDX file is a 4-byte magic number — two zero bytes, a type code, the number of dimensions
— then each dimension as a big-endian uint32, then the values, big-endian, in C order.
(LeCun et al., "The MNIST database of handwritten digits".)

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "x-idx2-ubyte.gz")
>>> write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
>>> read_idx(path).tolist()
[[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

__all__ = ["read_idx", "write_idx", "IDXError"]

_DTYPES = {  # type code -> big-endian dtype
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}


class IDXError(ValueError):
    """A file that is not valid IDX; the message names the file and what is wrong."""


def _open(path: str | os.PathLike, mode: str):
    return gzip.open(path, mode) if os.fspath(path).endswith(".gz") else open(path, mode)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the IDX file ``path`` (``.gz`` files are decompressed).

    Returns a native-endian array of the file's type (``uint8`` for MNIST images and labels).

    Raises:
        IDXError: a bad magic number, an unknown type code or a size that does not match.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> write_idx(path, np.array([7, 2, 1], np.uint8))
    >>> read_idx(path)
    array([7, 2, 1], dtype=uint8)
    """
    try:
        with _open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise IDXError(f"cannot read IDX file {os.fspath(path)!r}: {error}") from error
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _DTYPES:
        raise IDXError(
            f"{os.fspath(path)!r} is not an IDX file (magic bytes {data[:4].hex() or 'missing'})"
        )
    ndim, dtype = data[3], _DTYPES[data[2]]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{os.fspath(path)!r}: IDX header truncated ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXError(
            f"{os.fspath(path)!r}: header says shape {shape} ({expected} bytes of {dtype.name}) "
            f"but {len(data) - header} bytes follow"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` in IDX format (gzipped when the name ends in ``.gz``).

    Supported dtypes: uint8, int8, int16, int32, float32, float64.

    >>> import os, tempfile
    >>> write_idx(os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte.gz"), np.zeros(3, np.float32))
    """
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise IDXError(f"write_idx: IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with _open(path, "wb") as f:
        f.write(header + array.astype(_DTYPES[code], copy=False).tobytes())

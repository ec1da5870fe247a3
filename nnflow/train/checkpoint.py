"""HDF5 checkpoints (h5py): atomic writes, no pickle, and validation before anything changes.

File layout (every group in creation order)::

    /                     attrs: format, format_version, nnflow_version, created, model_class,
                                 meta (JSON: the user's metadata)
    /model/layers/0/weight        one dataset per parameter and buffer path (attr kind)
    /optimizer            attrs: class, hyper (JSON: lr and the other hyper-parameters)
    /optimizer/state/layers/0/weight/exp_avg      the per-path state, mirroring the model
    /rng                  attrs: one per generator the model holds (JSON bit_generator.state)
    /trainer              attrs: epoch, step, state (JSON: data position, history, callbacks)

A path component is written as ``str(key)`` with ``%``, ``/`` and a leading ``.`` escaped
(``urllib`` quoting). Writes go to a temporary file in the same folder, which is flushed,
fsynced and renamed over the target (``os.replace``): a process killed at any moment leaves
the old checkpoint or the new one, never a broken one. Loading reads no Python objects
(nothing is unpickled; object, string and compound datasets are refused), checks every key,
shape and dtype first, and on any problem raises one ``CheckpointError`` listing them all,
leaving the model and optimizer untouched. dtypes must match exactly: a float64 checkpoint
does not load into a float32 model (cast one of them explicitly).

>>> import os, tempfile
>>> import numpy as np
>>> params = {"w": np.ones(2, np.float32)}
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.h5")
>>> save(path, params, note="first")
>>> params["w"][:] = 0
>>> load(path, params), params["w"].tolist()
({'note': 'first'}, [1.0, 1.0])
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import types
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import get_array_module, to_device
from ..tree import buffer_paths, get_path, is_array, leaves, set_path

__all__ = ["CheckpointError", "save", "load", "write_checkpoint", "read_checkpoint", "generators"]

FORMAT, FORMAT_VERSION = "nnflow-checkpoint", 1


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; ``problems`` lists every reason found.

    >>> print(CheckpointError("run.h5", ["model: missing 'w'", "model: unexpected 'v'"]))
    cannot load checkpoint 'run.h5' (2 problems):
      - model: missing 'w'
      - model: unexpected 'v'
    """

    def __init__(self, path: Any, problems: list[str]):
        self.path, self.problems = os.fspath(path), list(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "".join(f"\n  - {p}" for p in problems)
        super().__init__(f"cannot load checkpoint {self.path!r} ({count}):{lines}")


def _h5py():
    try:
        import h5py
    except ImportError:  # a required dependency, but give the fix rather than a traceback
        raise ImportError("nnflow checkpoints need h5py: pip install h5py") from None
    return h5py


# -- what a model holds --------------------------------------------------------------------------
def model_arrays(model: Any) -> dict[tuple, Any]:
    """``{path: array}`` a checkpoint stores: ``model.state_dict()`` (parameters and persistent
    buffers) for an ``nnflow.Model``, every numeric array for any other object.

    >>> list(model_arrays({"w": np.ones(1), "name": "x"}))
    [('w',)]
    """
    if hasattr(model, "state_dict") and callable(model.state_dict):
        return dict(model.state_dict())
    return {p: x for p, x in leaves(model) if np.dtype(x.dtype).kind in "biufc"}


_SKIP = (types.FunctionType, types.MethodType, types.ModuleType, type, str, bytes)


def generators(model: Any) -> dict[tuple, np.random.Generator]:
    """``{path: generator}`` for every NumPy ``Generator`` the model holds (e.g. Dropout's).

    >>> class Drop:
    ...     def __init__(self):
    ...         self.rng = np.random.default_rng(0)
    >>> list(generators({"layers": [Drop()]}))
    [('layers', 0, 'rng')]
    """
    found: dict[tuple, np.random.Generator] = {}
    seen: set[int] = set()

    def walk(x: Any, path: tuple) -> None:
        if id(x) in seen or is_array(x) or isinstance(x, _SKIP) or x is None:
            return
        seen.add(id(x))
        if isinstance(x, np.random.Generator):
            found[path] = x
        elif isinstance(x, dict):
            for key, value in x.items():
                walk(value, path + (key,))
        elif isinstance(x, (list, tuple)):
            for i, value in enumerate(x):
                walk(value, path + (i,))
        elif hasattr(x, "__dict__") and not isinstance(x, (int, float, complex, bool)):
            for key, value in vars(x).items():
                walk(value, path + (key,))

    walk(model, ())
    return found


# -- names and JSON ----------------------------------------------------------------------------
def encode(path: tuple) -> str:
    """The HDF5 name of ``path``: ``("layers", 0, "weight")`` -> ``"layers/0/weight"``.

    >>> encode(("a/b", 0, ".hidden"))
    'a%2Fb/0/%2Ehidden'
    """
    parts = []
    for key in path:
        text = urllib.parse.quote(str(key), safe="")
        parts.append("%2E" + text[1:] if text.startswith(".") else text or "%00")
    return "/".join(parts)


def decode(name: str) -> str:
    """The dotted, readable form of an HDF5 name (for messages and ``nnflow info``).

    >>> decode("layers/0/weight")
    'layers.0.weight'
    """
    return ".".join(urllib.parse.unquote(part) for part in name.split("/"))


def to_json(value: Any) -> str:
    """JSON of ``value``; NumPy scalars and arrays become numbers and tagged lists."""

    def default(x):
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return {"__ndarray__": x.tolist(), "dtype": x.dtype.str}
        raise TypeError(f"{type(x).__name__} is not JSON serializable")

    return json.dumps(value, default=default)


def from_json(text: str) -> Any:
    """Inverse of :func:`to_json`.

    >>> from_json(to_json({"k": np.arange(2)}))["k"]
    array([0, 1])
    """

    def hook(d):
        return np.array(d["__ndarray__"], dtype=d["dtype"]) if "__ndarray__" in d else d

    return json.loads(text, object_hook=hook)


def _describe(x: Any) -> str:
    return f"{np.dtype(x.dtype).name}{list(x.shape)}"


# -- writing ---------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(h5file)`` on a temporary file, then fsync it and rename it to ``path``.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.h5")
    >>> atomic_write(path, lambda f: f.attrs.update(answer=42))
    >>> os.listdir(os.path.dirname(path))  # no temporary left behind
    ['x.h5']
    """
    h5py = _h5py()
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            write(f)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _remove_stale_temporaries(folder, name)


def _remove_stale_temporaries(folder: str, name: str) -> None:
    """Delete temporaries that killed writers left behind (their process no longer exists)."""
    prefix = f".{name}.tmp-"
    for entry in os.listdir(folder):
        pid = entry[len(prefix) :]
        if not entry.startswith(prefix) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, entry))
        except OSError:  # PermissionError: alive, someone else's
            pass


def _dataset(root: Any, name: str, data: Any, **attrs: Any) -> None:
    group = root
    parts = name.split("/")
    for part in parts[:-1]:
        group = group[part] if part in group else group.create_group(part, track_order=True)
    ds = group.create_dataset(parts[-1], data=data)
    ds.attrs.update(attrs)


def write_checkpoint(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any = None,
    trainer: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write model, optimizer, generator and trainer state to ``path`` atomically.

    ``trainer`` is a JSON-able dict (``Trainer.state_dict()``), ``meta`` the user metadata.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.h5")
    >>> write_checkpoint(path, {"w": np.ones(2)}, trainer={"epoch": 3, "step": 30})
    >>> read_checkpoint(path, {"w": np.zeros(2)})["trainer"]
    {'epoch': 3, 'step': 30}
    """
    from .. import __version__

    meta_json = _meta_json(meta or {})
    arrays = {encode(p): (p, to_device(x, "cpu")) for p, x in model_arrays(model).items()}
    if len(arrays) != len(model_arrays(model)):
        raise ValueError("checkpoint: two model paths map to the same name (keys '0' and 0?)")
    buffers = buffer_paths(model)
    rngs = {encode(p): to_json(g.bit_generator.state) for p, g in generators(model).items()}

    def write(f):
        f.attrs.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            nnflow_version=__version__,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            model_class=f"{type(model).__module__}.{type(model).__qualname__}",
            meta=meta_json,
        )
        group = f.create_group("model", track_order=True)
        for name, (path_, x) in arrays.items():
            _dataset(group, name, x, kind="buffer" if path_ in buffers else "parameter")
        if optimizer is not None:
            _write_optimizer(f, optimizer)
        f.create_group("rng", track_order=True).attrs.update(rngs)
        if trainer is not None:
            f.create_group("trainer").attrs.update(
                epoch=int(trainer.get("epoch", 0)),
                step=int(trainer.get("step", 0)),
                state=to_json(trainer),
            )

    atomic_write(path, write)


def _meta_json(meta: dict[str, Any]) -> str:
    for key, value in meta.items():
        try:
            to_json(value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"checkpoint metadata {key!r} is not JSON-serializable: {error}"
            ) from None
    return to_json(meta)


def _write_optimizer(f: Any, optimizer: Any) -> None:
    group = f.create_group("optimizer", track_order=True)
    group.attrs.update(
        {"class": type(optimizer).__name__, "hyper": to_json(optimizer.hyper_state())}
    )
    state = group.create_group("state", track_order=True)
    for path, entries in optimizer.state.items():
        for key, value in entries.items():
            data = np.int64(value) if key == "step" else to_device(value, "cpu")
            _dataset(state, f"{encode(path)}/{key}", data)


def save(path: str | os.PathLike, model: Any, optimizer: Any = None, **meta: Any) -> None:
    """Save ``model`` (and ``optimizer``'s state) to the HDF5 file ``path``, atomically.

    Args:
        path: the file to write (replaced as a whole, never partially).
        model: an ``nnflow.Model`` or any object holding arrays.
        optimizer: an ``nnflow.optim`` optimizer whose state to save too.
        **meta: JSON-serializable metadata, returned by :func:`load`.

    >>> import os, tempfile
    >>> save(os.path.join(tempfile.mkdtemp(), "m.h5"), {"w": np.zeros(3)}, epoch=1)
    """
    write_checkpoint(path, model, optimizer, meta=meta)


# -- reading ---------------------------------------------------------------------------------
def load(path: str | os.PathLike, model: Any, optimizer: Any = None) -> dict[str, Any]:
    """Load ``path`` into ``model`` (and ``optimizer``) in place; returns the user metadata.

    Everything is validated first; on any problem a ``CheckpointError`` lists them all and
    nothing is changed.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.h5")
    >>> save(path, {"w": np.zeros(3)})
    >>> load(path, {"w": np.zeros(2)})
    Traceback (most recent call last):
    ...
    nnflow.train.checkpoint.CheckpointError: cannot load checkpoint '...m.h5' (1 problem):
      - model: 'w' has shape (3,) in the file but (2,) in the model
    """
    return read_checkpoint(path, model, optimizer)["meta"]


def read_checkpoint(
    path: str | os.PathLike, model: Any, optimizer: Any = None, require_trainer: bool = False
) -> dict[str, Any]:
    """Validate and load ``path``; returns ``{"meta", "trainer", "info"}`` (trainer may be None).

    ``info`` holds the file's own attributes (nnflow version, creation time, model class).
    With ``require_trainer``, a file without trainer state (written by ``save``) is a problem.
    """
    from .validate import check_and_read  # the validation half lives beside this file

    staged = check_and_read(path, model, optimizer)
    if require_trainer and staged["trainer"] is None:
        raise CheckpointError(
            path,
            [
                "no trainer state: written by nnflow.save, not by a Trainer; load it with "
                "nnflow.load(path, model, optimizer) and train without resume"
            ],
        )
    for p, data in staged["model"].items():
        _assign(model, p, data)
    if optimizer is not None:
        optimizer.state = {
            p: {
                k: v if k == "step" else _like(data=v, target=get_path(model, p))
                for k, v in s.items()
            }
            for p, s in staged["optimizer"].items()
        }
        optimizer.load_hyper_state(staged["hyper"])
    held = generators(model)
    for p, state in staged["rng"].items():
        held[p].bit_generator.state = state
    return {"meta": staged["meta"], "trainer": staged["trainer"], "info": staged["info"]}


def _like(data: np.ndarray, target: Any) -> Any:
    xp = get_array_module(target)
    return data if xp is np else xp.asarray(data)


def _assign(model: Any, path: tuple, data: np.ndarray) -> None:
    target = get_path(model, path)
    if getattr(getattr(target, "flags", None), "writeable", True) and target.shape == data.shape:
        target[...] = _like(data, target)
    else:  # a read-only or 0-d NumPy scalar: replace the object at that path
        set_path(model, path, _like(data, target))

"""Reading checkpoints: every check before anything is changed, and ``describe`` for humans.

``check_and_read`` opens the file, compares it with the live model, optimizer and generators,
collects *every* problem (missing, unexpected, shape, dtype, class, generator type, unreadable
JSON or data) and raises one ``CheckpointError`` listing them; when there is none, it returns
the staged data (NumPy arrays, dicts) that ``read_checkpoint`` then puts in place.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    _describe,
    _h5py,
    decode,
    encode,
    from_json,
    generators,
    model_arrays,
)

__all__ = ["check_and_read", "describe"]


def _open(path: str | os.PathLike):
    h5py = _h5py()
    if not os.path.exists(path):
        raise CheckpointError(path, ["the file does not exist"])
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise CheckpointError(
            path, [f"not a readable HDF5 file (truncated, or not a checkpoint): {error}"]
        ) from None


def _datasets(group: Any) -> dict[str, Any]:
    """``{relative name: dataset}`` below ``group``, in creation order (``visititems`` sorts)."""
    h5py = _h5py()
    found: dict[str, Any] = {}

    def walk(g: Any, prefix: str) -> None:
        for name, obj in g.items():
            if isinstance(obj, h5py.Dataset):
                found[prefix + name] = obj
            elif isinstance(obj, h5py.Group):
                walk(obj, prefix + name + "/")

    walk(group, "")
    return found


def _json_attr(attrs: Any, key: str, where: str, problems: list[str], default: Any = None):
    if key not in attrs:
        return default
    try:
        return from_json(attrs[key])
    except (TypeError, ValueError) as error:
        problems.append(f"{where}: attribute {key!r} is not valid JSON ({error})")
        return default


def _read(ds: Any, where: str, problems: list[str]) -> np.ndarray | None:
    if ds.dtype.kind not in "biufc":
        problems.append(
            f"{where}: dtype {ds.dtype} refused (checkpoints hold numeric arrays only; nothing "
            f"in a file is ever turned into Python objects)"
        )
        return None
    try:
        return np.asarray(ds[()])
    except OSError as error:  # data truncated or corrupt past the header
        problems.append(f"{where}: data unreadable ({error})")
        return None


def _compare(ds: Any, want: Any, where: str, problems: list[str]) -> bool:
    ok, owner = True, "model" if where.startswith("model") else "optimizer"
    if tuple(ds.shape) != tuple(want.shape):
        problems.append(
            f"{where} has shape {tuple(ds.shape)} in the file but {tuple(want.shape)} in the "
            f"{owner}"
        )
        ok = False
    if ds.dtype.kind in "biufc" and np.dtype(ds.dtype) != np.dtype(want.dtype):
        problems.append(
            f"{where} has dtype {np.dtype(ds.dtype).name} in the file but "
            f"{np.dtype(want.dtype).name} in the {owner} (no cast: convert one of them explicitly)"
        )
        ok = False
    return ok


def _check_model(f: Any, model: Any, problems: list[str]) -> dict[tuple, np.ndarray]:
    expected = {encode(p): (p, x) for p, x in model_arrays(model).items()}
    found = _datasets(f["model"]) if "model" in f else {}
    if "model" not in f:
        problems.append("the file has no 'model' group")
    for name, (_, x) in expected.items():
        if name not in found:
            problems.append(f"model: missing {decode(name)!r} ({_describe(x)}): not in the file")
    for name, ds in found.items():
        if name not in expected:
            problems.append(
                f"model: unexpected {decode(name)!r} ({np.dtype(ds.dtype).name}{list(ds.shape)}) "
                f"in the file: the model has no such array"
            )
    staged = {}
    for name, (path, x) in expected.items():
        ds = found.get(name)
        if ds is not None and _compare(ds, x, f"model: {decode(name)!r}", problems):
            data = _read(ds, f"model: {decode(name)!r}", problems)
            staged[path] = data
    return staged


def _check_optimizer(f: Any, model: Any, optimizer: Any, problems: list[str]):
    if "optimizer" not in f:
        problems.append("optimizer: the file holds no optimizer state (saved without one)")
        return {}, {}
    group, name = f["optimizer"], type(optimizer).__name__
    saved_class = str(group.attrs.get("class", "?"))
    if saved_class != name:
        problems.append(f"optimizer: the file holds {saved_class} state, the optimizer is {name}")
        return {}, {}
    hyper = _json_attr(group.attrs, "hyper", "optimizer", problems, default={})
    params = {encode(p): p for p, _ in optimizer.parameters()}
    entries: dict[str, dict[str, Any]] = {}
    for key, ds in _datasets(group["state"]).items() if "state" in group else ():
        owner, _, entry = key.rpartition("/")
        entries.setdefault(owner, {})[entry] = ds
    staged: dict[tuple, dict[str, Any]] = {}
    for owner, datasets in entries.items():
        where = f"optimizer: state of {decode(owner)!r}"
        if owner not in params:
            problems.append(f"{where} is in the file, but the model has no parameter there")
            continue
        path = params[owner]
        template = optimizer.state_template(path)
        if set(datasets) != set(template):
            problems.append(
                f"{where} has entries {sorted(datasets)} in the file, {name} expects "
                f"{sorted(template)}"
            )
            continue
        staged[path] = {}
        for entry, ds in datasets.items():
            if entry == "step":
                if ds.shape != () or ds.dtype.kind not in "iu":
                    problems.append(f"{where}: 'step' must be an integer scalar, got {ds.dtype}")
                    continue
                staged[path]["step"] = int(ds[()])
            elif _compare(ds, template[entry], f"{where}: {entry!r}", problems):
                staged[path][entry] = _read(ds, f"{where}: {entry!r}", problems)
    return staged, hyper


def _check_rng(f: Any, model: Any, problems: list[str]) -> dict[tuple, dict]:
    held = {encode(p): (p, g) for p, g in generators(model).items()}
    saved = f["rng"].attrs if "rng" in f else {}
    staged = {}
    for name in held.keys() - saved.keys():
        problems.append(f"rng: no state in the file for the generator at {decode(name)!r}")
    for name in saved.keys() - held.keys():
        problems.append(
            f"rng: the file has state for a generator at {decode(name)!r}, the model none"
        )
    for name in held.keys() & saved.keys():
        path, generator = held[name]
        state = _json_attr(saved, name, f"rng: {decode(name)!r}", problems)
        kind = type(generator.bit_generator)
        try:
            kind().state = state  # a throw-away bit generator checks the state's structure
        except (TypeError, ValueError, KeyError) as error:
            problems.append(
                f"rng: {decode(name)!r}: state does not fit a {kind.__name__} ({error})"
            )
            continue
        staged[path] = state
    return staged


def check_and_read(path: str | os.PathLike, model: Any, optimizer: Any = None) -> dict[str, Any]:
    """Everything ``path`` holds for ``model`` and ``optimizer``, checked (or CheckpointError)."""
    with _open(path) as f:
        if f.attrs.get("format") != FORMAT:
            raise CheckpointError(path, ["not an nnflow checkpoint (no format attribute)"])
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise CheckpointError(
                path,
                [
                    f"written by a newer nnflow (format {version}; this one reads up to "
                    f"{FORMAT_VERSION}): upgrade nnflow"
                ],
            )
        problems: list[str] = []
        meta = _json_attr(f.attrs, "meta", "metadata", problems, default={})
        staged_model = _check_model(f, model, problems)
        staged_opt, hyper = ({}, {})
        if optimizer is not None:
            staged_opt, hyper = _check_optimizer(f, model, optimizer, problems)
        staged_rng = _check_rng(f, model, problems)
        trainer = None
        if "trainer" in f:
            trainer = _json_attr(f["trainer"].attrs, "state", "trainer", problems)
        info = {k: f.attrs[k] for k in ("nnflow_version", "created", "model_class") if k in f.attrs}
    if problems:
        raise CheckpointError(path, problems)
    return {
        "model": staged_model,
        "optimizer": staged_opt,
        "hyper": hyper,
        "rng": staged_rng,
        "meta": meta,
        "trainer": trainer,
        "info": {k: str(v) for k, v in info.items()},
    }


def describe(path: str | os.PathLike) -> str:
    """A readable summary of a checkpoint: metadata, arrays with shapes, optimizer, trainer.

    >>> import os, tempfile
    >>> from nnflow.train.checkpoint import save
    >>> p = os.path.join(tempfile.mkdtemp(), "m.h5")
    >>> save(p, {"w": np.zeros((2, 3), np.float32)}, note="hi")
    >>> print(describe(p).split("\\n", 1)[1])  # doctest: +ELLIPSIS
    model: builtins.dict, 1 array, 6 values
      w  float32[2, 3]  parameter
    ...
    """
    lines = []
    with _open(path) as f:
        if f.attrs.get("format") != FORMAT:
            raise CheckpointError(path, ["not an nnflow checkpoint (no format attribute)"])
        lines.append(
            f"{os.fspath(path)}: nnflow checkpoint v{f.attrs.get('format_version')}, written by "
            f"nnflow {f.attrs.get('nnflow_version')} at {f.attrs.get('created')}"
        )
        arrays = _datasets(f["model"]) if "model" in f else {}
        total = sum(int(np.prod(ds.shape)) for ds in arrays.values())
        plural = "s" if len(arrays) != 1 else ""
        lines.append(
            f"model: {f.attrs.get('model_class')}, {len(arrays)} array{plural}, {total:,} values"
        )
        rows = [
            (decode(name), f"{np.dtype(ds.dtype).name}{list(ds.shape)}", ds.attrs.get("kind", ""))
            for name, ds in arrays.items()
        ]
        widths = [max((len(row[i]) for row in rows), default=0) for i in range(2)]
        for name, kind_shape, kind in rows:
            lines.append(f"  {name:<{widths[0]}}  {kind_shape:<{widths[1]}}  {kind}")
        if "optimizer" in f:
            group = f["optimizer"]
            hyper = from_json(group.attrs.get("hyper", "{}"))
            text = ", ".join(f"{k}={v}" for k, v in hyper.items())
            entries = _datasets(group["state"]) if "state" in group else {}
            owners = {n.rpartition("/")[0] for n in entries}
            names = sorted({n.rpartition("/")[2] for n in entries} - {"step"})
            lines.append(f"optimizer: {group.attrs.get('class')}({text})")
            lines.append(f"  state for {len(owners)} paths: {', '.join(names) or '-'}")
        for name, state in f["rng"].attrs.items() if "rng" in f else ():
            lines.append(f"rng: {decode(name)}  {from_json(state).get('bit_generator')}")
        if "trainer" in f:
            state = from_json(f["trainer"].attrs["state"])
            lines.append(f"trainer: epoch {state.get('epoch')}, step {state.get('step')}")
            for row in state.get("history", [])[-3:]:
                lines.append("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
        meta = from_json(f.attrs.get("meta", "{}"))
        if meta:
            lines.append("meta: " + ", ".join(f"{k}={v!r}" for k, v in meta.items()))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

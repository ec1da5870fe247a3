"""Data-parallel training across processes and machines: MPI (``mpi4py``), and NCCL on GPUs.

Launch the same training on ``N`` processes with an MPI launcher, one process per core, GPU or
machine, and ask the trainer to share the work::

    mpirun -n 4 nnflow fit examples/mlp.py --distributed --checkpoint runs/mlp.h5
    Trainer(model, loss, optimizer, distributed=True)     # in a script run by mpirun

Every process (*rank*) builds the same model, data and optimizer. Then:

- **Start**: rank 0's parameters, buffers and generator states are broadcast, so all ranks
  begin equal; ranks other than 0 then jump their generators ahead by their rank (dropout masks
  differ between ranks, as they would between samples of one process).
- **Data**: each step takes the global batch a single process with batch size ``N * B`` would
  take (same seed, same order) and gives rank ``r`` its ``r``-th contiguous piece of ``B``
  samples (``nnflow.data.sharded.ShardedLoader``); ``--batch-size`` is the per-rank size.
- **Step**: each rank computes the gradient of its piece; the gradients, weighted by the piece
  sizes, are summed by one bucketed allreduce (the arrays are copied into a few flat buffers of
  at most ``bucket_mb`` MB, one collective call each, all in flight together) and divided by
  the global batch size, together with the loss, the metrics and the stop signals (a small
  float64 buffer in the same round). Every rank then applies the same optimizer step, so the
  parameters stay equal: training on ``N`` ranks with batch size ``B`` follows one process with
  batch size ``N * B`` (to rounding; the loss must be a mean over the batch's samples, as
  ``nnflow.losses`` are). BatchNorm uses each rank's own batch statistics (as PyTorch's DDP
  without SyncBatchNorm); after every epoch the model's arrays, running statistics included,
  are broadcast again from rank 0.
- **Metrics** are averaged over all samples of all ranks, validation included (each rank
  evaluates its shard of the validation loader).
- **Checkpoints**: rank 0 alone writes them (atomically, as always); the others wait for it.
  ``resume``: rank 0 reads the file and sends its bytes to the other ranks, so the machines need
  no shared file system. Rank 0 alone prints progress.
- **Failures**: every wait for the other ranks has a deadline (``timeout``, default 300 s,
  ``NNFLOW_DIST_TIMEOUT``); an error that only some ranks see (an exception, a timeout, a
  second Ctrl-C) is printed with the rank's name and stops every rank with ``MPI_Abort``, so a
  job never hangs. A rank that dies (killed, segfault) is noticed by ``mpirun`` itself, which
  stops the others (Open MPI sends them SIGTERM, then SIGKILL a second later); a rank that gets
  a signal while waiting for a dead peer says so before it is stopped. Errors all ranks see
  alike (a NaN loss, a bad checkpoint, Ctrl-C or SIGTERM, agreed on at the next step so that
  every rank stops after the same step) end every rank normally, as in one process.

CuPy arrays (``device="gpu"``) are summed and broadcast by NCCL (``cupy.cuda.nccl``): each rank
takes GPU ``local_rank % device_count``, rank 0 makes the NCCL id and MPI sends it to the
others. Without NCCL, CuPy arrays go through MPI via host copies (with a warning).

>>> import numpy as np
>>> _plan([("a", (2, 3), np.dtype("float32")), ("b", (5,), np.dtype("float32"))], 1 << 20)
[(dtype('float32'), 11, [('a', 0, 6, (2, 3)), ('b', 6, 5, (5,))])]
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..backend import _gpu_unavailable_reason, _load_cupy, get_array_module
from ..tree import leaves
from .checkpoint import _assign, from_json, model_arrays, to_json
from .history import batch_size

__all__ = ["DataParallel", "DistributedError", "INSTALL_HINT", "import_mpi"]

ENV_TIMEOUT = "NNFLOW_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
SIGNAL_GRACE = 0.5  # seconds a rank keeps waiting for its peers after a signal arrived
_SPIN = 0.5  # seconds of busy polling before a wait starts sleeping between polls
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INSTALL_HINT = (
    "install it with: pip install 'nnflow[dist]' (mpi4py), which needs an MPI library "
    "(Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev), then launch with "
    "mpirun -n N nnflow fit SCRIPT --distributed"
)


class DistributedError(RuntimeError):
    """The ranks could not work together: a timeout, a failed peer or ranks that disagree.

    ``collective`` is true when every rank raises the same error (nothing to abort).
    """

    def __init__(self, message: str, collective: bool = False):
        super().__init__(message)
        self.collective = collective


def import_mpi() -> Any:
    """``mpi4py.MPI`` (initializing MPI), or an ``ImportError`` that says how to install it."""
    try:
        from mpi4py import MPI
    except Exception as error:  # ImportError, or mpi4py's error when libmpi cannot be loaded
        raise ImportError(
            f"distributed training needs mpi4py and an MPI library, and "
            f"'from mpi4py import MPI' failed ({type(error).__name__}: {error}); "
            f"{INSTALL_HINT}"
        ) from None
    return MPI


def _timeout_from_env() -> float:
    text = os.environ.get(ENV_TIMEOUT)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ValueError(f"{ENV_TIMEOUT} must be a positive number of seconds, got {text!r}")
    return value


# -- flat buffers ---------------------------------------------------------------------------------
def _plan(
    entries: Iterable[tuple[Any, tuple, np.dtype]], bucket_bytes: int, align: int = 1
) -> list[tuple[np.dtype, int, list[tuple[Any, int, int, tuple]]]]:
    """Group ``(key, shape, dtype)`` entries into flat buffers of at most ``bucket_bytes``.

    Returns ``[(dtype, length, [(key, offset, size, shape), ...]), ...]``: entries of one dtype
    are packed in order into buffers; an entry bigger than a bucket gets a buffer of its own;
    offsets are multiples of ``align`` elements.
    """
    open_: dict[np.dtype, list] = {}
    done: list = []
    for key, shape, dtype in entries:
        dtype = np.dtype(dtype)
        size = math.prod(shape)
        bucket = open_.get(dtype)
        if bucket is not None:
            start = -(-bucket[1] // align) * align
            if (start + size) * dtype.itemsize > bucket_bytes:
                done.append(bucket)
                bucket = None
        if bucket is None:
            bucket = open_[dtype] = [dtype, 0, []]
            start = 0
        bucket[2].append((key, start, size, tuple(shape)))
        bucket[1] = start + size
    done.extend(open_.values())
    return [(dtype, length, items) for dtype, length, items in done]


def _reduce_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype gradients of ``dtype`` are summed in (float16 and others: float32)."""
    dtype = np.dtype(dtype)
    return (
        dtype
        if dtype.name in ("float32", "float64", "complex64", "complex128")
        else (np.dtype("float32"))
    )


class _GradLayout:
    """Where each trainable array's gradient lives in the flat allreduce buffers."""

    def __init__(self, model: Any, bucket_bytes: int):
        params = [(p, x) for p, x in leaves(model, buffers=False) if x.dtype.kind in "fc"]
        if not params:
            raise DistributedError(
                "distributed: the model has no floating-point parameters", collective=True
            )
        self.xp = get_array_module(params[0][1])
        self.paths = [p for p, _ in params]
        self.dtypes = {p: x.dtype for p, x in params}
        self.index = {p: i for i, p in enumerate(self.paths)}
        plan = _plan(((p, x.shape, _reduce_dtype(x.dtype)) for p, x in params), bucket_bytes)
        self.buffers = [self.xp.empty(length, dtype) for dtype, length, _ in plan]
        self.views: dict[tuple, Any] = {}
        for buffer, (_, _, items) in zip(self.buffers, plan, strict=True):
            for path, offset, size, shape in items:
                self.views[path] = buffer[offset : offset + size].reshape(shape)
        self.same = {p for p in self.paths if self.views[p].dtype == self.dtypes[p]}
        self.nbytes = sum(int(b.nbytes) for b in self.buffers)
        self.signature = zlib.crc32(
            repr([(p, tuple(x.shape), x.dtype.str) for p, x in params]).encode()
        )


# -- communication backends --------------------------------------------------------------------
class _Watchdog:
    """A thread that stops the job when a blocking collective call outlives its deadline.

    MPI's blocking collectives are much faster than its non-blocking ones for large buffers
    (Open MPI 4.1, 4.5 MB on 2 ranks: 0.7 ms against 5.9 ms), and mpi4py releases the GIL while
    in them, so a deadline is kept by this thread rather than by polling a request.
    """

    def __init__(self, fire: Callable[[str, float], None], period: float):
        self.fire, self.period = fire, period
        self.deadline, self.what, self.started = math.inf, "", 0.0
        self.thread = threading.Thread(target=self._run, name="nnflow-watchdog", daemon=True)
        self.thread.start()

    def armed(self, what: str, timeout: float) -> _Watchdog:
        """``with watchdog.armed(what, timeout):`` a block that must end within ``timeout``
        seconds (blocks do not nest; a plain context manager, cheap enough for every step)."""
        self.what, self.started = what, time.monotonic()
        self.deadline = self.started + timeout
        return self

    def __enter__(self) -> _Watchdog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deadline = math.inf

    def _run(self) -> None:
        while True:
            time.sleep(self.period)
            deadline, what = self.deadline, self.what
            now = time.monotonic()
            if now > deadline and self.deadline == deadline:
                self.fire(what, now - self.started)
                return


class _MPIBackend:
    """Blocking MPI collectives on host buffers (CuPy buffers are staged through the host),
    each under the watchdog's deadline."""

    name = "mpi"

    def __init__(self, MPI: Any, comm: Any, watch: Callable[[str], Any]):
        self.MPI, self.comm, self.watch = MPI, comm, watch

    def _each(self, buffers: Sequence[Any], call: Callable[[Any], Any], what: str) -> None:
        if all(type(b) is np.ndarray for b in buffers):
            with self.watch(what):
                for b in buffers:
                    if b.size:
                        call(b)
            return
        host = [b if isinstance(b, np.ndarray) else b.get() for b in buffers]
        with self.watch(what):
            for h in host:
                if h.size:
                    call(h)
        for b, h in zip(buffers, host, strict=True):
            if h is not b:
                b.set(h)

    def allreduce(self, buffers: Sequence[Any], what: str) -> None:
        """Sum ``buffers`` over the ranks, in place."""
        MPI = self.MPI
        self._each(buffers, lambda h: self.comm.Allreduce(MPI.IN_PLACE, h, op=MPI.SUM), what)

    def bcast(self, buffers: Sequence[Any], what: str, root: int = 0) -> None:
        """Overwrite ``buffers`` with rank ``root``'s."""
        self._each(buffers, lambda h: self.comm.Bcast(h, root=root), what)

    def barrier(self, what: str) -> None:
        """Return once every rank has called ``barrier``."""
        with self.watch(what):
            self.comm.Barrier()

    def allgather(self, values: np.ndarray, what: str) -> np.ndarray:
        """``(size, len(values))``: every rank's ``values``."""
        out = np.empty((self.comm.Get_size(), len(values)), values.dtype)
        with self.watch(what):
            self.comm.Allgather(np.ascontiguousarray(values), out)
        return out

    def abort(self) -> None:
        """Nothing to release before ``MPI_Abort``."""


class _NCCLBackend:
    """NCCL collectives on CuPy buffers, on a stream of their own, polled with a deadline.

    Not exercised by the test suite (it needs several CUDA GPUs): see docs/distributed.md.
    """

    name = "nccl"

    def __init__(self, mpi: _MPIBackend, rank: int, size: int, wait: Callable):
        cupy, nccl = _load_cupy()[0], _nccl_module()
        self.cupy, self.nccl, self.wait = cupy, nccl, wait
        uid = np.zeros(128, np.int16)
        if rank == 0:
            uid[:] = nccl.get_unique_id()
        # every rank must be alive before the (blocking, deadline-less) NCCL initialization
        mpi.bcast([uid], "sending the NCCL id from rank 0")
        self.comm = nccl.NcclCommunicator(size, tuple(int(v) for v in uid), rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.types = {
            np.dtype(name): getattr(nccl, constant)
            for name, constant in [
                ("int8", "NCCL_INT8"),
                ("uint8", "NCCL_UINT8"),
                ("int32", "NCCL_INT32"),
                ("uint32", "NCCL_UINT32"),
                ("int64", "NCCL_INT64"),
                ("uint64", "NCCL_UINT64"),
                ("float16", "NCCL_FLOAT16"),
                ("float32", "NCCL_FLOAT32"),
                ("float64", "NCCL_FLOAT64"),
            ]
        }

    def _flat(self, buffer: Any) -> tuple[Any, int]:
        if buffer.dtype.kind == "c":  # a complex sum is the sums of the real and imaginary parts
            buffer = buffer.view(buffer.real.dtype)
        if buffer.dtype not in self.types:
            raise DistributedError(f"NCCL cannot send arrays of dtype {buffer.dtype}")
        return buffer, self.types[buffer.dtype]

    def _run(self, calls: list[Callable[[], None]], what: str) -> None:
        cupy, nccl = self.cupy, self.nccl
        ready = cupy.cuda.Event(disable_timing=True)
        ready.record()  # the buffers were written on the current stream
        self.stream.wait_event(ready)
        nccl.groupStart()
        try:
            for call in calls:
                call()
        finally:
            nccl.groupEnd()
        done = cupy.cuda.Event(disable_timing=True)
        done.record(self.stream)

        def finished() -> bool:
            self.comm.check_async_error()  # a failed peer shows up here (NcclError)
            return done.done

        self.wait(finished, what)

    def allreduce(self, buffers: Sequence[Any], what: str) -> None:
        """Sum ``buffers`` (CuPy arrays) over the ranks, in place."""
        calls = []
        for buffer in buffers:
            if buffer.size:
                flat, kind = self._flat(buffer)
                ptr, n = flat.data.ptr, flat.size
                calls.append(
                    functools.partial(
                        self.comm.allReduce, ptr, ptr, n, kind, self.nccl.NCCL_SUM, self.stream.ptr
                    )
                )
        self._run(calls, what)

    def bcast(self, buffers: Sequence[Any], what: str, root: int = 0) -> None:
        """Overwrite ``buffers`` (CuPy arrays) with rank ``root``'s."""
        calls = []
        for buffer in buffers:
            if buffer.size:
                flat, kind = self._flat(buffer)
                calls.append(
                    functools.partial(
                        self.comm.bcast, flat.data.ptr, flat.size, kind, root, self.stream.ptr
                    )
                )
        self._run(calls, what)

    def abort(self) -> None:
        """Abort the NCCL communicator so no kernel waits forever for a dead peer."""
        with contextlib.suppress(Exception):
            self.comm.abort()


def _nccl_module() -> Any:
    """``cupy.cuda.nccl``. CuPy itself is loaded by ``nnflow.backend`` (the one module that
    imports it); only its NCCL submodule, which ``import cupy`` does not load, comes from here,
    on the GPU path alone."""
    if _load_cupy()[0] is None:
        raise ImportError(_load_cupy()[1])
    return importlib.import_module("cupy.cuda.nccl")


def _local_rank(comm: Any, MPI: Any) -> int:
    for name in (
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
        "PMI_LOCAL_RANK",
    ):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank()).Get_rank()


# -- the trainer's partner ------------------------------------------------------------------------
class DataParallel:
    """Data parallelism for a ``Trainer``: ``Trainer(..., distributed=DataParallel(...))``.

    ``distributed=True`` uses the defaults. The trainer calls the methods below at fixed points
    of its loop (module docstring); a custom loop calls ``setup``, ``begin(model)``, then
    ``average`` every step (docs/distributed.md).

    Args:
        timeout: seconds a rank waits for the others before it stops the job (default
            ``NNFLOW_DIST_TIMEOUT`` or 300). Allow for rank 0 writing a checkpoint.
        bucket_mb: the size limit of one flat allreduce buffer, in MB.
        backend: ``"auto"`` (NCCL for GPU arrays when available, else MPI), ``"mpi"`` or
            ``"nccl"``.
        comm: an ``mpi4py`` communicator (default ``MPI.COMM_WORLD``).
    """

    def __init__(
        self,
        timeout: float | None = None,
        bucket_mb: float = 25.0,
        backend: str = "auto",
        comm: Any = None,
    ):
        if backend not in ("auto", "mpi", "nccl"):
            raise ValueError(f"DataParallel: backend must be auto, mpi or nccl, got {backend!r}")
        self.timeout = _timeout_from_env() if timeout is None else float(timeout)
        if not self.timeout > 0:
            raise ValueError(f"DataParallel: timeout must be > 0 seconds, got {timeout}")
        if not bucket_mb > 0:
            raise ValueError(f"DataParallel: bucket_mb must be > 0, got {bucket_mb}")
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.backend_name, self._comm_arg = backend, comm
        self.rank, self.size, self.local_rank = 0, 1, 0
        self.pending_signal: int | None = None  # set by the trainer's signal handler
        self.stats = {"steps": 0, "allreduce_seconds": 0.0, "allreduce_bytes": 0}
        self._ready = False
        self._layout: _GradLayout | None = None
        self._symmetric = False  # inside a section where every rank raises the same errors
        self._tmp: str | None = None

    # -- setting up -------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> DataParallel:
        """Initialize MPI (and NCCL for ``device="gpu"``); picks this rank's GPU. Idempotent."""
        if self._ready:
            return self
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = self._comm_arg if self._comm_arg is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._watchdog = _Watchdog(self._expired, period=min(0.2, self.timeout / 10))
        self.mpi = _MPIBackend(MPI, self.comm, self._watch)
        self.data: Any = self.mpi
        if device == "gpu":
            self.local_rank = _local_rank(self.comm, MPI)
            self._setup_gpu()
        elif self.backend_name == "nccl":
            raise ValueError("DataParallel(backend='nccl') needs device='gpu' (CuPy arrays)")
        self._ready = True
        return self

    def _setup_gpu(self) -> None:
        why = _gpu_unavailable_reason()
        if why:
            raise RuntimeError(f"distributed training on device 'gpu': {why}")
        cupy = _load_cupy()[0]
        count = cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(self.local_rank % count).use()
        if self.backend_name == "mpi":
            return
        try:
            nccl = _nccl_module()
            if not getattr(nccl, "available", True):
                raise ImportError("cupy.cuda.nccl is not available")
        except Exception as error:
            if self.backend_name == "nccl":
                raise RuntimeError(
                    f"DataParallel(backend='nccl'): NCCL is not usable through CuPy "
                    f"({type(error).__name__}: {error}); install NCCL for your CUDA version "
                    f"(python -m cupyx.tools.install_library --cuda 12.x --library nccl, or a "
                    f"system NCCL) or use backend='mpi'"
                ) from None
            warnings.warn(
                f"distributed: NCCL is not usable ({error}); GPU arrays go through MPI via "
                f"host copies, which is slower",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self.data = _NCCLBackend(self.mpi, self.rank, self.size, self._wait)

    @property
    def is_root(self) -> bool:
        """Whether this is rank 0 (the one that writes checkpoints and prints)."""
        return self.rank == 0

    def prepare(self, trainer: Any, train: Any, val: Any) -> tuple[Any, Any]:
        """Shard the loaders, drop rank-0-only callbacks elsewhere, and check that the ranks
        agree on the data, model, optimizer and metrics (one error naming the differences)."""
        from .callbacks import CSVLogger, PlotLosses, PrintMetrics

        if not hasattr(train, "shard"):
            error = TypeError(
                f"distributed training gives each rank a shard of every batch, so train must "
                f"be an nnflow.data.DataLoader (or have shard(rank, world_size)), not "
                f"{type(train).__name__}"
            )
            error.collective = True  # type: ignore[attr-defined]
            raise error
        train = train.shard(self.rank, self.size)
        if val is not None and hasattr(val, "shard"):
            val = val.shard(self.rank, self.size)
            if hasattr(val, "keep_empty"):
                val.keep_empty = False  # evaluation needs no step from every rank
        if not self.is_root:
            root_only = (PrintMetrics, CSVLogger, PlotLosses)
            trainer.callbacks = [
                c
                for c in trainer.callbacks
                if not (isinstance(c, root_only) or getattr(c, "root_only", False))
            ]
        self._layout = _GradLayout(trainer.model, self.bucket_bytes)
        opt = trainer.optimizer
        hyper = getattr(opt, "hyper", {})
        self._agree(
            {
                "the number of training samples": getattr(train, "num_samples", -1),
                "the per-rank batch size": getattr(train, "local_batch_size", -1),
                "the number of steps per epoch": len(train),
                "the shuffling seed": getattr(train, "seed", None),
                "the number of validation samples": getattr(val, "num_samples", -1),
                "the model's trainable arrays (paths, shapes, dtypes)": self._layout.signature,
                "the optimizer and its hyper-parameters": f"{type(opt).__name__} {hyper!r}",
                "the metrics": repr(list(trainer.metrics)),
                "the device": trainer.device,
            }
        )
        return train, val

    def _agree(self, items: dict[str, Any]) -> None:
        def code(value: Any) -> int:
            if isinstance(value, (int, np.integer)) and -(2**62) < value < 2**62:
                return int(value)
            return zlib.crc32(repr(value).encode()) | (1 << 62)

        local = np.array([code(v) for v in items.values()], np.int64)
        everyone = self.mpi.allgather(local, "checking that the ranks agree")
        differ = []
        for i, name in enumerate(items):
            column = everyone[:, i]
            if (column != column[0]).any():
                mine = items[name]
                shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(column) if v < 2**62)
                differ.append(f"{name} ({shown or f'rank {self.rank} has {mine!r}'})")
        if differ:
            raise DistributedError(
                "distributed: the ranks were given different training setups; every rank must "
                "build the same model, data and optimizer. They differ in: " + "; ".join(differ),
                collective=True,
            )

    def start(self, trainer: Any) -> None:
        """After resuming (or not): ``begin`` with the trainer's model and generators."""
        self._symmetric = False
        self._remove_tmp()
        self.begin(trainer.model, getattr(trainer, "_generators", ()))

    def begin(self, model: Any, generators: Iterable[np.random.Generator] = ()) -> None:
        """Make every rank start equal: rank 0's parameters, buffers and generator states go to
        every rank (then ranks other than 0 jump their generators ahead by their rank), and the
        gradient buffers for ``average`` are laid out from ``model``."""
        self.pending_signal = None
        self._layout = _GradLayout(model, self.bucket_bytes)
        self.broadcast_model(model)
        gens = list(generators)
        if gens:
            text = to_json([g.bit_generator.state for g in gens]) if self.is_root else None
            states = from_json(self.bcast_bytes(text.encode() if text else None).decode())
            for g, state in zip(gens, states, strict=True):
                g.bit_generator.state = state
                if self.rank and hasattr(g.bit_generator, "jumped"):  # a stream per rank
                    g.bit_generator.state = g.bit_generator.jumped(self.rank).state

    # -- every step ---------------------------------------------------------------------------
    def step(self, trainer: Any, batch: Any) -> tuple[float, int, dict[str, float], dict]:
        """This rank's gradient, loss and metrics on its piece, averaged over all ranks.

        Returns ``(loss, global batch size, metrics, gradients)``; sets ``trainer._signal``
        when any rank got SIGINT/SIGTERM, so that all ranks stop after this same step.
        """
        size = batch_size(batch)
        if size:
            value, grads = trainer._gradient(batch)
            metrics = trainer._metrics(batch) if trainer.metrics else {}
            value = float(value)
        else:  # an empty piece of the last batch: take part with zero weight
            value, grads, metrics = 0.0, {}, dict.fromkeys(trainer.metrics, 0.0)
        where = f"step {trainer.step + 1} (epoch {trainer.epoch + 1})"
        train = trainer._train  # the global batch's size, if the loader tells (it saves a pass)
        expected = None
        if all(hasattr(train, a) for a in ("batch", "batch_size", "num_samples", "world_size")):
            expected = min(train.batch_size, train.num_samples - train.batch * train.batch_size)
        grads, means, total, signum = self.average(
            grads, size, [value, *metrics.values()], f"the gradient allreduce of {where}", expected
        )
        if signum is not None:
            trainer._signal = signum
        return means[0], total, dict(zip(metrics, means[1:], strict=True)), grads

    def average(
        self,
        grads: dict,
        count: int,
        values: Sequence[float] = (),
        what: str = "an allreduce",
        expected: int | None = None,
    ) -> tuple[dict, list[float], int, int | None]:
        """Average ``grads`` (``{path: array}``) and ``values`` over the ranks, each rank
        weighted by ``count`` (its number of samples), in one round of collective calls.

        ``expected``, the sum of ``count`` over the ranks when the caller knows it, lets the
        gradients be scaled while they are copied into the buffers instead of in a second pass
        after the sum. Returns ``(grads, value means, total count, agreed signal)``. A path no
        rank has a gradient for stays ``None``. The gradient arrays returned are views of the
        flat buffers, valid until the next call.
        """
        layout = self._layout
        if layout is None:
            raise DistributedError("DataParallel.average before begin(model) (no layout)")
        xp, paths, index = layout.xp, layout.paths, layout.index
        k = len(values)
        flags = 1 + k + len(_SIGNALS)
        scalars = np.zeros(flags + len(paths))
        scalars[0] = count
        scalars[1 : 1 + k] = values
        scalars[1 : 1 + k] *= count
        if self.pending_signal is not None:
            scalars[1 + k + _SIGNALS.index(self.pending_signal)] = 1
        weight = count / expected if expected else count
        seen = set()
        for path, g in grads.items():
            if g is None:
                continue
            if path not in index:
                raise DistributedError(
                    f"distributed: a gradient for {path!r}, which is not a floating-point "
                    f"array of the model as it was at the start of training"
                )
            xp.multiply(g, weight, out=layout.views[path], casting="unsafe")
            seen.add(path)
        for path in paths:
            if path in seen:
                scalars[flags + index[path]] = 1
            else:
                layout.views[path].fill(0)
        packed = scalars if xp is np else xp.asarray(scalars)
        start = time.perf_counter()
        self.data.allreduce([*layout.buffers, packed], what)
        self.stats["allreduce_seconds"] += time.perf_counter() - start
        self.stats["allreduce_bytes"] += layout.nbytes
        self.stats["steps"] += 1
        reduced = (packed if xp is np else packed.get()).tolist()
        total = reduced[0]
        scale = (expected or 1.0) / total if total > 0 else 1.0
        if scale != 1.0:  # no expected total, or a wrong one
            for buffer in layout.buffers:
                buffer *= scale
        out = {}
        for path, present in zip(paths, reduced[flags:], strict=True):
            if present > 0:
                view = layout.views[path]
                out[path] = view if path in layout.same else view.astype(layout.dtypes[path])
            else:
                out[path] = None
        means = [v / total if total > 0 else 0.0 for v in reduced[1 : 1 + k]]
        agreed = [s for s, n in zip(_SIGNALS, reduced[1 + k : flags], strict=True) if n > 0]
        return out, means, int(round(total)), (int(agreed[0]) if agreed else None)

    def reduce_sums(self, sums: dict[str, float], names: Sequence[str], data: Any) -> dict:
        """Add up the ranks' evaluation sums when ``data`` was sharded over them."""
        if self.size == 1 or getattr(data, "world_size", 1) != self.size:
            return sums
        local = np.array([sums.get("n", 0)] + [sums.get(k, 0.0) for k in names], np.float64)
        self.mpi.allreduce([local], "adding up the validation metrics")
        if not local[0]:
            return {}
        return {"n": int(round(local[0])), **dict(zip(names, map(float, local[1:]), strict=True))}

    # -- whole-model transfers ---------------------------------------------------------------
    def broadcast_model(self, model: Any, what: str = "broadcasting the model from rank 0") -> None:
        """Overwrite every rank's parameters and buffers with rank 0's (in place)."""
        arrays = model_arrays(model)
        if not arrays:
            return
        xp = get_array_module(*arrays.values())
        plan = _plan(((p, (x.nbytes,), np.uint8) for p, x in arrays.items()), self.bucket_bytes, 16)
        buffers = [xp.empty(length, np.uint8) for _, length, _ in plan]
        if self.is_root:
            for buffer, (_, _, items) in zip(buffers, plan, strict=True):
                for path, offset, size, _ in items:
                    x = xp.ascontiguousarray(arrays[path])
                    buffer[offset : offset + size] = x.reshape(-1).view(np.uint8)
        self.data.bcast(buffers, what)
        if not self.is_root:
            for buffer, (_, _, items) in zip(buffers, plan, strict=True):
                for path, offset, size, _ in items:
                    x = arrays[path]
                    data = buffer[offset : offset + size].view(x.dtype).reshape(x.shape)
                    _assign(model, path, data)

    def bcast_bytes(self, data: bytes | None, what: str = "a broadcast from rank 0") -> bytes:
        """Rank 0's ``data`` on every rank (the others pass ``None``)."""
        data = (data or b"") if self.is_root else b""
        header = np.array([len(data)], np.int64)
        self.mpi.bcast([header], what)
        out = (
            np.frombuffer(data, np.uint8).copy() if self.is_root else np.empty(header[0], np.uint8)
        )
        chunk = 1 << 30  # below MPI's 2**31 element limit
        self.mpi.bcast([out[i : i + chunk] for i in range(0, len(out), chunk)], what)
        return out.tobytes()

    def barrier(self, what: str = "a barrier") -> None:
        """Wait (with the deadline) until every rank gets here."""
        self.mpi.barrier(what)

    # -- checkpoints --------------------------------------------------------------------------
    def fetch_checkpoint(self, path: str) -> str | None:
        """Rank 0 reads ``path`` and sends it to every rank; returns a local path to read
        (``path`` itself on rank 0), or ``None`` when rank 0 has no such file."""
        self._symmetric = True  # resuming: every rank meets the same file and the same errors
        status, payload = 0, b""
        if self.is_root and os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    payload, status = f.read(), 1
            except OSError as error:
                payload, status = f"{type(error).__name__}: {error}".encode(), -1
        header = np.array([status], np.int64)
        self.mpi.bcast([header], "sending the checkpoint's status from rank 0")
        payload = self.bcast_bytes(payload, f"sending the checkpoint {path} from rank 0")
        if header[0] == 0:
            return None
        if header[0] < 0:
            raise OSError(f"rank 0 could not read the checkpoint {path}: {payload.decode()}")
        if self.is_root:
            return path
        fd, self._tmp = tempfile.mkstemp(suffix=".h5", prefix=f"nnflow-rank{self.rank}-")
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        return self._tmp

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(self._tmp)
            self._tmp = None

    # -- failures -----------------------------------------------------------------------------
    def _no_answer(self, what: str, waited: float) -> str:
        return (
            f"rank {self.rank} of {self.size}: no answer from the other ranks for "
            f"{waited:.0f} s during {what}; a rank has crashed, hangs or is far slower (the "
            f"timeout is {self.timeout:g} s: DataParallel(timeout=...) or {ENV_TIMEOUT}=SECONDS)"
        )

    def _watch(self, what: str):
        return self._watchdog.armed(what, self.timeout)

    def _expired(self, what: str, waited: float) -> None:
        """The watchdog's deadline passed during ``what``: say so and stop every rank."""
        sys.stderr.write(
            f"nnflow: {self._no_answer(what, waited)}\n"
            f"nnflow: stopping all {self.size} ranks (MPI_Abort)\n"
        )
        sys.stderr.flush()
        self.data.abort()
        if self.MPI.Query_thread() == self.MPI.THREAD_MULTIPLE:
            self.comm.Abort(1)
        os._exit(1)  # without MPI_THREAD_MULTIPLE, the launcher sees this rank fail

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        """Poll ``done`` until it is true (the NCCL path); a ``DistributedError`` after
        ``timeout`` seconds, or ``SIGNAL_GRACE`` seconds after a signal arrived (a launcher
        stopping the job)."""
        if done():
            return
        start = time.monotonic()
        signalled = None
        while not done():
            now = time.monotonic()
            if now - start > self.timeout:
                raise DistributedError(self._no_answer(what, now - start))
            if self.pending_signal is not None:
                signalled = signalled or now
                if now - signalled > SIGNAL_GRACE:
                    name = signal.Signals(self.pending_signal).name
                    raise DistributedError(
                        f"rank {self.rank} of {self.size}: got {name} while waiting "
                        f"{now - start:.1f} s for the other ranks during {what}; a rank has "
                        f"probably died and the launcher is stopping the job (its message "
                        f"names the rank)"
                    )
            if now - start > _SPIN:
                time.sleep(0.0005)

    def collective(self, error: BaseException) -> bool:
        """Whether every rank raises ``error`` alike (so no rank needs to be stopped)."""
        from .trainer import NonFiniteLossError, TrainingInterrupted

        if isinstance(error, (NonFiniteLossError, TrainingInterrupted)):
            return True
        return bool(getattr(error, "collective", False) or self._symmetric)

    @contextlib.contextmanager
    def guard(self, trainer: Any = None):
        """Run a block in which an error seen by this rank alone stops every rank."""
        try:
            yield
        except BaseException as error:
            if self.size == 1 or self.collective(error):
                raise
            self.abort(error, trainer)
        finally:
            self._symmetric = False
            self._remove_tmp()

    def abort(self, error: BaseException, trainer: Any = None) -> None:
        """Print ``error`` with this rank's name and stop every rank (``MPI_Abort``)."""
        where = ""
        if trainer is not None:
            where = f" at epoch {trainer.epoch + 1}, step {trainer.step}"
        text = (
            ""
            if isinstance(error, DistributedError)
            else "".join(traceback.format_exception(error))
        )
        message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        sys.stderr.write(
            f"{text}nnflow: rank {self.rank} of {self.size} failed{where}: {message}\n"
            f"nnflow: stopping all {self.size} ranks (MPI_Abort)\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        self.data.abort()
        self.comm.Abort(1)

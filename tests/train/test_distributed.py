"""Data-parallel training (nnflow.train.distributed): sharding, buckets, and real 2-rank runs.

The multi-process tests launch ``mpirun -n 2`` on this machine (Open MPI or MPICH, loopback
only) and skip, saying why, when ``mpirun`` or ``mpi4py`` is missing or MPI cannot start two
ranks here; ``.ci/run`` installs both where it can.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from trainkit import ROOT, subprocess_env

from nnflow.data import DataLoader
from nnflow.data.sharded import ShardedLoader
from nnflow.train.checkpoint import read_checkpoint, write_checkpoint
from nnflow.train.distributed import _plan

JOB = str(ROOT / "tests" / "train" / "distjob.py")


# -- no MPI needed ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nnflow.data.sharded", "nnflow.train.distributed"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize(
    "n, batch, shuffle, drop_last",
    [(23, 4, True, False), (20, 2, False, False), (23, 3, True, True)],
)
def test_shards_split_each_global_batch_in_order(world, n, batch, shuffle, drop_last):
    loader = DataLoader(np.arange(n), batch, shuffle=shuffle, seed=7, drop_last=drop_last)
    single = DataLoader(np.arange(n), batch * world, shuffle=shuffle, seed=7, drop_last=drop_last)
    shards = [ShardedLoader(loader, r, world) for r in range(world)]
    assert {len(s) for s in shards} == {len(single)}
    for epoch in range(2):
        for s in shards:
            s.set_epoch(epoch)
        single.set_epoch(epoch)
        pieces = [list(s) for s in shards]
        for step, whole in enumerate(single):
            parts = [p[step] for p in pieces]
            np.testing.assert_array_equal(np.concatenate(parts), whole)  # disjoint, in order
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
            if len(whole) == batch * world:
                assert sizes == [batch] * world


def test_a_rank_with_nothing_left_yields_an_empty_batch():
    x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    loader = DataLoader((x, y), batch_size=2, shuffle=False)
    last = list(ShardedLoader(loader, rank=1, world_size=4))  # global batches of 8: 5 = 2+1+1+1
    assert [len(b[1]) for b in last] == [1]
    loader = DataLoader((x, y), 4, shuffle=False)  # global batches of 32: 5 samples for 8
    pieces = [list(ShardedLoader(loader, rank, world_size=8)) for rank in range(8)]
    assert [len(p[0][1]) for p in pieces] == [0, 1, 0, 1, 1, 0, 1, 1]
    assert pieces[0][0][0].shape == (0, 2) and pieces[0][0][1].dtype == y.dtype
    skipping = ShardedLoader(loader, 0, 8, keep_empty=False)
    assert list(skipping) == []


def test_shard_position_resumes_and_checks():
    loader = DataLoader(np.arange(40), batch_size=4, seed=1)
    shard = loader.shard(rank=1, world_size=2)
    it = iter(shard)
    first = [next(it) for _ in range(2)]
    state = shard.state_dict()
    rest = list(it)
    again = DataLoader(np.arange(40), batch_size=4, seed=99).shard(1, 2)
    again.load_state_dict(state)
    # as a DataLoader counts: the 2nd batch was handed out but not finished with
    assert state == {"epoch": 0, "batch": 1, "seed": 1}
    np.testing.assert_array_equal(np.concatenate(list(again)), np.concatenate([first[1], *rest]))
    with pytest.raises(ValueError, match="outside this loader's epoch of 5 global batches"):
        again.load_state_dict({"epoch": 0, "batch": 6, "seed": 1})
    with pytest.raises(ValueError, match="already sharded as rank 1 of 2"):
        shard.shard(0, 2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        loader.shard(2, 2)
    with pytest.raises(TypeError, match="has no 'order'"):
        ShardedLoader([np.zeros(2)], 0, 1)


def test_buckets_are_few_and_bounded():
    entries = [(i, (1000,), np.dtype("float32")) for i in range(10)]  # 4000 bytes each
    entries += [("big", (5000,), np.dtype("float32")), ("d", (3,), np.dtype("float64"))]
    plan = _plan(entries, bucket_bytes=12000)
    sizes = [(dtype.name, length) for dtype, length, _ in plan]
    # 3 arrays fill a bucket; the one too big for any gets its own (and closes the open one)
    assert sizes == [("float32", n) for n in (3000, 3000, 3000, 1000, 5000)] + [("float64", 3)]
    placed = sorted(str(key) for _, _, items in plan for key, *_ in items)
    assert placed == sorted(str(key) for key, _, _ in entries)  # every array exactly once
    aligned = _plan([("a", (3,), np.uint8), ("b", (5,), np.uint8)], 1 << 20, align=16)
    assert aligned[0][1:] == (21, [("a", 0, 3, (3,)), ("b", 16, 5, (5,))])


def test_missing_mpi4py_says_how_to_install(monkeypatch, tmp_path):
    from nnflow.optim import SGD
    from nnflow.train import Trainer

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # "import mpi4py" now raises ImportError
    params = {"w": np.zeros(2)}
    with pytest.raises(ImportError, match=r"pip install 'nnflow\[dist\]'"):
        Trainer(params, lambda p, b: p["w"].sum(), SGD(params), distributed=True)
    blocker = tmp_path / "mpi4py"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no mpi4py in this test')\n")
    env = subprocess_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    done = subprocess.run(
        [sys.executable, "-m", "nnflow", "fit", JOB, "--distributed", "--epochs", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "nnflow: error: distributed training needs mpi4py" in done.stderr
    assert "pip install 'nnflow[dist]'" in done.stderr and "mpirun -n N" in done.stderr


def test_mid_epoch_checkpoint_resumes_only_on_as_many_ranks(tmp_path):
    import distjob

    from nnflow.train import CheckpointError, Trainer

    net = distjob.model()
    opt = distjob.optimizer(net, 1e-2)
    path = tmp_path / "mid.h5"
    state = {"epoch": 1, "step": 9, "batch": 3, "sums": {}, "seed": 0, "world_size": 2}
    write_checkpoint(path, net, opt, trainer={**state, "history": [], "callbacks": []})
    trainer = Trainer(net, distjob.loss, opt, checkpoint=path, progress=False)
    train, _ = distjob.data(16, 0)
    with pytest.raises(CheckpointError, match=r"by a run on 2 process\(es\); resume it on 2"):
        trainer.fit(train, 2, resume=True)


# -- two ranks under mpirun ----------------------------------------------------------------------
@functools.cache
def _mpirun() -> tuple[list[str], str, bool]:
    """The mpirun command line for 2 local ranks, or ``([], why not, broken)``: ``broken`` when
    MPI and mpi4py are both installed but cannot start 2 ranks (a failure, not a skip)."""
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        return (
            [],
            "no mpirun on PATH (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev)",
            False,
        )
    if importlib.util.find_spec("mpi4py") is None:
        return [], "mpi4py is not installed (pip install 'nnflow[dist]')", False
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    command = [mpirun, "-n", "2"]
    if "Open MPI" in version or "OpenRTE" in version:
        command += ["--allow-run-as-root", "--oversubscribe", "--mca", "btl_tcp_if_include", "lo"]
        command += ["--mca", "oob_tcp_if_include", "lo"]
    probe = "from mpi4py import MPI; c = MPI.COMM_WORLD; assert c.Get_size() == 2; c.Barrier()"
    try:
        done = subprocess.run(
            [*command, sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
    except subprocess.TimeoutExpired:
        return [], f"'{' '.join(command)}' did not start 2 ranks within 60 s", True
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-600:]
        return [], f"MPI cannot start 2 ranks here ({' '.join(command)}): {tail}", True
    return command, "", False


def _env(**extra: str) -> dict:
    env = subprocess_env()
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


@pytest.fixture
def mpirun():
    command, why, broken = _mpirun()
    if broken:  # MPI and mpi4py are installed: not starting is a failure to see, not a skip
        pytest.fail(why)
    if not command:
        pytest.skip(why)
    return command


def run(command, *args, timeout=180, **env):
    start = time.monotonic()
    done = subprocess.run(
        [*command, sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
    )
    done.elapsed = time.monotonic() - start
    return done


def test_two_ranks_match_one_process_with_the_doubled_batch(mpirun, tmp_path):
    import distjob

    # 193 samples in global batches of 32: the last one has 1 sample, so rank 1's piece is empty
    done = run(mpirun, JOB, tmp_path, 16, 193, 2)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    for name in ranks[0]:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    _, net, history = distjob.train(32, 193, 2, distributed=False)
    single = distjob.arrays(net)
    assert single.keys() == ranks[0].keys()
    for name, x in single.items():
        assert x.dtype == np.float64
        np.testing.assert_allclose(ranks[0][name], x, rtol=1e-10, atol=1e-13, err_msg=name)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["stats"]["size"] == 2 and saved["stats"]["steps"] == 14
    for got, want in zip(saved["history"], history, strict=True):
        assert got.keys() == {k for k in want if k != "time"}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert got[key] == pytest.approx(want[key], rel=1e-10), key


def test_cli_stops_together_on_one_ranks_signal_and_resumes(mpirun, tmp_path):
    from nnflow.train.cli import main

    ck = tmp_path / "run.h5"
    fit = ["-m", "nnflow", "fit", JOB, "--distributed", "--no-progress", "--checkpoint", ck]
    stopped = run(mpirun, *fit, "--epochs", "3", DISTJOB_FAIL="term")
    assert stopped.returncode != 0, stopped.stdout + stopped.stderr
    assert stopped.stderr.count("training stopped by SIGTERM at epoch 2") == 1, stopped.stderr
    assert "epoch 1  loss" in stopped.stdout and "epoch 2  loss" not in stopped.stdout
    state = read_checkpoint(ck, *_fresh(), require_trainer=True)["trainer"]
    # rank 1 got the signal after its 2nd step of epoch 2; both ranks stopped after the 3rd
    assert (state["epoch"], state["batch"], state["world_size"]) == (1, 3, 2)

    resumed = run(mpirun, *fit, "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("done: 3 epochs, 21 steps") == 1, resumed.stdout
    assert resumed.stdout.count("epoch 3  loss") == 1

    straight = tmp_path / "single.h5"
    argv = ["fit", JOB, "--no-progress", "--epochs", "3", "--batch-size", "32"]
    assert main([*argv, "--checkpoint", str(straight)]) == 0
    model_a, _ = _fresh()
    model_b, _ = _fresh()
    a = read_checkpoint(ck, model_a, require_trainer=True)["trainer"]
    b = read_checkpoint(straight, model_b, require_trainer=True)["trainer"]
    want = model_b.state_dict()
    for name, x in model_a.state_dict().items():
        np.testing.assert_allclose(x, want[name], rtol=1e-10, atol=1e-13, err_msg=str(name))
    for got, want in zip(a["history"], b["history"], strict=True):
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-10)


def _fresh():
    import distjob

    net = distjob.model()
    return net, distjob.optimizer(net, 1e-2)


@pytest.mark.parametrize("mode", ["kill", "raise", "hang"])
def test_a_failing_rank_stops_the_job_and_the_checkpoint_survives(mpirun, tmp_path, mode):
    ck = tmp_path / "run.h5"
    done = run(
        mpirun,
        "-m",
        "nnflow",
        "fit",
        JOB,
        "--distributed",
        "--no-progress",
        "--epochs",
        "5",
        "--checkpoint",
        ck,
        timeout=120,
        DISTJOB_FAIL=mode,
        NNFLOW_DIST_TIMEOUT="3",
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert done.elapsed < 60, f"took {done.elapsed:.0f} s to stop"
    if mode == "kill":  # mpirun names the dead rank; rank 0 says why it stops, if in time
        assert "signal 9" in out or "rank 0 of 2" in out, out
    elif mode == "raise":
        assert "nnflow: rank 1 of 2 failed at epoch 2, step 9: RuntimeError: injected" in out
        assert "stopping all 2 ranks" in out
    else:
        assert "rank 0 of 2: no answer from the other ranks for 3 s" in out, out
        assert "the gradient allreduce of step 10 (epoch 2)" in out
    net, opt = _fresh()
    state = read_checkpoint(ck, net, opt, require_trainer=True)["trainer"]
    assert (state["epoch"], state["batch"]) == (1, 0)  # the end of epoch 1, intact


def test_benchmark_runs_and_its_rows_agree(mpirun):
    """``benchmarks/distributed.py``, one tiny round, so that it cannot rot."""
    rows = ["1 proc x 1 thread", "mpirun -n 2"]
    args = ["--rounds", "1", "--epochs", "1", "--configs", "example", "--max-wait", "0"]
    # the options the probe found to work, less those the benchmark adds itself
    extra = " ".join(a for a in mpirun[3:] if a not in ("--allow-run-as-root", "--oversubscribe"))
    done = run(
        [],
        ROOT / "benchmarks" / "distributed.py",
        *args,
        "--rows",
        *rows,
        f"--mpirun-args={extra}",
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "final losses agree" in done.stdout
    pattern = r"^\| example \| mpirun -n 2 \| [\d.]+ .*\| ([\d.]+)% \| ([\d.]+) \|$"
    two = re.search(pattern, done.stdout, re.M)
    assert two is not None, done.stdout
    assert 0 < float(two.group(1)) < 100 and float(two.group(2)) > 0


# -- the NCCL path, against a stand-in for CuPy and NCCL ------------------------------------------
class _DeviceArray(np.ndarray):
    """A NumPy array that exposes ``.data.ptr`` like a CuPy array."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.ctypes.data)


def _fake_gpu(log: list, done_after: int):
    class Event:
        def __init__(self, disable_timing=False):
            self.polls = 0

        def record(self, stream=None):
            log.append(("record", "nccl" if stream is not None else "current"))

        @property
        def done(self):
            self.polls += 1
            return self.polls > done_after

    class Stream:
        ptr = 1234

        def __init__(self, non_blocking=False):
            pass

        def wait_event(self, event):
            log.append(("wait_event",))

    class Communicator:
        def __init__(self, size, uid, rank):
            log.append(("init", size, len(uid), rank))

        def allReduce(self, send, recv, count, kind, op, stream):  # noqa: N802 (CuPy's name)
            log.append(("allReduce", send == recv, count, kind, op, stream))

        def bcast(self, ptr, count, kind, root, stream):
            log.append(("bcast", count, kind, root, stream))

        def check_async_error(self):
            log.append(("check",))

        def abort(self):
            log.append(("abort",))

    names = ["INT8", "UINT8", "INT32", "UINT32", "INT64", "UINT64", "FLOAT16", "FLOAT32", "FLOAT64"]
    nccl = SimpleNamespace(
        available=True,
        NCCL_SUM=0,
        get_unique_id=lambda: tuple(range(-64, 64)),
        NcclCommunicator=Communicator,
        groupStart=lambda: log.append(("groupStart",)),
        groupEnd=lambda: log.append(("groupEnd",)),
        **{f"NCCL_{name}": i for i, name in enumerate(names)},
    )
    cupy = SimpleNamespace(cuda=SimpleNamespace(Event=Event, Stream=Stream))
    return cupy, nccl


def test_nccl_backend_groups_calls_and_keeps_its_deadline(monkeypatch):
    from nnflow.train import distributed

    log: list = []
    cupy, nccl = _fake_gpu(log, done_after=2)
    monkeypatch.setattr(distributed, "_load_cupy", lambda: (cupy, ""))
    monkeypatch.setattr(distributed, "_nccl_module", lambda: nccl)
    dp = distributed.DataParallel(timeout=0.3)
    sent = []
    mpi = SimpleNamespace(bcast=lambda buffers, what: sent.append(buffers[0].copy()))
    backend = distributed._NCCLBackend(mpi, rank=0, size=2, wait=dp._wait)
    assert sent[0].tolist() == list(range(-64, 64)) and log[0] == ("init", 2, 128, 0)

    log.clear()
    grads = np.zeros(6, np.float32).view(_DeviceArray)
    pair = np.zeros(3, np.complex64).view(_DeviceArray)  # summed as 6 float32 values
    backend.allreduce([grads, pair, np.zeros(0, np.float64).view(_DeviceArray)], "a test")
    calls = [entry[0] for entry in log]
    assert calls[:3] == ["record", "wait_event", "groupStart"]  # NCCL waits for the gradients
    assert log[3] == ("allReduce", True, 6, nccl.NCCL_FLOAT32, 0, 1234)
    assert log[4] == ("allReduce", True, 6, nccl.NCCL_FLOAT32, 0, 1234)
    assert calls[5:7] == ["groupEnd", "record"] and calls.count("check") == 3

    log.clear()
    backend.bcast([np.zeros(16, np.uint8).view(_DeviceArray)], "a test")
    assert ("bcast", 16, nccl.NCCL_UINT8, 0, 1234) in log

    never, _ = _fake_gpu(log, done_after=10**9)
    backend.cupy = never
    with pytest.raises(distributed.DistributedError, match="no answer from the other ranks"):
        backend.allreduce([grads], "the gradient allreduce of step 3 (epoch 1)")
    with pytest.raises(distributed.DistributedError, match="NCCL cannot send arrays of dtype"):
        backend.allreduce([np.zeros(2, np.bool_).view(_DeviceArray)], "a test")
    backend.abort()
    assert log[-1] == ("abort",)

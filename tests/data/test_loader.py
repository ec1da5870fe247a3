"""DataLoader: batching, deterministic shuffles by seed, resuming mid-epoch, datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnflow.data import DataLoader


def arrays(n: int = 10):
    return np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n)


def labels_of(loader) -> list[list[int]]:
    return [batch[1].tolist() for batch in loader]


def test_batches_keep_structure_and_sizes():
    x, y = arrays(10)
    loader = DataLoader((x, y), batch_size=4, shuffle=False)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2] and len(loader) == 3
    assert isinstance(batches[0], tuple) and batches[0][0].shape == (4, 2)
    assert np.shares_memory(batches[0][0], x)  # unshuffled batches are views
    assert len(list(DataLoader((x, y), batch_size=4, drop_last=True))) == 2
    as_dict = next(iter(DataLoader({"x": x, "y": y}, batch_size=3)))
    assert set(as_dict) == {"x", "y"} and as_dict["x"].shape == (3, 2)
    single = next(iter(DataLoader(x, batch_size=5, shuffle=False)))
    assert single.shape == (5, 2)


def test_shuffle_is_a_permutation_deterministic_by_seed_and_epoch():
    x, y = arrays(50)
    first = DataLoader((x, y), batch_size=8, seed=3)
    epoch0, epoch1 = labels_of(first), labels_of(first)
    again = DataLoader((x, y), batch_size=8, seed=3)
    assert labels_of(again) == epoch0 and labels_of(again) == epoch1
    assert sorted(sum(epoch0, [])) == list(range(50)) and epoch0 != epoch1
    assert labels_of(DataLoader((x, y), batch_size=8, seed=4)) != epoch0
    jump = DataLoader((x, y), batch_size=8, seed=3)
    jump.set_epoch(1)
    assert labels_of(jump) == epoch1  # any epoch can be replayed directly
    for xb, yb in DataLoader((x, y), batch_size=8, seed=3):
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)  # rows stay paired


def test_resume_mid_epoch_gives_the_remaining_batches():
    x, y = arrays(30)
    straight = DataLoader((x, y), batch_size=4, seed=1)
    want = labels_of(straight) + labels_of(straight)
    loader = DataLoader((x, y), batch_size=4, seed=1)
    got = []
    for i, (_, yb) in enumerate(loader):
        got.append(yb.tolist())
        if i == 2:
            break  # stopped while batch 2 was being used: 2 batches done
    state = json.loads(json.dumps(loader.state_dict()))
    assert state == {"epoch": 0, "batch": 2, "seed": 1}
    resumed = DataLoader((x, y), batch_size=4, seed=1)
    resumed.load_state_dict(state)
    got = got[:2] + labels_of(resumed) + labels_of(resumed)
    assert got == want and resumed.epoch == 2 and resumed.batch == 0


def test_resume_validates_the_position():
    loader = DataLoader(arrays(10), batch_size=4)
    with pytest.raises(ValueError, match="batch 9 is outside this loader's epoch of 3 batches"):
        loader.load_state_dict({"epoch": 0, "batch": 9, "seed": 0})


class Squares:
    """An indexable dataset returning (x, y) samples."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return np.full(3, i, np.float32), np.int64(i * i)


def test_any_indexable_dataset_is_collated():
    batches = list(DataLoader(Squares(), batch_size=3, shuffle=False))
    assert [b[1].tolist() for b in batches] == [[0, 1, 4], [9, 16, 25], [36]]
    assert batches[0][0].shape == (3, 3) and batches[0][0].dtype == np.float32
    shuffled = DataLoader(Squares(), batch_size=7, seed=0)
    assert sorted(next(iter(shuffled))[1].tolist()) == [0, 1, 4, 9, 16, 25, 36]


@pytest.mark.parametrize(
    "data, batch_size, error, message",
    [
        ((np.zeros(3), np.zeros(4)), 2, ValueError, r"differ in length along axis 0 \(\[0\]: 3"),
        (np.zeros(3), 0, ValueError, "batch_size must be a positive int, got 0"),
        (42, 2, TypeError, "got int"),
        ((), 2, ValueError, "no arrays given"),
    ],
)
def test_errors_name_the_problem(data, batch_size, error, message):
    with pytest.raises(error, match=message):
        DataLoader(data, batch_size)


def test_repr():
    assert repr(DataLoader(arrays(10), 4)).startswith("DataLoader(10 samples, batch_size=4")

"""``BPTTLoader`` (consecutive chunks for truncated BPTT) and the shipped text."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import pytest

from nnflow.data import BPTTLoader, CharVocab, nettle_manual


def test_rows_continue_across_chunks_and_targets_are_shifted_inputs():
    sequence = np.arange(1000)
    loader = BPTTLoader(sequence, batch_size=4, seq_len=16, shuffle=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 16  # 249 steps per stream: 15 full chunks + 9
    assert [first for _, _, first in batches] == [True] + [False] * 15
    xs = np.concatenate([x for x, _, _ in batches], axis=1)
    ys = np.concatenate([y for _, y, _ in batches], axis=1)
    assert xs.shape == (4, 249)
    np.testing.assert_array_equal(ys, xs + 1)  # next-step targets
    for row in xs:  # each row is one consecutive stretch of the sequence
        np.testing.assert_array_equal(np.diff(row), 1)
    np.testing.assert_array_equal(xs[:, 0], [0, 249, 498, 747])  # side by side


def test_drop_last_keeps_one_shape():
    loader = BPTTLoader(np.arange(1000), batch_size=4, seq_len=16, drop_last=True)
    shapes = {x.shape for x, _, _ in loader}
    assert shapes == {(4, 16)} and len(loader) == 15


def test_shuffle_moves_the_start_by_seed_and_epoch_only():
    sequence = np.arange(10_000)
    a = BPTTLoader(sequence, 8, 32, seed=3, drop_last=True)
    b = BPTTLoader(sequence, 8, 32, seed=3, drop_last=True)
    offsets = [a.offset(e) for e in range(20)]
    assert all(0 <= o < 32 for o in offsets) and len(set(offsets)) > 5
    assert offsets == [b.offset(e) for e in range(20)]
    assert [BPTTLoader(sequence, 8, 32, seed=4).offset(e) for e in range(20)] != offsets
    lengths = set()
    for epoch in range(5):
        a.set_epoch(epoch)
        batches = list(a)
        lengths.add(len(batches))
        assert batches[0][0][0, 0] == offsets[epoch]
    assert lengths == {len(a)}  # the same number of chunks every epoch


def test_iteration_advances_epochs_and_resumes_mid_epoch():
    loader = BPTTLoader(np.arange(2_000), 4, 10, seed=1, drop_last=True)
    first_epoch = [x.copy() for x, _, _ in loader]
    assert loader.epoch == 1 and loader.batch == 0
    second_epoch = [x.copy() for x, _, _ in loader]
    it = iter(loader)  # epoch 2, stopped after 3 chunks
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batch": 3, "seed": 1}
    fresh = BPTTLoader(np.arange(2_000), 4, 10, seed=0, drop_last=True)
    fresh.load_state_dict(state)
    rest = list(fresh)
    fresh.set_epoch(2)
    whole = list(fresh)
    assert len(rest) == len(whole) - 3
    for (x, _, first), (w, _, _) in zip(rest, whole[3:], strict=True):
        np.testing.assert_array_equal(x, w)
        assert first is False
    assert not np.array_equal(first_epoch[0], second_epoch[0])  # a new offset per epoch


def test_the_trainer_sees_sizes_and_counts():
    loader = BPTTLoader(np.arange(1000), 4, 16, drop_last=True)
    assert loader.num_samples == 15 * 4 and loader.batch_size == 4
    assert "15 chunks" in repr(loader)


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.arange(100), 0, 4), "batch_size must be a positive int"),
        ((np.arange(100), 2, 0), "seq_len must be a positive int"),
        ((np.zeros((10, 10)), 2, 4), "expected a 1-d sequence"),
        ((np.arange(10), 4, 4), "too short for 4 streams"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        BPTTLoader(*args)


def test_load_state_dict_refuses_a_foreign_position():
    loader = BPTTLoader(np.arange(100), 2, 4)
    with pytest.raises(ValueError, match="outside this loader's epoch"):
        loader.load_state_dict({"epoch": 0, "batch": 999, "seed": 0})


def test_the_shipped_text_and_its_split():
    raw = resources.files("nnflow.data").joinpath("nettle.txt.gz").read_bytes()
    assert 10_000 < len(raw) < 60_000  # "a few tens of KB"
    text = nettle_manual()
    assert text == gzip.decompress(raw).decode("utf-8")
    assert text.startswith("1 Introduction\n\nNettle is a cryptographic library")
    train, test = nettle_manual("train"), nettle_manual("test")
    assert 0.85 < len(train) / len(text) < 0.95
    assert test.split("\n\n")[0] in text and test.split("\n\n")[0] not in train
    with pytest.raises(ValueError, match="split must be"):
        nettle_manual("validation")


def test_char_vocab_round_trips_and_names_unknown_characters():
    vocab = CharVocab(nettle_manual())
    assert len(vocab) == len(set(nettle_manual())) and vocab.chars == "".join(sorted(vocab.chars))
    codes = vocab.encode(nettle_manual("test"))
    assert codes.dtype == np.int64 and vocab.decode(codes) == nettle_manual("test")
    with pytest.raises(KeyError, match="'€' is not in the vocabulary"):
        vocab.encode("5 €")

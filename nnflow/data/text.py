"""A short public-domain English text shipped with nnflow, and character vocabularies.

``nettle_manual()`` is the text ``examples/rnn.py`` learns to write, character by character:
51,665 characters (15 KB gzipped, ``nnflow/data/nettle.txt.gz``) from the manual of Nettle, the
low-level cryptographic library by Niels Möller and others, whose own words are: "This manual
is placed in the public domain. You may freely copy it, in whole or in part, with or without
modification." It is mostly English prose (the introduction, conventions, hash functions,
randomness and installation chapters) with some C declarations. ``tools/make_nettle_text.py``
rebuilds the file from the HTML manual Debian ships in ``nettle-dev``; its docstring says
what was kept.

>>> text = nettle_manual()
>>> text[:22], len(text) > 50_000
('1 Introduction\\n\\nNettle', True)
>>> vocab = CharVocab(text)
>>> vocab.decode(vocab.encode("Nettle"))
'Nettle'
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources

import numpy as np

__all__ = ["nettle_manual", "CharVocab"]


@functools.cache
def _nettle_text() -> str:
    data = resources.files(__package__).joinpath("nettle.txt.gz").read_bytes()
    return gzip.decompress(data).decode("utf-8")


def nettle_manual(split: str = "all") -> str:
    """The shipped part of the Nettle manual (public domain), as one string.

    The split is by paragraph (blank-line separated) and needs no random generator: every
    10th paragraph (the 10th, 20th, ...) is held out as test text, joined in order, and the
    others are the training text. Both keep the blank lines between paragraphs.

    Args:
        split: ``"train"`` (about 90% of the characters), ``"test"`` or ``"all"``.

    >>> len(nettle_manual("train")) + len(nettle_manual("test")) + 1 == len(nettle_manual())
    True
    """
    text = _nettle_text()
    if split == "all":
        return text
    if split not in ("train", "test"):
        raise ValueError(f"nettle_manual: split must be 'train', 'test' or 'all', got {split!r}")
    paragraphs = text.rstrip("\n").split("\n\n")
    held_out = split == "test"
    kept = [p for i, p in enumerate(paragraphs) if (i % 10 == 9) == held_out]
    return "\n\n".join(kept) + "\n"


class CharVocab:
    """The characters of a text, numbered in sorted order: ``encode`` and ``decode``.

    >>> vocab = CharVocab("hello")
    >>> len(vocab), vocab.chars, vocab.encode("hole").tolist()
    (4, 'ehlo', [1, 3, 2, 0])
    """

    def __init__(self, text: str):
        self.chars = "".join(sorted(set(text)))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """The ``int64`` indices of the characters of ``text`` (a ``KeyError`` names any
        character the vocabulary lacks)."""
        try:
            return np.fromiter((self.index[c] for c in text), np.int64, len(text))
        except KeyError as error:
            message = f"CharVocab: character {error.args[0]!r} is not in the vocabulary"
            raise KeyError(message) from None

    def decode(self, indices) -> str:
        """The text of a sequence of indices (NumPy arrays or ints; move GPU arrays first)."""
        return "".join(self.chars[int(i)] for i in np.asarray(indices).reshape(-1))

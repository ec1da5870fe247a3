"""Rebuild ``nnflow/data/nettle.txt.gz``, the text ``examples/rnn.py`` learns to write.

The text is a part of the manual of Nettle, the low-level cryptographic library by Niels Möller
and others. The manual says of itself: "This manual is placed in the public domain. You may
freely copy it, in whole or in part, with or without modification. Attribution is appreciated,
but not required." Debian ships it in the ``nettle-dev`` package as
``/usr/share/doc/nettle-dev/nettle.html`` (Nettle 3.8, Debian 12); this script turns that HTML
into plain text, keeps the chapters that are mostly English prose (1 to 6, 7.1 on hash
functions, 7.8 on randomness, 8 and 9, leaving out the long reference chapters 7.2 to 7.7
and 7.9 to 7.11 and the index), drops navigation and menu lines, writes typographic quotes,
bullets, dashes and ellipses as ASCII, and gzips the result deterministically (no time stamp)::

    python tools/make_nettle_text.py [/usr/share/doc/nettle-dev/nettle.html]

It needs only the standard library.
"""

from __future__ import annotations

import gzip
import html.parser
import re
import sys
from pathlib import Path

SOURCE = "/usr/share/doc/nettle-dev/nettle.html"
TARGET = Path(__file__).resolve().parents[1] / "nnflow" / "data" / "nettle.txt.gz"
CHAPTERS = ("1", "2", "3", "4", "5", "6", "7.1", "7.8", "8", "9")  # kept, with their sections
ASCII = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2022": "*",
         "\u2026": "...", "\u2014": "--", "\u2013": "-", "\u00a0": " "}  # fmt: skip
BLOCKS = {"p", "br", "div", "h1", "h2", "h3", "h4", "h5", "li", "pre", "dt", "dd", "tr", "table",
          "blockquote", "dl"}  # fmt: skip


class _Text(html.parser.HTMLParser):
    """The text of an HTML page, with a line break around every block element."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style")
        if tag in BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.hidden -= tag in ("script", "style")
        if tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def extract(page: str) -> str:
    """The kept chapters of the manual's HTML ``page`` as plain ASCII-punctuated text."""
    parser = _Text()
    parser.feed(page)
    lines = "".join(parser.parts).split("\n")
    nav = re.compile(r"^(Next|Previous|Up): .*\[(Contents|Index)\]")
    lines = [line.rstrip() for line in lines if not nav.match(line)]
    text = "\n".join(lines)
    body = text.index("\n1 Introduction\n", text.index("\n9 Installation\n"))  # after the TOC
    toc = set(text[text.index("Table of Contents") : body].split("\n"))  # the headings
    text = text[body : text.index("\nFunction and Concept Index", body)]
    heading = re.compile(r"^(\d+(?:\.\d+)*) \S.*$", re.M)
    starts = [m for m in heading.finditer(text) if m.group(0) in toc]
    kept = []
    for m, following in zip(starts, starts[1:] + [None], strict=True):
        number = m.group(1)
        if any(number == c or number.startswith(c + ".") for c in CHAPTERS):
            kept.append(text[m.start() : following.start() if following else len(text)])
    text = "".join(kept)
    for old, new in ASCII.items():
        text = text.replace(old, new)
    text = "\n".join(line for line in text.split("\n") if not re.match(r"^\* .*  $", line))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def main(argv: list[str]) -> None:
    """Read the manual's HTML (``argv[0]`` or the Debian path) and write the gzipped text."""
    page = Path(argv[0] if argv else SOURCE).read_text(encoding="utf-8")
    text = extract(page)
    TARGET.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    print(f"{TARGET}: {len(text):,} characters, {TARGET.stat().st_size:,} bytes gzipped")


if __name__ == "__main__":
    main(sys.argv[1:])

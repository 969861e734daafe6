#!/usr/bin/python3
"""Regenerate the King James Bible training corpus from Debian's bible-kjv / bible-kjv-text.

Usage: /usr/bin/python3 models/make_corpus.py OUTDIR
Writes OUTDIR/train.txt and OUTDIR/heldout.txt, one verse per line, verse references dropped,
punctuation marks split off as separate whitespace-delimited tokens ("earth." -> "earth ."),
so that the runtime's word-level tokenizer (lower-case, split on whitespace) sees plain words.
Held-out split: every 20th chapter of the whole Bible (global chapter index i, 0-based,
i % 20 == 19), decided by the reference of each verse, so it is deterministic.
Needs `apt-get install bible-kjv` (the `bible` program; the text is in bible-kjv-text).
"""
import hashlib
import os
import re
import subprocess
import sys

HELDOUT_EVERY = 20
PUNCT = re.compile(r"([,.:;?!()])")  # apostrophes and hyphens stay inside words
REF = re.compile(r"^(\S+?)(\d+):(\d+) (.*)$")  # "Ge1:1 In the beginning ..."


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_corpus.py OUTDIR")
    out = sys.argv[1]
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "bible-kjv-text"],
                             capture_output=True, text=True, check=True).stdout
    # -f turns pretty-printing off: one verse per line, preceded by its reference.
    raw = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"],
                         capture_output=True, text=True, check=True).stdout
    os.makedirs(out, exist_ok=True)
    split = {"train": [], "heldout": []}
    chapter, last = -1, None
    for line in raw.splitlines():
        m = REF.match(line)
        if not m:
            sys.exit(f"unexpected line from bible: {line[:60]!r}")
        book, chap, text = m.group(1), m.group(2), m.group(4)
        if (book, chap) != last:
            chapter, last = chapter + 1, (book, chap)
        words = PUNCT.sub(r" \1 ", text).split()
        part = "heldout" if chapter % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"
        split[part].append(" ".join(words))
    if chapter + 1 != 1189:
        sys.exit(f"expected 1189 chapters, got {chapter + 1}")
    print(f"bible-kjv-text {version}: {chapter + 1} chapters")
    for part, verses in split.items():
        data = ("\n".join(verses) + "\n").encode()
        with open(os.path.join(out, part + ".txt"), "wb") as f:
            f.write(data)
        print(f"{part}.txt: {len(verses)} verses, {len(data.split())} tokens, "
              f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()

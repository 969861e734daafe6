#!/usr/bin/python3
"""Measures what other encodings of a word tokenizer's section would store (docs/compression.md).

usage: /usr/bin/python3 tools/tokenizer_section.py MODEL.itl TOKENIZER.json [WORDS.txt]

MODEL.itl is any file itera-convert wrote with TOKENIZER.json: its tokenizer section (a zstd frame
of the token list, docs/format.md) is read back from it, so the first row is what that writer
stored: a FlatBuffer TokenList in a format version 1 file, the words each followed by a newline in
version 2 (the TokenList rows need a version 1 file). Every other row is an encoding, compressed
with the zstd command line (the same library and frame as the writer's ZSTD_compress: no
checksum, content size in the header). WORDS.txt (one word a line, from elsewhere: Debian's
wamerican /usr/share/dict/words) makes shared zstd dictionaries, which the runtime would have to
carry: the list itself, and a 16 KB dictionary `zstd --train` makes from it. Needs `zstd`.
"""
import json
import struct
import subprocess
import sys
import tempfile

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd(data, level, dictionary=None):
    """Bytes of one zstd frame of `data` at `level` (levels above 19 need --ultra)."""
    with tempfile.NamedTemporaryFile() as f, tempfile.NamedTemporaryFile() as d:
        f.write(data)
        f.flush()
        cmd = ["zstd", "-q", "-c", "--no-check", f"-{level}", f.name]
        if level > 19:
            cmd.insert(1, "--ultra")
        if dictionary is not None:
            d.write(dictionary)
            d.flush()
            cmd += ["-D", d.name]
        return len(subprocess.run(cmd, check=True, capture_output=True).stdout)


def stored_section(itl):
    """The file's format version and its tokenizer section as stored: the writer puts it last in
    the data region, 64-aligned, so it is the last 64-aligned zstd frame of the file that
    decompresses whole, running to the end of the file."""
    data = open(itl, "rb").read()
    version = struct.unpack_from("<I", data, 8)[0]
    data_offset = struct.unpack_from("<Q", data, 32)[0]
    for off in range(data_offset + (len(data) - data_offset - 1) // 64 * 64, data_offset - 1, -64):
        if data[off:off + 4] == ZSTD_MAGIC:
            raw = subprocess.run(["zstd", "-d", "-q", "-c"], input=data[off:], capture_output=True)
            if raw.returncode == 0:
                return version, data[off:], raw.stdout
    raise SystemExit(f"error: no zstd tokenizer section at the end of {itl}")


def train_dictionary(text, size):
    """zstd --train on the text cut into 4 KB samples."""
    with tempfile.TemporaryDirectory() as d:
        names = []
        for i in range(0, len(text), 4096):
            names.append(f"{d}/{i}")
            open(names[-1], "wb").write(text[i:i + 4096])
        subprocess.run(["zstd", "-q", "--train", f"--maxdict={size}", "-o", f"{d}/dict"] + names, check=True,
                       capture_output=True)
        return open(f"{d}/dict", "rb").read()


def words(tokenizer):
    tok = json.load(open(tokenizer, encoding="utf-8"))
    return [tok["id_to_token"][str(i)] for i in range(len(tok["id_to_token"]))]


def front_coded(tokens):
    """Each word as (bytes shared with the previous word, 1 byte) + the rest + newline."""
    out, prev = bytearray(), b""
    for t in tokens:
        b = t.encode()
        n = 0
        while n < min(len(b), len(prev), 255) and b[n] == prev[n]:
            n += 1
        out += bytes([n]) + b[n:] + b"\n"
        prev = b
    return bytes(out)


def main():
    itl, tokenizer = sys.argv[1:3]
    toks = words(tokenizer)
    version, frame, raw = stored_section(itl)
    lines = "".join(t + "\n" for t in toks).encode()  # the version 2 encoding
    order = sorted(range(len(toks)), key=lambda i: toks[i].encode())
    sorted_fc = front_coded([toks[i] for i in order])
    rank = [0] * len(toks)  # id -> position in the sorted list: what restores the ids
    for pos, i in enumerate(order):
        rank[i] = pos
    perm = struct.pack(f"<{len(toks)}H", *rank)
    stored = "FlatBuffer TokenList" if version == 1 else "words each followed by a newline"
    rows = [(f"stored: {stored}, zstd 19 (format version {version})", len(raw), len(frame))]
    if version == 1:
        for level in (1, 3, 9, 19, 22):
            rows.append((f"FlatBuffer TokenList, zstd {level}", len(raw), zstd(raw, level)))
    for level in (19, 22):
        rows.append((f"words joined by newlines (id order), zstd {level}", len(lines), zstd(lines, level)))
    rows.append(("front-coded, id order, zstd 19", len(front_coded(toks)), zstd(front_coded(toks), 19)))
    rows.append(("sorted, front-coded, zstd 19 (ids renumbered in sorted order)", len(sorted_fc),
                 zstd(sorted_fc, 19)))
    rows.append(("sorted, front-coded + id permutation (uint16), zstd 19 each", len(sorted_fc) + len(perm),
                 zstd(sorted_fc, 19) + zstd(perm, 19)))
    sorted_lines = "".join(toks[i] + "\n" for i in order).encode()
    rows.append(("sorted, joined by newlines, zstd 19 (ids renumbered in sorted order)", len(sorted_lines),
                 zstd(sorted_lines, 19)))
    if len(sys.argv) > 3:
        other = "\n".join(w.lower() for w in open(sys.argv[3], encoding="utf-8").read().split()).encode()
        rows.append((f"words joined by newlines, zstd 19, dictionary: all of {sys.argv[3]} ({len(other):,} bytes)",
                     len(lines), zstd(lines, 19, other)))
        trained = train_dictionary(other, 16384)
        rows.append((f"words joined by newlines, zstd 19, dictionary: 16 KB trained on {sys.argv[3]}",
                     len(lines), zstd(lines, 19, trained)))
    rows.append(("words joined by newlines, zstd 19, dictionary = this same list (a tokenizer the runtime "
                  "already has)", len(lines), zstd(lines, 19, lines)))
    print(f"{len(toks)} tokens, {sum(len(t.encode()) for t in toks)} bytes of text")
    print("| encoding | raw bytes | stored bytes | vs stored |")
    print("|---|---:|---:|---:|")
    for name, r, s in rows:
        print(f"| {name} | {r:,} | {s:,} | {s - len(frame):+,} |")


if __name__ == "__main__":
    main()

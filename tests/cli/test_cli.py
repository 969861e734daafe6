#!/usr/bin/python3
"""End-to-end and bad-input tests of the itera-convert and itera-run command lines.

usage: /usr/bin/python3 tests/cli/test_cli.py --convert build/itera-convert \
           --run build/itera-run --workdir DIR

Builds two small random models with the PyTorch reference (tests/reference/itera_lite.py), one
with a word tokenizer (upstream FrequencyTokenizer JSON) and one with a char tokenizer (upstream
SimpleTokenizer JSON), and checks:
  * info --json, text generation with -p, --seed reproducibility, ppl --json against the
    perplexity computed here from `itera-run logits` on the same windows, unk_fraction;
  * bad input: truncated / corrupted / hostile .pt files (pickles calling os.system, absurd
    shapes), missing or extra tensors, broken tokenizer and config JSON, truncated / corrupted
    .itl files, missing files and bad options. Each must exit 1 (2 for usage errors) with exactly
    one stderr line starting `error:`, without a signal, sanitizer report, hang or large memory.
Prints one line per check and `N passed, N failed`; exits 1 on any failure.

Perplexity, as upstream measured it (research notes, upstream.md 6.2): the text's ids are cut
into windows ids[N*w : N*w+N], each run from zero state at positions 0.., and every position t
except the text's last is scored against ids[t+1] (a window's last position against the next
window's first token); ppl = exp(mean NLL).
"""
import collections
import io
import json
import math
import os
import pickle
import random
import struct
import subprocess
import sys
import tempfile
import threading
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, ".."))

import torch  # noqa: E402

from itera_lite import IteraLite  # noqa: E402
from testlib import check, finish, tool_args  # noqa: E402

SPECIALS = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"]
WORDS = ("the a cat dog sat on mat ran to park and saw big small red blue ball tree happy day. "
         "time, once upon there was little bird sun with friend played under sky jumped over "
         "home").split()
CHARS = list(" abcdefghijklmnopqrstuvwxyz.,'")
MAX_RSS_MB = 512          # bad input must not make the tools allocate what the input does not hold
TIMEOUT_S = 60


class Result:
    def __init__(self, rc, out, err, rss_mb):
        self.rc, self.out, self.err, self.rss_mb = rc, out, err, rss_mb
        self.lines = err.splitlines()

    def why(self):
        tail = " | ".join(self.err.strip().splitlines()[-3:])
        return f"(exit {self.rc}: {tail[:300]})"


def run(cmd, timeout=TIMEOUT_S, cwd=None, env=None):
    """Runs cmd; exit status (negative: signal, -999: timed out), output and peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                 env=None if env is None else {**os.environ, **env})
        except OSError as e:
            return Result(-998, "", str(e), 0)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        timed_out = not timer.is_alive()
        timer.cancel()
        p.returncode = rc = -999 if timed_out else os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Result(rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                      usage.ru_maxrss / 1024)


# ---- models, tokenizers, texts -----------------------------------------------------------------

def word_tokenizer():
    tokens = SPECIALS + WORDS
    return {"vocab_size": len(tokens), "token_to_id": {t: i for i, t in enumerate(tokens)},
            "id_to_token": {str(i): t for i, t in enumerate(tokens)}}


def char_tokenizer():
    tokens = SPECIALS + CHARS
    return {"token2id": {t: i for i, t in enumerate(tokens)},
            "id2token": {str(i): t for i, t in enumerate(tokens)},
            "vocab_size": len(tokens), "level": "char"}


def encode_words(text):
    table = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    return [table.get(w, 1) for w in text.lower().split()]


def encode_chars(text):
    table = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    return [table.get(c, 1) for c in text]


def make_model(vocab, seed):
    cfg = {"vocab_size": vocab, "hidden_size": 32, "num_layers": 2, "ssm_state_size": 6,
           "ssm_conv_kernel": 4, "ssm_expand_factor": 2, "num_experts": 4, "expert_size": 24,
           "top_k_experts": 2, "moe_layers": [1], "max_seq_length": 16}
    torch.manual_seed(seed)
    model = IteraLite(cfg)
    with torch.no_grad():  # logits with std ~1 so sampling is far from uniform
        model.embedding.weight.normal_(0.0, 1.0 / math.sqrt(cfg["hidden_size"]))
    return model.state_dict(), cfg


def save_pt(path, state, cfg):
    torch.save({"model_state_dict": state, "config": cfg}, path)


def word_text(n_words, unknown, seed):
    """n_words words in mixed case and whitespace, `unknown` of them not in the vocabulary."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words - unknown)]
    for i in range(unknown):  # unknown: a new word, or a known word with punctuation glued on
        words.insert(rng.randrange(len(words) + 1), ["zebra", "Quux", "cat,", "sky!"][i % 4])
    words = [w.upper() if rng.random() < 0.2 else w for w in words]
    return "".join(w + rng.choice([" ", "  ", "\n", "\t", " \n "]) for w in words)


def write(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ---- torch.save's zip layout, written by hand so single fields can be made hostile -----------

class PtStorage:
    def __init__(self, key, numel, kind=torch.FloatStorage):
        self.key, self.numel, self.kind = key, numel, kind


class PtTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (self.storage, self.offset, tuple(self.size),
                                                  tuple(self.stride), False, collections.OrderedDict()))


class PtPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, PtStorage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


def write_zip(path, pickle_bytes, storages):
    """The entries torch.save writes: data.pkl, byteorder, data/<key> (64-byte aligned), version."""
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        def add(name, data):
            info = zipfile.ZipInfo("archive/" + name, date_time=(1980, 1, 1, 0, 0, 0))
            start = f.tell() + 30 + len(info.filename) + 4
            info.extra = b"FB" + struct.pack("<H", -start % 64) + b"Z" * (-start % 64)
            z.writestr(info, data)
        add("data.pkl", pickle_bytes)
        add("byteorder", b"little")
        for key, data in storages.items():
            add("data/" + key, data)
        add("version", b"3\n")


def write_pt(path, state, cfg, tamper=None):
    """state/cfg as a torch.save'd checkpoint; `tamper(name, tensor, storages)` may alter one
    PtTensor (its shape, stride, offset, storage) or the storage bytes before pickling."""
    storages, objs, seen = {}, collections.OrderedDict(), {}
    for name, t in state.items():
        ptr = t.data_ptr()
        if ptr not in seen:  # tied weights share one storage, as in torch.save
            key = str(len(storages))
            seen[ptr] = PtStorage(key, t.numel())
            storages[key] = t.contiguous().numpy().tobytes()
        size = list(t.shape)
        stride = [math.prod(size[i + 1:]) for i in range(len(size))]
        objs[name] = PtTensor(seen[ptr], 0, size, stride)
        if tamper:
            tamper(name, objs[name], storages)
    buf = io.BytesIO()
    PtPickler(buf, protocol=2).dump({"model_state_dict": objs, "config": cfg})
    write_zip(path, buf.getvalue(), storages)
    return path


class Call:  # pickles as REDUCE(func, args): a hostile call inside an otherwise valid checkpoint
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def unicode_op(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


# ---- checks -----------------------------------------------------------------------------------

def expect_error(label, cmd, codes=(1,), mention=None):
    r = run(cmd)
    line = r.lines[0] if r.lines else ""
    problems = []
    if r.rc not in codes:
        problems.append(f"exit {r.rc}, want {'/'.join(map(str, codes))}")
    if len(r.lines) != 1 or not line.startswith("error:"):
        problems.append(f"{len(r.lines)} stderr lines: {' | '.join(r.lines[-4:])[:400]!r}")
    if mention and not any(m in line for m in mention):
        problems.append(f"message does not name {' or '.join(map(repr, mention))}")
    if r.rss_mb > MAX_RSS_MB:
        problems.append(f"peak RSS {r.rss_mb:.0f} MB")
    shown = line if not problems else "; ".join(problems)
    return check(not problems, f"bad input {label}: {shown[:200]}")


def expect_ok(label, cmd):
    r = run(cmd)
    check(r.rc == 0, f"{label}" + ("" if r.rc == 0 else " " + r.why()))
    return r


def runtime_logits(args, itl, ids):
    r = run([args.run, "logits", "-m", itl, "--ids", ",".join(map(str, ids))])
    if r.rc != 0:
        raise RuntimeError(f"logits {r.why()}")
    return json.loads(r.out)["logits"]


def reference_ppl(args, itl, ids, n):
    """exp(mean NLL) with upstream's windows (module docstring), from the runtime's logits."""
    nll, scored = 0.0, 0
    for start in range(0, len(ids) - 1, n):
        window = ids[start:start + n]
        rows = runtime_logits(args, itl, window)
        for t, row in enumerate(rows):
            if start + t + 1 >= len(ids):
                break
            top = max(row)
            nll += top + math.log(sum(math.exp(v - top) for v in row)) - row[ids[start + t + 1]]
            scored += 1
    return math.exp(nll / scored), scored


def check_ppl(label, args, itl, text_path, ids, ctx):
    cmd = [args.run, "ppl", "-m", itl, "--file", text_path, "--json"]
    cmd += ["--ctx", str(ctx)] if ctx else []
    r = run(cmd)
    if not check(r.rc == 0, f"{label}: ppl runs" + ("" if r.rc == 0 else " " + r.why())):
        return
    try:
        got = json.loads(r.out)
        keys_ok = all(k in got for k in ("ppl", "tokens", "unk_fraction"))
    except ValueError:
        got, keys_ok = {}, False
    if not check(keys_ok, f"{label}: ppl --json has ppl, tokens, unk_fraction ({r.out.strip()[:160]})"):
        return
    want, scored = reference_ppl(args, itl, ids, ctx or 16)
    rel = abs(got["ppl"] - want) / want
    check(rel <= 1e-3, f"{label}: ppl {got['ppl']:.6g} vs exp(mean NLL) from logits {want:.6g} "
                       f"(rel {rel:.1e} <= 1e-3, {scored} scored)")
    unk = sum(i == 1 for i in ids) / len(ids)
    check(got["tokens"] == len(ids) and abs(got["unk_fraction"] - unk) <= 1e-6
          and got.get("scored", scored) == scored,
          f"{label}: tokens {got['tokens']} (want {len(ids)}), unk_fraction {got['unk_fraction']:.6f} "
          f"(want {unk:.6f}), scored {got.get('scored', '-')} (want {scored})")


def end_to_end(args, w):
    """Returns the paths the bad-input checks reuse."""
    wt, ct = word_tokenizer(), char_tokenizer()
    word_state, word_cfg = make_model(wt["vocab_size"], 1)
    char_state, char_cfg = make_model(ct["vocab_size"], 2)
    p = {k: os.path.join(w, k) for k in ("word.pt", "char.pt", "word.json", "char.json",
                                        "word.itl", "char.itl", "bare.itl")}
    save_pt(p["word.pt"], word_state, word_cfg)
    save_pt(p["char.pt"], char_state, char_cfg)
    write(p["word.json"], json.dumps(wt))
    write(p["char.json"], json.dumps(ct))
    ok = all([
        expect_ok("convert word model + word tokenizer",
                  [args.convert, p["word.pt"], "-o", p["word.itl"], "--tokenizer", p["word.json"]]).rc == 0,
        expect_ok("convert char model + char tokenizer",
                  [args.convert, p["char.pt"], "-o", p["char.itl"], "--tokenizer", p["char.json"]]).rc == 0,
        expect_ok("convert without tokenizer", [args.convert, p["word.pt"], "-o", p["bare.itl"]]).rc == 0,
    ])
    if not ok:
        return None
    p.update(word_state=word_state, word_cfg=word_cfg)

    r = run([args.run, "info", "-m", p["word.itl"], "--json"])
    try:
        info = json.loads(r.out)
        vocab = [info.get("vocab_size")]
        check(r.rc == 0 and isinstance(info, dict) and vocab == [wt["vocab_size"]],
              f"info --json parses, vocab {vocab} (keys {', '.join(list(info)[:8])}...)")
    except ValueError:
        check(False, f"info --json parses {r.why()} {r.out[:100]!r}")

    for kind, itl, prompt, enc in (("word", p["word.itl"], "The cat sat on", encode_words),
                                   ("char", p["char.itl"], "the cat", encode_chars)):
        r = run([args.run, "-m", itl, "-p", prompt, "-n", "20", "--greedy"])
        check(r.rc == 0 and r.out.strip() != "", f"{kind} -p generates text {r.out.strip()[:60]!r}"
              + ("" if r.rc == 0 else " " + r.why()))
        ids = run([args.run, "generate", "-m", itl, "--ids", ",".join(map(str, enc(prompt))),
                   "-n", "20", "--greedy", "--print-ids"])
        try:
            gen = [int(t) for t in ids.out.split()]
        except ValueError:
            gen = None
        if gen is None or ids.rc != 0:
            check(False, f"{kind} generate --print-ids {ids.why()} {ids.out[:80]!r}")
            continue
        tokens = SPECIALS + (WORDS if kind == "word" else CHARS)
        pieces = [tokens[i] for i in gen if 4 <= i < len(tokens)]
        text = r.out
        for s in SPECIALS:
            text = text.replace(s, "")
        if kind == "word":
            found = " ".join(pieces) in " ".join(text.split())
        else:
            found = "".join(pieces) in text
        check(found and len(gen) <= 20, f"{kind} -p text holds the {len(gen)} greedy ids of "
                                        f"generate --print-ids (specials aside)")

    sample = [args.run, "-m", p["word.itl"], "-p", "once upon", "-n", "20", "--temp", "1.0"]
    pairs = [[run(sample + ["--seed", str(s)]) for _ in range(2)] for s in range(1, 7)]
    same = all(a.rc == 0 and a.out == b.out for a, b in pairs)
    longest = max((a.out.strip() for a, _ in pairs), key=len)
    check(same and len(longest) > len("once upon"),
          f"--seed 1..6 --temp 1.0, each twice: same seed, same text (e.g. {longest[:50]!r})")
    outs = {a.out for a, _ in pairs}
    check(len(outs) >= 2, f"--seed 1..6 --temp 1.0: {len(outs)} distinct texts (>= 2)")

    text = word_text(49, 5, seed=3)  # 49 = 3 * 16 + 1: a last window of one unscored token
    path = write(os.path.join(w, "words.txt"), text)
    ids = encode_words(text)
    for ctx in (16, 7, None):
        check_ppl(f"word ppl --ctx {ctx or 'default'}", args, p["word.itl"], path, ids, ctx)
    ctext = "the cat sat.\nThe Dog ran, to the park!\n" * 3
    cpath = write(os.path.join(w, "chars.txt"), ctext)
    check_ppl("char ppl --ctx 16", args, p["char.itl"], cpath, encode_chars(ctext), 16)

    known = write(os.path.join(w, "unk.txt"), "the cat zebra sat, on the Mat quux\n")
    r = run([args.run, "ppl", "-m", p["word.itl"], "--file", known, "--json"])
    try:
        got = json.loads(r.out)
        check(got["tokens"] == 8 and abs(got["unk_fraction"] - 3 / 8) <= 1e-6,
              f"unk_fraction of 'the cat zebra sat, on the Mat quux': {got['unk_fraction']} (want 0.375, "
              f"8 tokens)")
    except (ValueError, KeyError):
        check(False, f"unk_fraction {r.why()} {r.out[:100]!r}")
    return p


def bad_convert(args, w, p):
    conv = args.convert
    out = os.path.join(w, "bad.itl")
    good = read(p["word.pt"])

    # truncated checkpoints
    for n in (0, 1, 30, 100, 1000, len(good) // 2, len(good) - 100, len(good) - 22, len(good) - 1):
        expect_error(f".pt truncated to {n} bytes",
                     [conv, write(os.path.join(w, f"trunc{n}.pt"), good[:n]), "-o", out])

    # corrupted zip directory (EOCD at the end: no comment in torch's files)
    eocd = len(good) - 22
    assert good[eocd:eocd + 4] == b"PK\x05\x06"
    cd = struct.unpack_from("<I", good, eocd + 16)[0]
    corruptions = {
        "central directory signature": (cd, b"\x00"),
        "first entry's local header offset": (cd + 42, struct.pack("<I", 0x7FFFFFF0)),
        "first entry's sizes": (cd + 20, struct.pack("<II", 0x7FFFFFF0, 0x7FFFFFF0)),
        "first entry's name length": (cd + 28, struct.pack("<H", 0xFFFF)),
        "central directory offset": (eocd + 16, struct.pack("<I", cd + 1)),
        "entry count": (eocd + 8, struct.pack("<HH", 0xFFFF, 0xFFFF)),
    }
    for label, (at, data) in corruptions.items():
        bad = bytearray(good)
        bad[at:at + len(data)] = data
        expect_error(f".pt zip directory: {label}",
                     [conv, write(os.path.join(w, "zipdir.pt"), bytes(bad)), "-o", out])

    # not a torch zip at all
    legacy = os.path.join(w, "legacy.pt")
    torch.save({"model_state_dict": p["word_state"]}, legacy, _use_new_zipfile_serialization=False)
    not_zip = {"text": write(os.path.join(w, "text.pt"), "hello, not a checkpoint\n"),
               "random bytes": write(os.path.join(w, "random.pt"), random.Random(1).randbytes(4096)),
               "legacy (non-zip) torch.save": legacy,
               "a .itl file": p["word.itl"], "a directory": w}
    for label, path in not_zip.items():
        expect_error(f".pt is {label}", [conv, path, "-o", out])

    # hostile pickles: no global outside the allowlist may be called (the marker proves it)
    marker = os.path.join(w, "pwned")
    cmd = f"touch {marker}"
    hostile = {
        "GLOBAL os.system + REDUCE": b"\x80\x02cos\nsystem\n" + unicode_op(cmd) + b"\x85R.",
        "GLOBAL builtins.eval + REDUCE": (b"\x80\x02cbuiltins\neval\n"
                                          + unicode_op(f"__import__('os').system('{cmd}')") + b"\x85R."),
        "STACK_GLOBAL os.system (protocol 4)": (b"\x80\x04\x8c\x02os\x8c\x06system\x93"
                                                + unicode_op(cmd) + b"\x85R."),
    }
    for label, data in hostile.items():
        path = os.path.join(w, "hostile.pt")
        write_zip(path, data, {})
        expect_error(f"pickle {label}", [conv, path, "-o", out])
    path = write_pt(os.path.join(w, "hostile2.pt"), p["word_state"],
                    dict(p["word_cfg"], note=Call(os.system, cmd)))
    expect_error("pickle posix.system call inside a valid checkpoint", [conv, path, "-o", out])
    path = write_pt(os.path.join(w, "hostile3.pt"), p["word_state"],
                    dict(p["word_cfg"], note=Call(collections.Counter, "abc")))
    expect_error("pickle unlisted global called with arguments", [conv, path, "-o", out])
    check(not os.path.exists(marker), "hostile pickles executed nothing (no marker file)")

    # positive control for the hand-written layout: it must convert like torch.save's file
    ctrl = write_pt(os.path.join(w, "control.pt"), p["word_state"], p["word_cfg"])
    loaded = torch.load(ctrl)["model_state_dict"]
    same = all(torch.equal(loaded[k], v) for k, v in p["word_state"].items())
    r = run([conv, ctrl, "-o", os.path.join(w, "control.itl")])
    check(same and r.rc == 0, "hand-written .pt (torch.load reads it back) converts"
          + ("" if r.rc == 0 else " " + r.why()))

    # state-dict content
    def variant(label, state):
        path = os.path.join(w, "variant.pt")
        save_pt(path, state, p["word_cfg"])
        expect_error(label, [conv, path, "-o", out])
    base = p["word_state"]
    for missing in ("layers.0.ssm.ssm.D", "norm.bias", "layers.1.moe.layer.experts.2.w1.weight"):
        variant(f"checkpoint missing {missing}", {k: v for k, v in base.items() if k != missing})
    variant("checkpoint with extra tensor layers.0.ssm.bogus",
            dict(base, **{"layers.0.ssm.bogus": torch.zeros(4)}))
    variant("checkpoint with B of the wrong shape",
            dict(base, **{"layers.0.ssm.ssm.B": base["layers.0.ssm.ssm.B"][:, :-1].clone()}))

    # absurd shapes / storages, crafted into the pickle
    def tampered(label, target, fn):
        def tamper(name, t, storages):
            if name == target:
                fn(t, storages)
        path = write_pt(os.path.join(w, "absurd.pt"), base, p["word_cfg"], tamper)
        expect_error(label, [conv, path, "-o", out])

    def set_attr(**kw):
        return lambda t, s: t.__dict__.update(kw)

    def new_storage(numel):
        def fn(t, s):
            t.storage = PtStorage(t.storage.key, numel)
        return fn

    def shorten(t, s):
        s[t.storage.key] = s[t.storage.key][:-4]

    def missing_entry(t, s):
        t.storage = PtStorage("999", t.storage.numel)

    tampered("tensor shape [1<<40]", "norm.weight", set_attr(size=[1 << 40], stride=[1]))
    tampered("tensor shape [1<<21]*3 (element count overflows int64)", "norm.weight",
             set_attr(size=[1 << 21] * 3, stride=[1 << 42, 1 << 21, 1]))
    tampered("tensor shape with a negative dimension", "embedding.weight", set_attr(size=[-1, 32], stride=[32, 1]))
    tampered("tensor stride 1<<40", "norm.weight", set_attr(stride=[1 << 40]))
    tampered("tensor storage offset past the storage", "norm.weight", set_attr(offset=1 << 20))
    tampered("storage numel 1<<40", "norm.weight", new_storage(1 << 40))
    tampered("storage entry shorter than its numel", "norm.weight", shorten)
    tampered("storage key with no data/ entry", "norm.weight", missing_entry)

    # tokenizer and config JSON
    tok_cases = {
        "truncated tokenizer JSON": json.dumps(word_tokenizer())[:50],
        "tokenizer that is not JSON": "vocab: the cat\n",
        "empty tokenizer file": "",
        "tokenizer JSON of unknown layout": json.dumps({"foo": 1, "bar": [1, 2]}),
        "tokenizer JSON that is a list": json.dumps(["the", "cat"]),
        "tokenizer with a string id": json.dumps(dict(word_tokenizer(), token_to_id={"the": "x"})),
    }
    wt = word_tokenizer()
    dup = dict(wt, id_to_token=dict(wt["id_to_token"], **{"5": wt["id_to_token"]["4"]}))
    dup["token_to_id"] = {t: int(i) for i, t in dup["id_to_token"].items()}
    tok_cases["tokenizer with one token at two ids"] = json.dumps(dup)
    tok_cases["tokenizer whose token_to_id lacks a token"] = json.dumps(
        dict(wt, token_to_id={t: i for t, i in wt["token_to_id"].items() if i != 7}))
    empty = dict(wt, id_to_token=dict(wt["id_to_token"], **{"5": ""}))
    del empty["token_to_id"]
    tok_cases["tokenizer with an empty token"] = json.dumps(empty)
    for label, text in tok_cases.items():
        path = write(os.path.join(w, "tok.json"), text)
        expect_error(label, [conv, p["word.pt"], "-o", out, "--tokenizer", path])
    path = write(os.path.join(w, "cfg.json"), '{"vocab_size": 40, "hidden_size": ')
    expect_error("malformed --config JSON", [conv, p["word.pt"], "-o", out, "--config", path])
    for label, text in (("top_k_experts true", '{"top_k_experts": true}'),
                        ("vocab_size 2^63", '{"vocab_size": 9223372036854775808}'),
                        ("num_layers 2.0", '{"num_layers": 2.0}')):
        path = write(os.path.join(w, "cfg.json"), text)
        expect_error(f"--config with {label}", [conv, p["word.pt"], "-o", out, "--config", path])

    # missing files and bad options
    nowhere = os.path.join(w, "does-not-exist")
    expect_error("nonexistent checkpoint", [conv, nowhere + ".pt", "-o", out])
    expect_error("nonexistent tokenizer", [conv, p["word.pt"], "-o", out, "--tokenizer", nowhere + ".json"])
    expect_error("nonexistent config", [conv, p["word.pt"], "-o", out, "--config", nowhere + ".json"])
    expect_error("output in a nonexistent directory", [conv, p["word.pt"], "-o", os.path.join(nowhere, "x.itl")])
    expect_error("itera-convert without arguments (usage)", [conv], codes=(2,))
    expect_error("itera-convert --dtype fp8 (usage)", [conv, p["word.pt"], "-o", out, "--dtype", "fp8"], codes=(2,))
    expect_error("itera-convert --bogus (usage)", [conv, p["word.pt"], "-o", out, "--bogus"], codes=(2,))
    expect_error("itera-convert --prune nan (usage)", [conv, p["word.pt"], "-o", out, "--prune", "nan"], codes=(2,))
    for option in (["--calib-tokens", "5"], ["--score-tokens", "5"], ["--prune-uniform"],
                   ["--prune-importance", "magnitude"]):
        expect_error(f"itera-convert {option[0]} alone (usage)", [conv, p["word.pt"], "-o", out] + option, codes=(2,))
    expect_error("itera-convert --prune-scope moe,ffn alone (usage)",
                 [conv, p["word.pt"], "-o", out, "--prune-scope", "moe,ffn"], codes=(2,))
    for option in ("--tokenizer", "--config", "--calib"):
        expect_error(f"itera-convert {option} '' (usage)", [conv, p["word.pt"], "-o", out, option, ""], codes=(2,))
    expect_error("a newline in the checkpoint path (one error line)", [conv, p["word.pt"] + "\nx", "-o", out])
    kept = write(os.path.join(w, "kept.itl"), "an earlier file")
    expect_error("--report in a missing directory", [conv, p["word.pt"], "-o", kept, "--report",
                                                     os.path.join(w, "nowhere", "r.json")])
    check(read(kept) == b"an earlier file", "a run whose report cannot be written left the -o file as it was")
    expect_error("itera-convert --prune 0.5 --prune-scope vocab (nothing the ratio counts)",
                 [conv, p["word.pt"], "-o", out, "--tokenizer", p["word.json"], "--prune", "0.5", "--prune-scope", "vocab"])

    # what a run reads or cannot replace is never written over
    fifo = os.path.join(w, "fifo")
    os.mkfifo(fifo)  # opening one for reading would wait for a writer: refused, not a hang
    expect_error("checkpoint is a FIFO", [conv, fifo, "-o", out])
    expect_error("--tokenizer is a FIFO", [conv, p["word.pt"], "-o", out, "--tokenizer", fifo])
    expect_error("--config is a FIFO", [conv, p["word.pt"], "-o", out, "--config", fifo])
    expect_error("-o is a directory", [conv, p["word.pt"], "-o", w])
    same = write(os.path.join(w, "same.pt"), read(p["word.pt"]))
    expect_error("-o is the checkpoint", [conv, same, "-o", same])
    check(read(same) == read(p["word.pt"]), "-o naming the checkpoint left it unchanged")
    expect_error("--report is the -o file", [conv, p["word.pt"], "-o", out, "--report", out])
    expect_error("--report is the checkpoint", [conv, same, "-o", out, "--report", same])
    expect_error("--report '' (usage)", [conv, p["word.pt"], "-o", out, "--report", ""], codes=(2,))

    # weights no storage type can hold
    for label, value in (("NaN", float("nan")), ("infinite", float("inf"))):
        state = dict(base, **{"embedding.weight": base["embedding.weight"].clone()})
        state["embedding.weight"][3, 5] = value
        path = os.path.join(w, "nonfinite.pt")
        save_pt(path, state, p["word_cfg"])
        expect_error(f"checkpoint with weight {label}", [conv, path, "-o", out], mention=(label,))
    state = dict(base, **{"embedding.weight": base["embedding.weight"].clone()})
    state["embedding.weight"][3, 5] = 1e5
    path = os.path.join(w, "big.pt")
    save_pt(path, state, p["word_cfg"])
    expect_error("weight 1e5 stored fp16", [conv, path, "-o", out, "--quant", "fp16"], mention=("fp16",))
    r = run([conv, path, "-o", out])
    check(r.rc == 0, "the same weight stored fp32 converts" + ("" if r.rc == 0 else " " + r.why()))


def find_tensor(blob, state, name):
    """Offset of a tensor's FP32 bytes inside a .itl file (stored in place), or -1."""
    return blob.find(state[name][3].numpy().tobytes())


def bad_run(args, w, p):
    rn = args.run
    good = read(p["word.itl"])
    for n in (0, 1, 8, 63, 64, 65, 200, len(good) // 2, len(good) - 1):
        path = write(os.path.join(w, f"trunc{n}.itl"), good[:n])
        expect_error(f".itl truncated to {n} bytes", [rn, "logits", "-m", path, "--ids", "4,5"])
    at = find_tensor(good, p["word_state"], "position_embedding.weight")
    if check(at > 0, f".itl holds position_embedding row 3 in place (at byte {at})"):
        bad = bytearray(good)
        bad[at + 5] ^= 0x10
        path = write(os.path.join(w, "flipped.itl"), bytes(bad))
        expect_error(".itl with a flipped data byte (checksum)", [rn, "logits", "-m", path, "--ids", "4,5"])
    bad = bytearray(good)
    bad[0] ^= 0xFF
    path = write(os.path.join(w, "magic.itl"), bytes(bad))
    expect_error(".itl with wrong magic", [rn, "logits", "-m", path, "--ids", "4,5"])
    expect_error(".pt given to itera-run", [rn, "logits", "-m", p["word.pt"], "--ids", "4,5"])
    expect_error("nonexistent model", [rn, "-m", os.path.join(w, "nope.itl"), "-p", "the cat"])
    expect_error("model path is a directory", [rn, "-m", w, "-p", "the cat"])
    expect_error("ppl of a nonexistent file",
                 [rn, "ppl", "-m", p["word.itl"], "--file", os.path.join(w, "nope.txt")])
    fifo = os.path.join(w, "fifo-run")
    os.mkfifo(fifo)
    expect_error("model is a FIFO", [rn, "-m", fifo, "info"])
    expect_error("ppl --file is a FIFO", [rn, "ppl", "-m", p["word.itl"], "--file", fifo])
    expect_error("ppl --kld-ref is a FIFO", [rn, "ppl", "-m", p["word.itl"], "--file", os.path.join(w, "words.txt"),
                                             "--kld-ref", fifo])
    expect_error("-m '' (usage)", [rn, "-m", "", "-p", "the cat"], codes=(2,))
    expect_error("--ids '' (usage)", [rn, "-m", p["word.itl"], "--ids", "", "-p", "the cat"], codes=(2,))
    expect_error("a newline in --ids (one error line)", [rn, "-m", p["word.itl"], "--ids", "4\n"], codes=(1, 2))
    expect_error("a newline in the model path (one error line)", [rn, "-m", p["word.itl"] + "\n", "info"])
    expect_error("ppl --file '' (usage)", [rn, "ppl", "-m", p["word.itl"], "--file", ""], codes=(2,))
    with open("/dev/full", "wb") as full:  # output that cannot be written is an error, not exit 0
        r = subprocess.run([rn, "info", "-m", p["word.itl"]], stdout=full, stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    lines = r.stderr.decode(errors="replace").splitlines()
    check(r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"),
          f"info > /dev/full: exit {r.returncode}, {lines[-1] if lines else 'no message'!r}")

    # finite weights whose products overflow: the logits are not all finite, an error in every command
    state = dict(p["word_state"])
    state["embedding.weight"] = state["embedding.weight"].clone()
    state["embedding.weight"][5] = torch.tensor([3e38, -3e38] * (state["embedding.weight"].shape[1] // 2))
    huge_pt, huge = os.path.join(w, "huge.pt"), os.path.join(w, "huge.itl")
    save_pt(huge_pt, state, p["word_cfg"])
    r = run([args.convert, huge_pt, "-o", huge, "--tokenizer", p["word.json"]])
    if check(r.rc == 0, "a model with weights of 3e38 converts (they are finite)" + ("" if r.rc == 0 else " " + r.why())):
        expect_error("logits that overflow: logits", [rn, "logits", "-m", huge, "--ids", "4,5"], mention=("finite",))
        expect_error("logits that overflow: ppl", [rn, "ppl", "-m", huge, "--file", os.path.join(w, "words.txt")],
                     mention=("finite",))
        expect_error("logits that overflow: ppl --kld-ref", [rn, "ppl", "-m", p["word.itl"], "--file",
                                                             os.path.join(w, "words.txt"), "--kld-ref", huge],
                     mention=("finite",))
        expect_error("logits that overflow: generate", [rn, "-m", huge, "--ids", "4,5", "-n", "3"])

    word, char, bare = p["word.itl"], p["char.itl"], p["bare.itl"]
    vocab = len(SPECIALS) + len(WORDS)
    expect_error("empty prompt -p ''", [rn, "-m", word, "-p", ""])
    expect_error("whitespace-only prompt", [rn, "-m", word, "-p", "  \n "])
    expect_error("prompt of unknown words", [rn, "-m", word, "-p", "zzqx blorf"], mention=("zzqx", "blorf"))
    expect_error("char prompt of unknown characters", [rn, "-m", char, "-p", "ZQ"], mention=("Z", "Q"))
    expect_error("-p with a model without tokenizer", [rn, "-m", bare, "-p", "the cat"])
    expect_error("ppl with a model without tokenizer",
                 [rn, "ppl", "-m", bare, "--file", os.path.join(w, "words.txt")])
    expect_error(f"generate --ids with id {vocab} >= vocab",
                 [rn, "generate", "-m", word, "--ids", f"4,{vocab}", "-n", "3", "--greedy", "--print-ids"])
    expect_error(f"logits --ids with id {vocab} >= vocab", [rn, "logits", "-m", word, "--ids", f"{vocab}"])
    expect_error("logits --ids with id 2^31", [rn, "logits", "-m", word, "--ids", "4,2147483648"], codes=(1, 2))
    expect_error("logits --ids '4,,x'", [rn, "logits", "-m", word, "--ids", "4,,x"], codes=(1, 2))
    expect_error("logits --ids '4,5,' (trailing comma)", [rn, "logits", "-m", word, "--ids", "4,5,"], codes=(1, 2))
    expect_error("logits --ids with a negative id", [rn, "logits", "-m", word, "--ids", "4,-3"], codes=(1, 2))
    expect_error("logits of more ids than max_seq_length",
                 [rn, "logits", "-m", word, "--ids", ",".join(["4"] * 17)], codes=(1, 2))
    for ctx in ("0", "17", "-5"):
        expect_error(f"ppl --ctx {ctx}", [rn, "ppl", "-m", word, "--file", os.path.join(w, "words.txt"),
                                          "--ctx", ctx], codes=(1, 2))
    expect_error("-n -1 (usage)", [rn, "-m", word, "-p", "the cat", "-n", "-1"], codes=(2,))
    expect_error("--seed -1 (usage)", [rn, "-m", word, "-p", "the cat", "--seed", "-1"], codes=(2,))
    expect_error("--seed 2^64 (usage)", [rn, "-m", word, "-p", "the cat", "--seed", "18446744073709551616"], codes=(2,))
    expect_error("--temp nan (usage)", [rn, "-m", word, "-p", "the cat", "--temp", "nan"], codes=(2,))
    expect_error("--top-p nan (usage)", [rn, "-m", word, "-p", "the cat", "--top-p", "nan"], codes=(2,))
    expect_error("--bogus option (usage)", [rn, "-m", word, "-p", "the cat", "--bogus"], codes=(2,))
    expect_error("unknown subcommand (usage)", [rn, "bogus", "-m", word], codes=(2,))


def device_cuda(args, p):
    """--device cuda: without a usable GPU, one `error: no CUDA device: ...` line and exit 1 for
    generate, logits and ppl. Then the same commands on the GPU, or without one on the CUDA kernels'
    code run by host threads (ITERA_CUDA_EMULATE=1): the CPU's greedy ids (past max_seq_length),
    logits within 1e-4 (relative) and the CPU's perplexity."""
    word, text = p["word.itl"], write(os.path.join(os.path.dirname(p["word.itl"]), "cuda.txt"), "the cat sat on the mat " * 8)
    gen = ["generate", "-m", word, "--ids", "4,5,6", "-n", "30", "--temp", "1.0", "--seed", "7", "--print-ids"]
    builtin = ["generate", "-n", "20", "--greedy"]
    logits = ["logits", "-m", word, "--ids", "4,5,6,7,8,9,10"]
    ppl = ["ppl", "-m", word, "--file", text, "--json"]
    env, where = None, "GPU"
    probe = run([args.run] + gen + ["--device", "cuda"])
    if probe.rc != 0 and "no CUDA device" in probe.err:
        for cmd in (gen, logits, ppl):
            expect_error(f"--device cuda without a GPU ({cmd[0]})", [args.run] + cmd + ["--device", "cuda"],
                         mention=["no CUDA device: "])
        env, where = {"ITERA_CUDA_EMULATE": "1"}, "emulated on the CPU"
        probe = run([args.run] + gen + ["--device", "cuda"], env=env)
    bad_env = run([args.run] + gen + ["--device", "cuda"], env={"ITERA_CUDA_EMULATE": "yes"})
    check(bad_env.rc == 1 and len(bad_env.lines) == 1 and bad_env.lines[0].startswith("error:") and
          ("ITERA_CUDA_EMULATE" in bad_env.err or "no CUDA device" in bad_env.err),
          f"ITERA_CUDA_EMULATE=yes: exit {bad_env.rc}, {bad_env.lines[-1] if bad_env.lines else 'no message'!r}")
    cpu = run([args.run] + gen)
    check(probe.rc == 0 and probe.out == cpu.out, f"--device cuda ({where}): 30 sampled ids (--seed 7, past "
          f"max_seq_length 16) equal the CPU's ({probe.out.strip()[:60]!r} vs {cpu.out.strip()[:60]!r})")
    a, b = run([args.run] + builtin + ["--device", "cuda"], env=env), run([args.run] + builtin)
    check(a.rc == 0 and a.out == b.out, f"--device cuda ({where}): built-in model's greedy text equals the CPU's "
          f"({a.out.strip()[-50:]!r})")
    a, b = run([args.run] + logits + ["--device", "cuda"], env=env), run([args.run] + logits)
    if check(a.rc == 0 and b.rc == 0, f"--device cuda ({where}): logits run" + ("" if a.rc == 0 else " " + a.why())):
        ga, gb = json.loads(a.out)["logits"], json.loads(b.out)["logits"]
        diff = max(abs(x - y) for ra, rb in zip(ga, gb) for x, y in zip(ra, rb))
        top = max(abs(y) for rb in gb for y in rb)
        check(len(ga) == len(gb) and diff <= 1e-4 * (1 + top),
              f"--device cuda ({where}): logits within 1e-4 of the CPU ({diff:.3g})")
    a, b = run([args.run] + ppl + ["--device", "cuda"], env=env), run([args.run] + ppl)
    if check(a.rc == 0 and b.rc == 0, f"--device cuda ({where}): ppl runs" + ("" if a.rc == 0 else " " + a.why())):
        pa, pb = json.loads(a.out)["ppl"], json.loads(b.out)["ppl"]
        check(abs(pa - pb) <= 1e-4 * pb, f"--device cuda ({where}): ppl {pa:.6g} vs CPU {pb:.6g}")
    # q3 and q2 models: the CPU's integer block dots, so the logits differ by FP32 summation order and
    # the rare activation rounded to the other q8 level (tests/test_cuda_device.cpp's bound, 5e-2).
    for q in ("q3", "q2"):
        qitl = os.path.join(os.path.dirname(word), f"word_{q}.itl")
        if not expect_ok(f"convert --quant {q}", [args.convert, p["word.pt"], "-o", qitl, "--tokenizer",
                                                  p["word.json"], "--quant", q]).rc == 0:
            continue
        qlogits = ["logits", "-m", qitl, "--ids", "4,5,6,7,8,9,10"]
        a, b = run([args.run] + qlogits + ["--device", "cuda"], env=env), run([args.run] + qlogits)
        if check(a.rc == 0 and b.rc == 0,
                 f"--device cuda ({where}): {q} logits run" + ("" if a.rc == 0 else " " + a.why())):
            ga, gb = json.loads(a.out)["logits"], json.loads(b.out)["logits"]
            diff = max(abs(x - y) for ra, rb in zip(ga, gb) for x, y in zip(ra, rb))
            top = max(abs(y) for rb in gb for y in rb)
            check(len(ga) == len(gb) and diff <= 5e-2 * (1 + top),
                  f"--device cuda ({where}): {q} logits within 5e-2 of the CPU ({diff:.3g}, largest logit {top:.3g})")
        qgen = ["generate", "-m", qitl, "--ids", "4,5,6", "-n", "20", "--greedy", "--print-ids"]
        a, b = run([args.run] + qgen + ["--device", "cuda"], env=env), run([args.run] + qgen)
        ia, ib = a.out.split(), b.out.split()
        check(a.rc == 0 and len(ia) == len(ib) > 0,
              f"--device cuda ({where}): {q} greedy generation runs ({sum(x == y for x, y in zip(ia, ib))} of "
              f"{len(ib)} ids as the CPU's)" + ("" if a.rc == 0 else " " + a.why()))


def main():
    args = tool_args(__doc__.split("\n")[0])
    w = tempfile.mkdtemp(prefix="cli-", dir=args.workdir)
    torch.set_num_threads(1)
    p = end_to_end(args, w)
    if p is None:
        check(False, "conversion failed: bad-input checks not run")
    else:
        bad_convert(args, w, p)
        bad_run(args, w, p)
        device_cuda(args, p)
    finish(w)


if __name__ == "__main__":
    main()

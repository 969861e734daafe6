#!/usr/bin/python3
"""End-to-end tests of quantization, calibration and vocabulary trimming (itera-convert --quant).

usage: /usr/bin/python3 tests/cli/test_quant.py --convert build/itera-convert \
           --run build/itera-run --workdir DIR

Trains a small Itera-Lite model with the PyTorch reference (tests/reference/itera_lite.py):
hidden 64, 2 layers (dense FFN, then MoE), untied head, vocabulary 300 of which a word tokenizer
produces only the first 120 ids, on text from a fixed random Markov chain so its next-token
distributions are far from flat. Then checks:
  1. every --quant converts; `info --json` dtypes follow the default policy, each tensor's bytes
     are rows * ceil(cols / B) * block bytes, bits_per_weight adds up, files shrink with the dtype;
  2. logits of each dtype against the FP32 file, greedy ids of fp16 against FP32;
  3. `ppl --kld-ref` against KL(F || Q) and top-1 agreement computed here from both files'
     `itera-run logits` on the same windows;
  4. vocabulary trimming: kept columns unchanged, vocab_ids, --no-trim-vocab, --ids of a trimmed id;
  5. calibration (--calib, --report): calibrated errors, and a lower held-out KL for calibrated q4, q3, q2;
  6. --keep overrides and the errors of bad --keep / --calib use;
  7. --layout: rows16 on the multiplied fp32 / fp16 / q4 / q8 matrices by default, row_major on request, same logits.
Prints one line per check and `N passed, N failed`; exits 1 on any failure.

Windows, as `ppl` scores text (upstream): the text's ids are cut into non-overlapping windows
ids[n*w : n*w+n], each run from zero state; every position t but the text's last is scored
against ids[t+1] (a window's last position against the next window's first token).
"""
import json
import math
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from markov_language import pseudo_word_language, train as train_reference  # noqa: E402
from testlib import check, finish, run, tool_args, why  # noqa: E402

VOCAB = 300           # the checkpoint's rows; the tokenizer produces ids 0..N_TOKENS-1 only
N_TOKENS = 120
CTX = 32              # max_seq_length
CFG = {"vocab_size": VOCAB, "hidden_size": 64, "num_layers": 2, "ssm_state_size": 8, "ssm_conv_kernel": 4,
       "ssm_expand_factor": 2, "num_experts": 4, "expert_size": 40, "top_k_experts": 2, "moe_layers": [1],
       "max_seq_length": CTX}  # expert width 40: rows of 40 columns end in a partial block
TRAIN_STEPS, BATCH, LR = 100, 16, 5e-3
QUANTS = ("fp32", "fp16", "q8", "q4", "nf4", "q3", "q2")
BLOCKS = {"q8": (32, 34), "q4": (32, 18), "nf4": (64, 34), "q3": (32, 14), "q2": (64, 18)}  # elements, bytes per block
LOW_BITS = ("q4", "nf4", "q3", "q2")  # bases under which the policy keeps B at q8
ELEMENT_BYTES = {"fp32": 4, "fp16": 2}
# max |logit - fp32 logit| over the held-out windows, relative to the fp32 logits' range (positions
# whose expert routing is a near tie left out, see logits_vs_fp32)
LOGIT_TOL = {"fp16": 1e-2, "q8": 1e-2, "q4": 0.15, "nf4": 0.15, "q3": 0.25, "q2": 0.4}
ROUTING_MARGIN = 0.02  # router logit gap below which a position's expert choice is a near tie


# ---- the model, its tokenizer and texts ---------------------------------------------------------

LANG = pseudo_word_language(N_TOKENS)


def train(w):
    model, losses = train_reference(CFG, False, LANG.ids(LANG.text(20000, seed=1)), TRAIN_STEPS, BATCH, LR)
    check(losses[-1] < 2.0 and losses[-1] < losses[0] / 2,
          f"reference model trained {TRAIN_STEPS} steps: loss {losses[0]:.2f} -> {losses[-1]:.2f} (< 2)")
    state = model.state_dict()
    p = {"ck": os.path.join(w, "ck.pt"), "tied_ck": os.path.join(w, "tied.pt"),
         "tok": os.path.join(w, "tok.json"), "calib": os.path.join(w, "calib.txt"),
         "held": os.path.join(w, "held.txt"), "state": state, "model": model.eval()}
    torch.save({"model_state_dict": state, "config": CFG}, p["ck"])
    tied = dict(state)
    tied["lm_head.weight"] = tied["embedding.weight"]  # one storage: a tied checkpoint
    torch.save({"model_state_dict": tied, "config": CFG}, p["tied_ck"])
    LANG.write_tokenizer(p["tok"])
    with open(p["calib"], "w") as f:
        f.write(" ".join(LANG.text(3000, seed=2)) + "\n")
    held = LANG.text(24 * CTX + 22, seed=3)  # a last, partial window
    with open(p["held"], "w") as f:
        f.write(" ".join(held) + "\n")
    p["held_ids"] = LANG.ids(held)
    return p


# ---- the tools ----------------------------------------------------------------------------------

class Tools:
    def __init__(self, args, w, p):
        self.args, self.w, self.p = args, w, p
        self.cache = {}

    def path(self, name):
        return os.path.join(self.w, name)

    def convert(self, name, extra, ck=None, label=None):
        """Converts into w/name.itl; the path, or None (a failed check) when it fails."""
        out = self.path(name + ".itl")
        rc, _, err = run([self.args.convert, ck or self.p["ck"], "-o", out] + extra)
        ok = rc == 0 and os.path.isfile(out)
        if not ok or label:
            check(ok, f"{label or name}: convert {' '.join(extra)}" + ("" if ok else " " + why(rc, err)))
        return out if ok else None

    def info(self, itl):
        rc, out, err = run([self.args.run, "info", "-m", itl, "--json"])
        if rc != 0:
            raise RuntimeError(f"info {itl} {why(rc, err)}")
        return json.loads(out)

    def logits(self, itl, ids):
        """(rows as float64 [L, V], the vocab_ids list or None)."""
        key = (itl, tuple(ids))
        if key not in self.cache:
            rc, out, err = run([self.args.run, "logits", "-m", itl, "--ids", ",".join(map(str, ids))])
            if rc != 0:
                raise RuntimeError(f"logits {os.path.basename(itl)} {why(rc, err)}")
            parsed = json.loads(out)
            self.cache[key] = (np.array(parsed["logits"], dtype=np.float64), parsed.get("vocab_ids"))
        return self.cache[key]

    def windows(self, itl, ids, n=CTX):
        """[(start, logits rows, vocab_ids)] for ppl's windows of n tokens."""
        return [(s,) + self.logits(itl, ids[s:s + n]) for s in range(0, len(ids) - 1, n)]

    def greedy(self, itl, prompt, n):
        rc, out, err = run([self.args.run, "generate", "-m", itl, "--ids", ",".join(map(str, prompt)),
                            "-n", str(n), "--greedy", "--print-ids"])
        if rc != 0:
            raise RuntimeError(f"generate {os.path.basename(itl)} {why(rc, err)}")
        return [int(t) for t in out.split()]

    def ppl(self, itl, text, ref=None, ctx=None):
        cmd = [self.args.run, "ppl", "-m", itl, "--file", text, "--json"]
        cmd += ["--kld-ref", ref] if ref else []
        cmd += ["--ctx", str(ctx)] if ctx else []
        rc, out, err = run(cmd)
        if rc != 0:
            raise RuntimeError(f"ppl {os.path.basename(itl)} {why(rc, err)}")
        return json.loads(out)

    def expect_error(self, label, cmd, codes=(1,)):
        rc, _, err = run(cmd)
        lines = err.splitlines()
        problems = []
        if rc not in codes:
            problems.append(f"exit {rc}, want {'/'.join(map(str, codes))}")
        if len(lines) != 1 or not lines[0].startswith("error:"):
            problems.append(f"{len(lines)} stderr lines: {' | '.join(lines[-4:])[:300]!r}")
        shown = lines[0] if not problems else "; ".join(problems)
        return check(not problems, f"{label}: {shown[:200]}")


def read_json(path):
    with open(path) as f:
        return json.load(f)


# ---- expectations -------------------------------------------------------------------------------

def elementwise(name, rank):
    return rank < 2 or name.endswith(("conv1d.weight", "ssm.C"))


def policy_dtype(name, rank, base):
    """The documented default: rank-1 fp32; conv1d.weight, C fp16 (unless fp32); B q8 under a
    base of 4 bits or fewer; the rest `base`."""
    if base == "fp32" or rank < 2:
        return "fp32"
    if elementwise(name, rank):
        return "fp16"
    if name.endswith("ssm.B") and base in LOW_BITS:
        return "q8"
    return base


def expected_bytes(dtype, shape):
    rows, cols = math.prod(shape[:-1]), shape[-1]
    if dtype in BLOCKS:
        block, block_bytes = BLOCKS[dtype]
        return rows * -(-cols // block) * block_bytes
    return rows * cols * ELEMENT_BYTES[dtype]


def expected_shapes(p, vocab_rows, tied=False):
    shapes = {k: list(v.shape) for k, v in p["state"].items() if not k.endswith("expert_counts")}
    for k in ("embedding.weight", "lm_head.weight"):
        shapes[k][0] = vocab_rows
    if tied:
        del shapes["lm_head.weight"]
    return shapes


def check_layout(label, info, shapes, want_dtype, itl):
    """Names, shapes, dtypes (want_dtype(name, rank)), bytes and the totals of `info --json`."""
    tensors = info["tensors"]
    got = {t["name"]: t for t in tensors}
    bad = []
    if sorted(got) != sorted(shapes):
        bad.append(f"names differ: missing {sorted(set(shapes) - set(got))[:3]}, "
                   f"extra {sorted(set(got) - set(shapes))[:3]}")
    for name, shape in shapes.items():
        t = got.get(name)
        if t is None:
            continue
        dtype = want_dtype(name, len(shape))
        if t["shape"] != shape or t["dtype"] != dtype:
            bad.append(f"{name} {t['dtype']} {t['shape']} (want {dtype} {shape})")
        elif t["bytes"] != expected_bytes(dtype, shape):
            bad.append(f"{name} {t['bytes']} bytes (want {expected_bytes(dtype, shape)})")
    dtypes = sorted({t["dtype"] for t in tensors})
    check(not bad, f"{label}: {len(tensors)} tensors, dtypes {'/'.join(dtypes)} as the policy says, bytes = "
                   f"rows*ceil(cols/B)*block bytes" + ("" if not bad else f": {'; '.join(bad[:4])}"))
    params = sum(math.prod(t["shape"]) for t in tensors)
    total = sum(t["bytes"] for t in tensors)
    bpw = 8.0 * total / params
    check(info["parameters"] == params and info["tensor_bytes"] == total and abs(info["bits_per_weight"] - bpw) <= 1e-4
          and info["file_bytes"] == os.path.getsize(itl) and total < info["file_bytes"],
          f"{label}: bits_per_weight {info['bits_per_weight']} = 8*{total}/{params} ({bpw:.4f}), "
          f"file_bytes {info['file_bytes']} (on disk {os.path.getsize(itl)})")


# ---- 1, 2: dtypes, sizes and logits ---------------------------------------------------------------

def formats(t, files):
    shapes = expected_shapes(t.p, N_TOKENS)
    sizes = {}
    for q, itl in files.items():
        info = t.info(itl)
        check_layout(q, info, shapes, lambda n, r, q=q: policy_dtype(n, r, q), itl)
        sizes[q] = os.path.getsize(itl)
    order = " > ".join(f"{q} {sizes[q]}" for q in QUANTS)
    check(sizes["fp32"] > sizes["fp16"] > sizes["q8"] > sizes["q4"] > sizes["q3"] > sizes["q2"]
          and sizes["nf4"] < sizes["q8"], f"file sizes fp32 > fp16 > q8 > q4 > q3 > q2, nf4 < q8: {order}")

    alias = t.convert("q8_alias", ["--tokenizer", t.p["tok"], "--dtype", "q8"])
    if alias:
        same = [(x["name"], x["dtype"], x["bytes"]) for x in t.info(alias)["tensors"]] == \
               [(x["name"], x["dtype"], x["bytes"]) for x in t.info(files["q8"])["tensors"]]
        window = t.p["held_ids"][:CTX]
        equal = np.array_equal(t.logits(alias, window)[0], t.logits(files["q8"], window)[0])
        check(same and equal, f"--dtype q8 is --quant q8: same tensors, dtypes, bytes ({same}) and logits ({equal})")


def routing_margins(model, ids):
    """Per held-out position (ppl's windows), the smallest gap over MoE layers between the k-th and
    (k+1)-th router logit of the reference model: near 0, a tiny perturbation swaps an expert."""
    margins = []
    with torch.no_grad():
        for start in range(0, len(ids) - 1, CTX):
            window = torch.tensor([ids[start:start + CTX]])
            h = model.embedding(window) + model.position_embedding(torch.arange(window.shape[1]))[None]
            gap = torch.full((window.shape[1],), math.inf)
            for layer in model.layers:
                h = layer.ssm(h)
                if hasattr(layer.moe, "layer"):
                    moe = layer.moe.layer
                    top = moe.router.gate(moe.norm(h))[0].sort(dim=-1, descending=True).values
                    gap = torch.minimum(gap, top[:, moe.top_k - 1] - top[:, moe.top_k])
                h = layer.moe(h)
            margins += gap.tolist()
    return np.array(margins)


def logits_vs_fp32(t, files):
    """Max logit error per dtype. Positions where the reference's expert choice is a near tie
    (router margin < ROUTING_MARGIN) are left out of the max: there any rounding may swap an expert
    and move the logits by a large, legitimate step."""
    ids = t.p["held_ids"]
    ref = np.concatenate([rows for _, rows, _ in t.windows(files["fp32"], ids)])
    span = ref.max() - ref.min()
    stable = routing_margins(t.p["model"], ids) >= ROUTING_MARGIN
    for q in QUANTS[1:]:
        got = np.concatenate([rows for _, rows, _ in t.windows(files[q], ids)])
        if got.shape != ref.shape or len(stable) != len(got):
            check(False, f"{q}: logits shape {got.shape}, fp32 {ref.shape}, {len(stable)} margins")
            continue
        err = np.abs(got - ref).max(1) / span
        agree = np.mean(got.argmax(1) == ref.argmax(1))
        left_out = err[~stable].max(initial=0)
        check(err[stable].max() < LOGIT_TOL[q],
              f"{q}: logits vs fp32: max |d| / range {err[stable].max():.2e} < {LOGIT_TOL[q]:g} over {stable.sum()} "
              f"positions ({len(err) - stable.sum()} near-tie routings left out: max there {left_out:.2e}; "
              f"range {span:.1f}, argmax agrees at {agree:.1%})")
    prompt = ids[:4]
    want = t.greedy(files["fp32"], prompt, 24)
    got = t.greedy(files["fp16"], prompt, 24)
    check(got == want and len(want) == 24, f"fp16 greedy ids == fp32 greedy ids ({len(want)} from {prompt})")


# ---- 3: KL divergence and top-1 agreement ----------------------------------------------------------

def reference_kld(t, q_itl, f_itl, ids, n=CTX):
    """Mean KL(F || Q) and top-1 agreement over Q's vocabulary ids, from `itera-run logits`."""
    kld, agree, scored = 0.0, 0, 0
    for (start, q_rows, q_ids), (_, f_rows, f_ids) in zip(t.windows(q_itl, ids, n), t.windows(f_itl, ids, n)):
        q_ids = q_ids if q_ids is not None else list(range(q_rows.shape[1]))
        column = {v: c for c, v in enumerate(f_ids if f_ids is not None else range(f_rows.shape[1]))}
        f_rows = f_rows[:, [column[v] for v in q_ids]]
        last = min(len(q_rows), len(ids) - 1 - start)  # the text's last token is not scored
        for qr, fr in zip(q_rows[:last], f_rows[:last]):
            lq = qr - qr.max() - np.log(np.exp(qr - qr.max()).sum())
            lf = fr - fr.max() - np.log(np.exp(fr - fr.max()).sum())
            kld += float(np.sum(np.exp(lf) * (lf - lq)))
            agree += int(qr.argmax() == fr.argmax())
            scored += 1
    return kld / scored, agree / scored, scored


def check_kld(t, label, q_itl, f_itl, ctx=None):
    """Compares ppl --kld-ref with reference_kld; returns the runtime's kld (None when it has none)."""
    got = t.ppl(q_itl, t.p["held"], ref=f_itl, ctx=ctx)
    if not check("kld" in got and "top1" in got,
                 f"{label}: ppl --kld-ref --json has kld, top1 ({json.dumps(got)[:150]})"):
        return None
    kld, top1, scored = reference_kld(t, q_itl, f_itl, t.p["held_ids"], ctx or CTX)
    tol = 1e-4 * kld + 1e-8  # --json prints kld with 8 decimals
    check(abs(got["kld"] - kld) <= tol and abs(got["top1"] - top1) <= 1e-6 and got.get("scored") == scored,
          f"{label}: kld {got['kld']:.8f} vs {kld:.8f} from logits (|d| <= {tol:.1e}), top1 {got['top1']:.6f} "
          f"vs {top1:.6f}, scored {got.get('scored')} vs {scored}")
    return got["kld"]


def kl_divergence(t, files):
    plain = t.ppl(files["q8"], t.p["held"])
    check("kld" not in plain and "top1" not in plain, "ppl --json without --kld-ref has no kld, top1")
    self_ = t.ppl(files["fp32"], t.p["held"], ref=files["fp32"])
    check(self_.get("kld") == 0 and self_.get("top1") == 1, f"fp32 vs itself: kld {self_.get('kld')} == 0, "
                                                           f"top1 {self_.get('top1')} == 1")
    kld = {q: check_kld(t, f"{q} vs fp32", files[q], files["fp32"]) for q in QUANTS[1:]}
    check_kld(t, "q4 vs fp32, --ctx 20", files["q4"], files["fp32"], ctx=20)
    if None not in kld.values():
        check(kld["fp16"] < kld["q8"] < kld["q4"] < kld["q3"] < kld["q2"] and kld["q8"] < kld["nf4"]
              and math.isfinite(kld["q2"]),
              "kld fp16 < q8 < q4 < q3 < q2 (finite), q8 < nf4: " + ", ".join(f"{q} {v:.2e}" for q, v in kld.items()))
    return kld


# ---- 4: vocabulary trimming -----------------------------------------------------------------------

def trimming(t, files, untrimmed):
    ids = t.p["held_ids"][:CTX]
    rows, vocab_ids = t.logits(files["fp32"], ids)
    full, full_ids = t.logits(untrimmed, ids)
    check(vocab_ids == list(range(N_TOKENS)) and rows.shape == (len(ids), N_TOKENS),
          f"trimmed fp32: logits [{rows.shape[0]}x{rows.shape[1]}], vocab_ids == range({N_TOKENS}) "
          f"({'yes' if vocab_ids == list(range(N_TOKENS)) else str(vocab_ids)[:60]})")
    check(full_ids is None and full.shape == (len(ids), VOCAB),
          f"--no-trim-vocab: logits [{full.shape[0]}x{full.shape[1]}] (want {VOCAB} columns), no vocab_ids "
          f"({full_ids is None})")
    if rows.shape[1] == N_TOKENS and full.shape[1] == VOCAB:
        d = np.abs(rows - full[:, :N_TOKENS]).max()
        check(d <= 1e-5, f"trimmed logits == untrimmed logits at the kept columns: max |d| {d:.1e} <= 1e-5")
    check_kld(t, "q4 vs untrimmed fp32 (F's logits at Q's ids, renormalized)", files["q4"], untrimmed)
    info = t.info(untrimmed)
    shapes = {x["name"]: x["shape"] for x in info["tensors"]}
    check(info["vocab_size"] == VOCAB and shapes["embedding.weight"][0] == VOCAB
          and shapes["lm_head.weight"][0] == VOCAB and t.info(files["fp32"])["vocab_size"] == N_TOKENS,
          f"--no-trim-vocab keeps {shapes['embedding.weight'][0]} embedding / {shapes['lm_head.weight'][0]} head rows, "
          f"vocab_size {info['vocab_size']}; trimmed vocab_size {t.info(files['fp32'])['vocab_size']}")

    prompt = t.p["held_ids"][:4]
    for q in ("fp32", "q4"):
        gen = t.greedy(files[q], prompt, 24)
        check(len(gen) == 24 and all(0 <= i < N_TOKENS for i in gen),
              f"trimmed {q}: generate --greedy --print-ids yields ids < {N_TOKENS} ({gen[:8]}...)")
    check(t.greedy(files["fp32"], prompt, 24) == t.greedy(untrimmed, prompt, 24),
          "trimmed fp32 greedy ids == untrimmed fp32 greedy ids")

    # --ids are checkpoint ids: an id that was trimmed away is an error, but not in the untrimmed file.
    run_ = t.args.run
    far = VOCAB - 1
    t.expect_error(f"trimmed fp32: logits --ids with trimmed id {N_TOKENS}",
                   [run_, "logits", "-m", files["fp32"], "--ids", f"5,{N_TOKENS}"])
    t.expect_error(f"trimmed q4: generate --ids with trimmed id {far}",
                   [run_, "generate", "-m", files["q4"], "--ids", f"{far},5", "-n", "3", "--greedy", "--print-ids"])
    rc, out, err = run([run_, "logits", "-m", untrimmed, "--ids", f"5,{N_TOKENS},{far}"])
    check(rc == 0, f"untrimmed fp32: logits --ids 5,{N_TOKENS},{far} works" + ("" if rc == 0 else " " + why(rc, err)))
    t.expect_error(f"untrimmed file with a trimmed --kld-ref: ids >= {N_TOKENS} missing from the reference",
                   [run_, "ppl", "-m", untrimmed, "--file", t.p["held"], "--kld-ref", files["fp32"], "--json"])


# ---- 5: calibration -------------------------------------------------------------------------------

LOOKUPS = ("embedding.weight", "position_embedding.weight")  # untied: only looked up, never multiplied


def check_report(t, label, report_path, itl, calibrated, lookups=LOOKUPS):
    """The report against `info --json`; returns {name: entry} of the block-format tensors."""
    report = read_json(report_path)
    entries = report["tensors"]
    same = [(e["name"], e["shape"], e["dtype"], e["bytes"]) for e in entries] == \
           [(x["name"], x["shape"], x["dtype"], x["bytes"]) for x in t.info(itl)["tensors"]]
    check(report["file_bytes"] == os.path.getsize(itl) and same,
          f"{label}: report file_bytes {report['file_bytes']} (on disk {os.path.getsize(itl)}), {len(entries)} "
          f"tensors' name/shape/dtype/bytes match info --json ({same})")
    fields = ("rms_error_calibrated", "output_error_rtn", "output_error_calibrated")
    block = {e["name"]: e for e in entries if e["dtype"] in BLOCKS}
    bad = []
    for e in entries:
        if e["dtype"] not in BLOCKS:  # fp32: no error; fp16: its rounding error, small but not 0
            rtn = e["rms_error_rtn"]
            fp16_ok = e["dtype"] == "fp16" and isinstance(rtn, (int, float)) and 0 < rtn < 1e-3
            if any(e[f] is not None for f in fields) or not (rtn == 0 and e["dtype"] == "fp32" or fp16_ok):
                bad.append(f"{e['name']} ({e['dtype']}) has errors {rtn}")
        elif not (isinstance(e["rms_error_rtn"], (int, float)) and 0 < e["rms_error_rtn"] < 0.5):
            bad.append(f"{e['name']} rms_error_rtn {e['rms_error_rtn']}")
        elif calibrated and e["name"] not in lookups:
            if not all(isinstance(e[f], (int, float)) and e[f] >= 0 for f in fields):
                bad.append(f"{e['name']} lacks calibrated errors")
        elif any(e[f] is not None for f in fields):
            bad.append(f"{e['name']} has calibrated errors {[e[f] for f in fields]}")
    what = "calibrated errors for every block-format matrix the forward multiplies by, null for lookups" \
        if calibrated else "null calibrated errors"
    check(not bad, f"{label}: {len(block)} block-format tensors with 0 < rms_error_rtn < 0.5, {what}"
                   + ("" if not bad else ": " + "; ".join(bad[:4])))
    return block


def calibration(t, files, kld):
    p, conv = t.p, t.args.convert
    reports = {}
    for q in ("q4", "nf4", "q8", "q3", "q2"):
        reports[q] = t.path(f"r_{q}_cal.json")
        itl = t.convert(f"{q}_cal", ["--tokenizer", p["tok"], "--quant", q, "--calib", p["calib"],
                                     "--report", reports[q]], label=f"calibrated {q}")
        if not itl:
            continue
        files[q + "_cal"] = itl
        block = check_report(t, f"calibrated {q}", reports[q], itl, calibrated=True)
        pairs = [(e["output_error_calibrated"], e["output_error_rtn"]) for n, e in block.items() if n not in LOOKUPS]
        better = sum(c <= r for c, r in pairs)
        gain = np.median([r / c for c, r in pairs if c > 0]) if pairs else 0
        check(pairs and better >= 0.9 * len(pairs),
              f"calibrated {q}: output_error_calibrated <= output_error_rtn for {better} of {len(pairs)} matrices "
              f"(>= 90%; median rtn/calibrated {gain:.1f}x)")

    rtn_report = t.path("r_q4.json")
    rtn = t.convert("q4_rtn", ["--tokenizer", p["tok"], "--quant", "q4", "--report", rtn_report], label="q4 --report")
    q8_report = t.path("r_q8.json")
    q8 = t.convert("q8_rtn", ["--tokenizer", p["tok"], "--quant", "q8", "--report", q8_report], label="q8 --report")
    if rtn and q8:
        b4 = check_report(t, "q4 without --calib", rtn_report, rtn, calibrated=False)
        b8 = check_report(t, "q8 without --calib", q8_report, q8, calibrated=False)
        # B is q8 in both files (the 4-bit policy keeps it at 8 bits): compare the tensors that are q4.
        q4_names = [n for n in b4 if b4[n]["dtype"] == "q4"]
        ratio = min(b4[n]["rms_error_rtn"] / b8[n]["rms_error_rtn"] for n in q4_names)
        check(sorted(b4) == sorted(b8) and len(q4_names) > 0 and ratio > 8,
              f"every q4 tensor's rms_error_rtn: q4 / q8 >= {ratio:.1f} (> 8)")
        same = np.array_equal(t.logits(rtn, p["held_ids"][:CTX])[0], t.logits(files["q4"], p["held_ids"][:CTX])[0])
        check(same, "q4 --report writes the same weights as q4 (identical logits)")

    short = t.path("r_q4_64.json")
    q4_64 = t.convert("q4_cal64", ["--tokenizer", p["tok"], "--quant", "q4", "--calib", p["calib"],
                                   "--calib-tokens", "64", "--report", short], label="--calib-tokens 64")
    if q4_64 and "q4_cal" in files:
        a, b = read_json(short)["tensors"], read_json(reports["q4"])["tensors"]
        differ = sum(x["output_error_rtn"] != y["output_error_rtn"] for x, y in zip(a, b) if x["dtype"] in BLOCKS)
        check(differ > 0, f"--calib-tokens 64 changes the statistics: {differ} tensors' output_error_rtn differ")

    for q in ("q4", "q3", "q2"):
        if q + "_cal" in files and kld.get(q) is not None:
            cal = check_kld(t, f"calibrated {q} vs fp32 (held-out text)", files[q + "_cal"], files["fp32"])
            if cal is not None:
                check(cal < kld[q], f"held-out kld: calibrated {q} {cal:.3e} < round-to-nearest {q} {kld[q]:.3e} "
                                    f"({kld[q] / max(cal, 1e-12):.2f}x)")

    # tied head: the head's input statistics belong to embedding.weight
    tied_report = t.path("r_tied.json")
    tied = t.convert("tied_q4_cal", ["--tokenizer", p["tok"], "--quant", "q4", "--calib", p["calib"],
                                     "--report", tied_report], ck=p["tied_ck"], label="tied head, calibrated q4")
    if tied:
        info = t.info(tied)
        check(info["tied_head"] is True and "lm_head.weight" not in {x["name"] for x in info["tensors"]},
              "tied checkpoint: info tied_head true, no lm_head.weight tensor")
        block = check_report(t, "tied calibrated q4", tied_report, tied, calibrated=True,
                             lookups=("position_embedding.weight",))
        check("embedding.weight" in block and block["embedding.weight"]["output_error_calibrated"] is not None,
              "tied calibrated q4: embedding.weight (the head) has calibrated errors")

    nothing = t.path("empty.txt")
    with open(nothing, "w") as f:
        f.write(" \n")
    base = [conv, p["ck"], "-o", t.path("bad.itl")]
    t.expect_error("--calib without --tokenizer", base + ["--quant", "q4", "--calib", p["calib"]])
    t.expect_error("--calib of a text without tokens",
                   base + ["--tokenizer", p["tok"], "--quant", "q4", "--calib", nothing])
    t.expect_error("--calib of a nonexistent file",
                   base + ["--tokenizer", p["tok"], "--quant", "q4", "--calib", t.path("nope.txt")])
    t.expect_error("--calib-tokens 0 (usage)", base + ["--tokenizer", p["tok"], "--quant", "q4", "--calib", p["calib"],
                                                       "--calib-tokens", "0"], codes=(2,))


# ---- 6: --keep ------------------------------------------------------------------------------------

def keep(t, files):
    p, conv = t.p, t.args.convert
    shapes = expected_shapes(p, N_TOKENS)

    def case(name, quant, rules, want, ck=None, shapes_=None):
        """want: {name: dtype} or a function (name, rank) -> dtype or None, over the policy of --quant."""
        extra = ["--tokenizer", p["tok"], "--quant", quant]
        for r in rules:
            extra += ["--keep", r]
        itl = t.convert(name, extra, ck=ck)
        if not check(itl is not None, f"--quant {quant} " + " ".join(f"--keep '{r}'" for r in rules)):
            return None
        check_layout(f"  {name}", t.info(itl), shapes_ or shapes,
                     lambda n, r: (want(n, r) if callable(want) else want.get(n)) or policy_dtype(n, r, quant), itl)
        return itl

    in_proj = {f"layers.{i}.ssm.in_proj.weight": "fp16" for i in range(CFG["num_layers"])}
    mixed = case("keep_mixed", "q4", ["lm_head.weight=q8", "layers.*.ssm.in_proj.weight=fp16"],
                 dict(in_proj, **{"lm_head.weight": "q8"}))
    if mixed:
        ref = t.logits(files["fp32"], p["held_ids"][:CTX])[0]
        rel = np.abs(t.logits(mixed, p["held_ids"][:CTX])[0] - ref).max() / (ref.max() - ref.min())
        check(rel < LOGIT_TOL["q4"], f"  keep_mixed: logits vs fp32 on one window, max |d| / range {rel:.2e} "
                                     f"< {LOGIT_TOL['q4']:g}")
    case("keep_last_nf4", "q4", ["lm_head.weight=q8", "lm_head.weight=nf4"], {"lm_head.weight": "nf4"})
    case("keep_last_q8", "q4", ["lm_head.weight=nf4", "lm_head.weight=q8"], {"lm_head.weight": "q8"})
    experts = {n: "q8" for n in shapes if "experts" in n and n.endswith("w1.weight")}
    delta = {f"layers.{i}.ssm.ssm.delta_proj.weight": "q2" for i in range(CFG["num_layers"])}
    low = case("keep_q3_delta_q2", "q3", ["*.delta_proj.weight=q2"], delta)  # the sub-4-bit mix
    if low and files.get("q3"):
        size, q3_size = os.path.getsize(low), os.path.getsize(files["q3"])
        check(size < q3_size, f"  keep_q3_delta_q2: {size} bytes < q3 {q3_size}")
    case("keep_dots", "q4", ["*experts*.w1.weight=q8"], experts)  # '*' crosses dots; layers.0 ffn.w1 not matched
    case("keep_fp32_base", "fp32", ["lm_head.weight=q4", "layers.*.ssm.conv1d.weight=fp16"],
         {"lm_head.weight": "q4", **{f"layers.{i}.ssm.conv1d.weight": "fp16" for i in range(CFG["num_layers"])}})
    case("keep_conv_fp32", "nf4", ["layers.*.ssm.conv1d.weight=fp32", "layers.1.*=fp32"],
         lambda n, r: "fp32" if n.startswith("layers.1.") or n.endswith("conv1d.weight") else None)
    case("keep_tied", "q4", ["embedding.weight=q8"], {"embedding.weight": "q8"}, ck=p["tied_ck"],
         shapes_=expected_shapes(p, N_TOKENS, tied=True))

    base = [conv, p["ck"], "-o", t.path("bad.itl"), "--tokenizer", p["tok"], "--quant", "q4"]
    for rule, why_ in (("layers.0.ssm.ssm.D=q4", "block format on a rank-1 tensor"),
                       ("layers.1.ssm.conv1d.weight=q8", "block format on conv1d.weight"),
                       ("layers.0.ssm.ssm.C=nf4", "block format on ssm.C"),
                       ("*=q8", "a glob that reaches the LayerNorms"),
                       ("x", "no '='"), ("a=q5", "unknown dtype"), ("=q8", "empty glob")):
        t.expect_error(f"--keep '{rule}' ({why_})", base + ["--keep", rule])


# ---- 7: layouts ---------------------------------------------------------------------------------------

def layouts(t, files):
    """fp32, fp16, q4 and q8 matrices of >= 16 rows that are multiplied are stored rows16 by default;
    --layout row_major stores C order (ggml's rows for q4 / q8). Same sizes, logits within FP32 summation
    order."""
    p = t.p
    default = t.info(files["q4"])["tensors"]
    plain_itl = t.convert("q4_row_major", ["--tokenizer", p["tok"], "--quant", "q4", "--layout", "row_major"],
                          label="--layout row_major")
    if plain_itl is None:
        return
    plain = t.info(plain_itl)["tensors"]
    want = {e["name"]: "rows16" if e["dtype"] in ("fp32", "fp16", "q4", "q8") and len(e["shape"]) == 2
            and e["shape"][0] >= 16 and not e["name"].endswith(".C")
            and e["name"] not in ("embedding.weight", "position_embedding.weight") else "row_major" for e in default}
    got = {e["name"]: e["layout"] for e in default}
    interleaved = sum(v == "rows16" for v in got.values())
    check(got == want and interleaved >= 6,
          f"default q4 file: {interleaved} of {len(got)} tensors rows16 (the multiplied matrices of >= 16 rows), "
          f"the rest row_major")
    check(all(e["layout"] == "row_major" for e in plain) and
          [(e["name"], e["bytes"]) for e in plain] == [(e["name"], e["bytes"]) for e in default] and
          abs(os.path.getsize(plain_itl) - os.path.getsize(files["q4"])) <= 64,
          f"--layout row_major: every tensor row_major, the same bytes per tensor "
          f"({os.path.getsize(plain_itl)} vs {os.path.getsize(files['q4'])} bytes on disk: within the metadata's "
          f"64-byte padding, which holds the longer command line)")
    ids = list(range(1, 25))
    a, _ = t.logits(files["q4"], ids)
    b, _ = t.logits(plain_itl, ids)
    err = float(np.abs(a - b).max() / (1 + np.abs(b).max()))
    check(err <= 1e-5, f"rows16 vs row_major q4 logits over 24 positions: max |d| / (1 + max |logit|) = {err:.2e} "
                       f"(<= 1e-5: only FP32 summation order differs)")
    # FP32: the multiplied matrices rows16 too; C (read element by element at load) stays row_major.
    f32 = t.info(files["fp32"])["tensors"]
    plain_f32 = t.convert("fp32_row_major", ["--tokenizer", p["tok"], "--quant", "fp32", "--layout", "row_major"],
                          label="fp32 --layout row_major")
    if plain_f32 is None:
        return
    f32_rows16 = sorted(e["name"] for e in f32 if e["layout"] == "rows16")
    f32_want = sorted(e["name"] for e in f32 if len(e["shape"]) == 2 and e["shape"][0] >= 16
                      and not e["name"].endswith(".C") and e["name"] != "position_embedding.weight"
                      and (e["name"] != "embedding.weight" or "lm_head.weight" not in [x["name"] for x in f32]))
    check(f32_rows16 == f32_want and len(f32_rows16) >= 6,
          f"default fp32 file: {len(f32_rows16)} of {len(f32)} tensors rows16 (every multiplied matrix of >= 16 rows)")
    a, _ = t.logits(files["fp32"], ids)
    b, _ = t.logits(plain_f32, ids)
    err = float(np.abs(a - b).max() / (1 + np.abs(b).max()))
    check(err <= 1e-5, f"rows16 vs row_major fp32 logits over 24 positions: max |d| / (1 + max |logit|) = {err:.2e} "
                       f"(<= 1e-5: only FP32 summation order differs)")
    t.expect_error("--layout diagonal (usage)", [t.args.convert, p["ck"], "-o", t.path("bad.itl"), "--layout", "diagonal"],
                   codes=(2,))


# ---- main -----------------------------------------------------------------------------------------

def main():
    args = tool_args(__doc__.split("\n")[0])
    w = tempfile.mkdtemp(prefix="quant-", dir=args.workdir)
    torch.set_num_threads(1)
    p = train(w)
    t = Tools(args, w, p)
    files = {q: t.convert(q, ["--tokenizer", p["tok"], "--quant", q], label=q) for q in QUANTS}
    untrimmed = t.convert("fp32_full", ["--tokenizer", p["tok"], "--no-trim-vocab"], label="fp32 untrimmed")
    if None in files.values() or untrimmed is None:
        check(False, "conversion failed: the other checks are not run")
    else:
        try:
            formats(t, files)
            logits_vs_fp32(t, files)
            kld = kl_divergence(t, files)
            trimming(t, files, untrimmed)
            calibration(t, files, kld)
            keep(t, files)
            layouts(t, files)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            check(False, f"stopped: {type(e).__name__}: {e}")
    finish(w)


if __name__ == "__main__":
    main()

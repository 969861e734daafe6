#!/usr/bin/python3
"""End-to-end tests of mixed precision (--precision), the size budget (--target-size) and the
per-part table of `itera-run info`.

usage: /usr/bin/python3 tests/cli/test_compression.py --convert build/itera-convert \
           --run build/itera-run --workdir DIR

Trains a small Itera-Lite model with the PyTorch reference (tests/reference/itera_lite.py):
hidden 64, 2 layers (dense FFN, then MoE with 4 experts), tied head, 120-word vocabulary, on text
from a fixed random Markov chain. Then checks:
  1. --precision: every tensor's dtype in `info --json` is what the rules say (later rules win,
     block formats skip vectors and element-wise tensors, --keep wins over --precision);
  2. --precision errors: a rule matching nothing, a block format on an element-wise tensor,
     a tied head's lm_head, a bad dtype: one `error:` line, exit 1;
  3. `info`: the parts (embedding, position, each layer's ssm and channel block, head) hold every
     tensor's bytes once, shares are bytes / file size, and parts plus `other` make the file;
  4. --target-size: an impossible budget is an error that names the smallest file; budgets above
     it give files no larger than the budget, whose report agrees with the file (dtypes, bytes,
     size) and whose KL divergence, re-measured with `itera-run ppl --kld-ref`, is the report's;
     the report's `precision` map rebuilds the same tensors; a larger budget loses no more;
  5. --target-size with --prune-scope: a budget below the smallest unpruned file is met by pruning;
  6. --target-size errors: no --calib, together with --quant.
Prints one line per check and `N passed, N failed`; exits 1 on any failure.
"""
import json
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, ".."))

import torch  # noqa: E402

from markov_language import pseudo_word_language, train as train_reference  # noqa: E402
from testlib import check, finish, run, tool_args, why  # noqa: E402

N_TOKENS = 120
CTX = 32
CFG = {"vocab_size": N_TOKENS, "hidden_size": 64, "num_layers": 2, "ssm_state_size": 8, "ssm_conv_kernel": 4,
       "ssm_expand_factor": 2, "num_experts": 4, "expert_size": 32, "top_k_experts": 2, "moe_layers": [1],
       "max_seq_length": CTX}
TRAIN_STEPS, BATCH, LR = 80, 16, 5e-3
SCORE_TOKENS = 384  # --score-tokens: keeps each budgeted conversion to a few seconds


LANG = pseudo_word_language(N_TOKENS)


def train(w):
    model, _ = train_reference(CFG, True, LANG.ids(LANG.text(20000, seed=1)), TRAIN_STEPS, BATCH, LR)
    p = {k: os.path.join(w, v) for k, v in
         {"ck": "ck.pt", "tok": "tok.json", "calib": "calib.txt", "score": "score.txt"}.items()}
    torch.save({"model_state_dict": model.state_dict(), "config": CFG}, p["ck"])
    LANG.write_tokenizer(p["tok"])
    calib = LANG.text(3000, seed=2)
    with open(p["calib"], "w") as f:
        f.write(" ".join(calib) + "\n")
    # The tokens the converter scores, plus one: `ppl` scores every position but the last.
    with open(p["score"], "w") as f:
        f.write(" ".join(calib[:SCORE_TOKENS + 1]) + "\n")
    return p


class Tools:
    def __init__(self, args, w, p):
        self.args, self.w, self.p = args, w, p

    def convert(self, name, extra):
        """(path or None, stdout, stderr) of converting into w/name.itl."""
        out = os.path.join(self.w, name + ".itl")
        rc, so, err = run([self.args.convert, self.p["ck"], "-o", out, "--tokenizer", self.p["tok"]] + extra)
        ok = rc == 0 and os.path.isfile(out)
        if not ok:
            check(False, f"{name}: convert {' '.join(extra)} {why(rc, err)}")
        return (out if ok else None), so, err

    def info(self, itl, text=False):
        rc, out, err = run([self.args.run, "info", "-m", itl] + ([] if text else ["--json"]))
        if rc != 0:
            raise RuntimeError(f"info {itl} {why(rc, err)}")
        return out if text else json.loads(out)

    def ppl(self, itl, text, ref):
        rc, out, err = run([self.args.run, "ppl", "-m", itl, "--file", text, "--json", "--kld-ref", ref])
        if rc != 0:
            raise RuntimeError(f"ppl {os.path.basename(itl)} {why(rc, err)}")
        return json.loads(out)

    def expect_error(self, label, extra, want):
        out = os.path.join(self.w, "refused.itl")
        rc, _, err = run([self.args.convert, self.p["ck"], "-o", out, "--tokenizer", self.p["tok"]] + extra)
        lines = err.splitlines()
        ok = (rc == 1 and len(lines) == 1 and lines[0].startswith("error:") and want in lines[0]
              and not os.path.exists(out))
        check(ok, f"{label}: exit {rc}, {lines[0][:160] if lines else 'no stderr'!r} (want '{want}', no file)")
        return lines[0] if lines else ""


def dtypes_of(info):
    return {t["name"]: t["dtype"] for t in info["tensors"]}


def elementwise(name, shape):
    return len(shape) < 2 or name.endswith("conv1d.weight") or name.endswith("ssm.C")


# ---- 1, 2: --precision ---------------------------------------------------------------------------

def precision(t):
    rules = "embedding=q8,layers.*.ssm.*=fp16,layers.*.moe.*=q4,layers.1.moe.layer.router=q8"
    itl, _, _ = t.convert("precision", ["--precision", rules, "--keep", "layers.0.ssm.out_proj.weight=q4"])
    if not itl:
        return None
    info = t.info(itl)
    wrong = []
    for ten in info["tensors"]:
        name, shape = ten["name"], ten["shape"]
        if name == "layers.0.ssm.out_proj.weight":
            want = "q4"  # --keep wins over --precision
        elif name == "layers.1.moe.layer.router.gate.weight":
            want = "q8"  # the later rule wins
        elif name.startswith("layers.") and ".ssm." in name:
            want = "fp16"
        elif name.startswith("layers.") and ".moe." in name:
            want = "fp32" if elementwise(name, shape) else "q4"  # vectors cannot hold q4
        elif name == "embedding.weight":
            want = "q8"
        else:
            want = "fp32"  # no rule: the --quant policy (fp32)
        if ten["dtype"] != want:
            wrong.append(f"{name} {ten['dtype']} (want {want})")
    check(not wrong and len(info["tensors"]) > 30,
          f"--precision '{rules}' + --keep: {len(info['tensors'])} tensors as the rules say "
          f"{'; '.join(wrong[:3])}")

    t.expect_error("--precision rule matching nothing", ["--precision", "layers.9=q4"], "matches no tensor")
    t.expect_error("--precision on a tied head", ["--precision", "lm_head=fp16"], "tied")
    t.expect_error("--precision block format on conv1d", ["--precision", "layers.0.ssm.conv1d.weight=q4"],
                   "read element-wise")
    t.expect_error("--precision bad dtype", ["--precision", "embedding=q5"], "--precision expects")
    return itl


# ---- 3: info parts -------------------------------------------------------------------------------

def parts(t, itl):
    info = t.info(itl)
    names = [p["name"] for p in info["parts"]]
    want = ["embedding", "position", "layers.0.ssm", "layers.0.ffn", "layers.1.ssm", "layers.1.moe", "head"]
    check(names == want, f"info parts {names}")
    owner = {}
    for ten in info["tensors"]:
        n = ten["name"]
        m = re.match(r"layers\.(\d+)\.(ssm|moe)\.", n)
        if m:
            kind = "ssm" if m.group(2) == "ssm" else ("moe" if ".experts." in n or ".router." in n or ".layer." in n
                                                       else "ffn")
            owner[n] = f"layers.{m.group(1)}.{kind}"
        else:
            owner[n] = {"embedding.weight": "embedding", "position_embedding.weight": "position"}.get(n, "head")
    bad = []
    for p in info["parts"]:
        b = sum(ten["bytes"] for ten in info["tensors"] if owner[ten["name"]] == p["name"])
        n = sum(1 for ten in info["tensors"] if owner[ten["name"]] == p["name"])
        if b != p["bytes"] or abs(p["share"] - p["bytes"] / info["file_bytes"]) > 1e-6 or n == 0:
            bad.append(f"{p['name']}: {p['bytes']} bytes, tensors {b}, share {p['share']}")
    total = sum(p["bytes"] for p in info["parts"]) + info["other_bytes"]
    check(not bad and total == info["file_bytes"] and info["other_bytes"] > 0,
          f"info parts: bytes are their tensors', shares bytes/file, parts + other {total} = file "
          f"{info['file_bytes']} {'; '.join(bad[:2])}")
    ssm = next(p for p in info["parts"] if p["name"] == "layers.0.ssm")
    check("in_proj fp16" in ssm["dtypes"] and "inner 128 state 8 conv 4" == ssm["shape"],
          f"info layers.0.ssm: shape '{ssm['shape']}', dtypes '{ssm['dtypes']}'")
    text = t.info(itl, text=True)
    rows = [line.split()[0] for line in text.splitlines() if line.split() and line.split()[0] in want + ["other"]]
    check(rows == want + ["other"], f"info text: part rows {rows}")


# ---- 4, 5, 6: --target-size ---------------------------------------------------------------------

def budget(t):
    p = t.p
    calib = ["--calib", p["calib"], "--score-tokens", str(SCORE_TOKENS)]
    line = t.expect_error("--target-size 1000", ["--target-size", "1000"] + calib, "cannot be met")
    m = re.search(r"smallest file these dtypes give is (\d+) bytes", line)
    if not m:
        return
    smallest = int(m.group(1))
    fp32, _, _ = t.convert("fp32", [])
    if not fp32:
        return
    fp32_bytes = os.path.getsize(fp32)
    check(smallest < fp32_bytes / 8, f"smallest budgeted file {smallest} bytes, FP32 {fp32_bytes}")
    results = []
    # Under a sanitizer (ITERA_SANITIZED=1, about 15x slower) one budget covers the same code.
    for frac in (0.0,) if os.environ.get("ITERA_SANITIZED") == "1" else (0.0, 0.25):
        target = int(smallest + frac * (fp32_bytes / 4 - smallest)) + 200
        report = os.path.join(t.w, f"budget-{frac}.json")
        itl, out, _ = t.convert(f"budget-{frac}", ["--target-size", str(target), "--report", report] + calib)
        if not itl:
            continue
        size = os.path.getsize(itl)
        with open(report) as f:
            r = json.load(f)
        info = t.info(itl)
        file_dtypes = dtypes_of(info)
        rep_dtypes = {ten["name"]: ten["dtype"] for ten in r["tensors"]}
        tensor_bytes = sum(ten["bytes"] for ten in r["tensors"])
        check(size <= target and r["file_bytes"] == size and file_dtypes == rep_dtypes
              and tensor_bytes + r["overhead_bytes"] == size,
              f"--target-size {target}: file {size} bytes, report {r['file_bytes']}, dtypes agree "
              f"{file_dtypes == rep_dtypes}, tensors {tensor_bytes} + overhead {r['overhead_bytes']}")
        chosen_ok = all(ten["dtype"] in {c["dtype"] for c in ten["candidates"]} and
                        ten["kld"] == min(c["kld"] for c in ten["candidates"] if c["dtype"] == ten["dtype"])
                        for ten in r["tensors"])
        # The prediction: the chosen candidates' KLDs summed, or after the refinement (step 4) the
        # first choice's KLD plus each change's measured effect on it.
        if r["refined"]:
            base = r["first_kld"]
            predicted = base + sum(c["kld_in_file"] - base for ten in r["tensors"] for c in ten["candidates"]
                                   if c["dtype"] == ten["dtype"] and "kld_in_file" in c)
        else:
            predicted = sum(ten["kld"] for ten in r["tensors"])
        check(chosen_ok and abs(predicted - r["predicted_kld"]) <= 1e-6 + 1e-4 * predicted,
              f"--target-size {target}: every choice is a measured candidate, predicted KLD "
              f"{r['predicted_kld']:.6g} = {'refined ' if r['refined'] else ''}sum of choices {predicted:.6g}")
        ppl = t.ppl(itl, p["score"], fp32)
        check(abs(ppl["kld"] - r["measured_kld"]) <= 0.1 * r["measured_kld"] + 1e-5 and
              f"{r['measured_kld']:.6f}" in out,
              f"--target-size {target}: printed KLD {r['measured_kld']:.6f} on {SCORE_TOKENS} tokens, "
              f"ppl --kld-ref on them {ppl['kld']:.6f}")
        again, _, _ = t.convert(f"budget-{frac}-again", ["--precision", r["precision"], "--calib", p["calib"]])
        if again:
            same = [(a["name"], a["bytes"]) for a in t.info(again)["tensors"]] == \
                   [(a["name"], a["bytes"]) for a in info["tensors"]] and dtypes_of(t.info(again)) == file_dtypes
            check(same, f"--precision with the report's map rebuilds the same tensors")
        results.append((target, r["measured_kld"], r["predicted_kld"]))
    if len(results) == 2:
        (t0, k0, p0), (t1, k1, p1) = results
        check(p1 <= p0 + 1e-12, f"predicted KLD falls as the budget grows: {t0} bytes {p0:.6g}, {t1} bytes {p1:.6g}")

    # 5: below the smallest unpruned file, pruning makes room.
    target = smallest - 1500
    report = os.path.join(t.w, "pruned.json")
    itl, out, _ = t.convert("pruned", ["--target-size", str(target), "--prune-scope", "moe,ffn,ssm",
                                       "--report", report] + calib)
    if itl:
        with open(report) as f:
            r = json.load(f)
        info = t.info(itl)
        params = sum(1 for _ in info["tensors"])
        check(os.path.getsize(itl) <= target and r["prune_ratio"] > 0 and r["pruning"]["removed_weights"] > 0
              and "pruning levels tried" in out,
              f"--target-size {target} --prune-scope moe,ffn,ssm: {os.path.getsize(itl)} bytes, prune ratio "
              f"{r['prune_ratio']}, {r['pruning']['removed_weights']} weights removed, {params} tensors")

    t.expect_error("--target-size without --calib", ["--target-size", "100000"], "needs calibration text")
    t.expect_error("--target-size with --quant", ["--target-size", "100000", "--quant", "q4"] + calib, "drop --quant")


def main():
    args = tool_args(__doc__.split("\n")[0])
    w = tempfile.mkdtemp(prefix="compression-", dir=args.workdir)
    torch.set_num_threads(1)
    t = Tools(args, w, train(w))
    try:
        itl = precision(t)
        if itl:
            parts(t, itl)
        budget(t)
    except (RuntimeError, ValueError, KeyError, TypeError, StopIteration) as e:
        check(False, f"stopped: {type(e).__name__}: {e}")
    finish(w)


if __name__ == "__main__":
    main()

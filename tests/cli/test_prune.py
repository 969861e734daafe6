#!/usr/bin/python3
"""End-to-end tests of structured pruning (itera-convert: torch.nn.utils.prune checkpoints, --prune).

usage: /usr/bin/python3 tests/cli/test_prune.py --convert build/itera-convert \
           --run build/itera-run --workdir DIR

Trains a small Itera-Lite model with the PyTorch reference (tests/reference/itera_lite.py):
hidden 32, layer 0 an SSM block + dense FFN (width 48), layer 1 an SSM block + 4 experts of
width 40 (top-2), tied head, on text from a fixed random Markov chain. Then checks:
  1. torch.nn.utils.prune layout: 40% of the expert w1 rows (experts 0 and 2) or w2 columns
     (experts 1 and 3; expert 0 both) masked with ln_structured, an unstructured L1 mask on the
     dense FFN's w1 and a structured mask on layer 0's in_proj rows. The state dict, saved with
     its `_orig`/`_mask` pairs, converts to a file smaller than the same weights saved dense
     (prune.remove: zeros in place): every expert loses exactly its masked neurons, the FFN and
     the SSM keep their sizes (zeros), and FP32 logits match PyTorch (masks applied) within 1e-4;
  2. --prune RATIO: magnitude (uniform) and calibrated (activation / taylor, per-group
     sensitivity, scope moe,ffn,ssm,vocab) plans remove at least RATIO of the scope's weights, the
     file shrinks accordingly, the model runs, the --report lists the groups;
  3. errors: a ratio out of range, an unknown scope or importance, taylor without --calib, more
     than the scope can give.
Prints one line per check and `N passed, N failed`; exits 1 on any failure.
"""
import json
import os
import random
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.utils.prune as prune  # noqa: E402

from markov_language import SPECIALS, MarkovLanguage, train as train_reference  # noqa: E402
from testlib import check, finish, run, tool_args, why  # noqa: E402

N_WORDS = 56
CTX = 32
CFG = {"vocab_size": len(SPECIALS) + N_WORDS, "hidden_size": 32, "num_layers": 2, "ssm_state_size": 8,
       "ssm_conv_kernel": 4, "ssm_expand_factor": 2, "num_experts": 4, "expert_size": 40, "ffn_size": 48,
       "top_k_experts": 2, "moe_layers": [1], "max_seq_length": CTX}
LOGIT_TOL = 1e-4


WORDS = [f"w{i}" for i in range(N_WORDS)]
LANG = MarkovLanguage(WORDS, {w: random.Random(100 + i).sample(WORDS, 3) for i, w in enumerate(WORDS)}, (0.7, 0.2, 0.1))


def train(w):
    model, _ = train_reference(CFG, True, LANG.ids(LANG.text(8000, seed=1)), 60, 16, 5e-3)
    p = {"ck": os.path.join(w, "ck.pt"), "tok": os.path.join(w, "tok.json"), "calib": os.path.join(w, "calib.txt")}
    torch.save({"model_state_dict": model.state_dict(), "config": CFG}, p["ck"])
    LANG.write_tokenizer(p["tok"])
    with open(p["calib"], "w") as f:
        f.write(" ".join(LANG.text(1500, seed=2)) + "\n")
    p["ids"] = LANG.ids(LANG.text(3 * CTX, seed=3))
    return model.eval(), p


def convert(args, ck, out, extra=()):
    rc, stdout, err = run([args.convert, ck, "-o", out] + list(extra))
    return rc, stdout + err


def info(args, itl):
    rc, out, err = run([args.run, "info", "-m", itl, "--json"])
    if rc != 0:
        raise RuntimeError(f"info {itl} {why(rc, err)}")
    return json.loads(out)


def shapes(args, itl):
    return {t["name"]: t["shape"] for t in info(args, itl)["tensors"]}


def logits(args, itl, ids):
    rc, out, err = run([args.run, "logits", "-m", itl, "--ids", ",".join(map(str, ids))])
    if rc != 0:
        raise RuntimeError(f"logits {os.path.basename(itl)} {why(rc, err)}")
    return np.array(json.loads(out)["logits"], dtype=np.float64)


def expect_error(args, label, cmd_args, codes=(1,)):
    rc, _, err = run([args.convert] + cmd_args)
    lines = err.strip().splitlines()
    ok = rc in codes and len(lines) >= 1 and lines[0].startswith("error")
    check(ok, f"{label}: exit {rc}, '{lines[0][:150] if lines else ''}'")


# ---- 1: torch.nn.utils.prune ----------------------------------------------------------------------

def torch_prune_layout(args, w, model, p):
    experts = model.layers[1].moe.layer.experts
    for e, ex in enumerate(experts):
        if e % 2 == 0:
            prune.ln_structured(ex.w1, "weight", amount=0.4, n=2, dim=0)
        if e % 2 == 1 or e == 0:
            prune.ln_structured(ex.w2, "weight", amount=0.4, n=2, dim=1)
    prune.l1_unstructured(model.layers[0].moe.ffn.w1, "weight", amount=0.3)
    prune.ln_structured(model.layers[0].ssm.in_proj, "weight", amount=0.25, n=1, dim=0)
    sd = model.state_dict()
    n_masks = sum(k.endswith("_mask") for k in sd)
    check(n_masks == 7 and "layers.1.moe.layer.experts.0.w1.weight_orig" in sd,
          f"torch.nn.utils.prune state dict: {n_masks} '_orig' + '_mask' pairs")
    pruned_ck = os.path.join(w, "pruned.pt")
    torch.save({"model_state_dict": sd, "config": CFG}, pruned_ck)
    # What each expert keeps: neurons whose w1 row and w2 column both survive the masks.
    want_widths = []
    for ex in experts:
        alive = torch.ones(CFG["expert_size"], dtype=torch.bool)
        if hasattr(ex.w1, "weight_mask"):
            alive &= ex.w1.weight_mask.abs().sum(dim=1) > 0
        if hasattr(ex.w2, "weight_mask"):
            alive &= ex.w2.weight_mask.abs().sum(dim=0) > 0
        want_widths.append(int(alive.sum()))
    with torch.no_grad():
        ids = torch.tensor(p["ids"])
        ref = [model(ids[s:s + CTX][None])[0].double().numpy() for s in range(0, len(ids), CTX)]
    # The same weights saved dense: prune.remove folds each mask into its weight (zeros in place).
    for mod in [model.layers[0].moe.ffn.w1, model.layers[0].ssm.in_proj] + [m for ex in experts for m in (ex.w1, ex.w2)]:
        if hasattr(mod, "weight_mask"):
            prune.remove(mod, "weight")
    dense_ck = os.path.join(w, "dense.pt")
    torch.save({"model_state_dict": model.state_dict(), "config": CFG}, dense_ck)

    out, dense_out = os.path.join(w, "pruned.itl"), os.path.join(w, "dense.itl")
    rc, text = convert(args, pruned_ck, out, ["--tokenizer", p["tok"], "--report", out + ".json"])
    rc2, text2 = convert(args, dense_ck, dense_out, ["--tokenizer", p["tok"]])
    if not check(rc == 0 and rc2 == 0, f"prune-layout and dense checkpoints convert (fp32) {text.strip()[-200:]}"):
        return
    sh = shapes(args, out)
    got_widths = [sh[f"layers.1.moe.layer.experts.{e}.w1.weight"][0] for e in range(4)]
    check(got_widths == want_widths and all(x < CFG["expert_size"] for x in want_widths),
          f"expert widths {got_widths} == neurons left by the masks {want_widths} (of {CFG['expert_size']})")
    check(sh["layers.0.moe.ffn.w1.weight"] == [48, 32] and sh["layers.0.ssm.in_proj.weight"] == [128, 32],
          f"unstructured FFN mask and SSM row mask: folded into zeros, sizes kept "
          f"({sh['layers.0.moe.ffn.w1.weight']}, {sh['layers.0.ssm.in_proj.weight']})")
    removed = sum(CFG["expert_size"] - x for x in want_widths) * 2 * CFG["hidden_size"]
    size, dense_size = os.path.getsize(out), os.path.getsize(dense_out)
    check(dense_size - size >= 4 * removed - 64 * 8,
          f"file {size} bytes < dense {dense_size} bytes by {dense_size - size} >= 4 x {removed} removed weights "
          f"(less 64-byte alignment)")
    with open(out + ".json") as f:
        report = json.load(f)["pruning"]
    check(report["removed_weights"] == removed and len(report["groups"]) == 4,
          f"--report pruning: {report['removed_weights']} weights in {len(report['groups'])} groups")
    worst = 0.0
    for s, r in zip(range(0, len(p["ids"]), CTX), ref):
        got = logits(args, out, p["ids"][s:s + CTX])
        worst = max(worst, float(np.abs(got - r).max()))
    check(worst <= LOGIT_TOL, f"FP32 logits vs PyTorch with the masks applied: max |d| {worst:.2e} <= {LOGIT_TOL:g} "
                              f"(logits up to {max(float(np.abs(r).max()) for r in ref):.1f})")


# ---- 2, 3: --prune --------------------------------------------------------------------------------

def prune_option(args, w, p):
    base = os.path.join(w, "base.itl")
    rc, text = convert(args, p["ck"], base, ["--tokenizer", p["tok"]])
    if not check(rc == 0, "unpruned fp32 converts"):
        return
    H, E, F, D = CFG["hidden_size"], CFG["expert_size"], CFG["ffn_size"], 2 * CFG["hidden_size"]
    moe_ffn = 4 * (2 * H * E + H) + 2 * H * F
    cases = [("magnitude, uniform", ["--prune", "0.3"], 0.3 * moe_ffn),
             ("activation, sensitivity", ["--prune", "0.3", "--calib", p["calib"]], 0.3 * moe_ffn),
             ("taylor, scope moe,ffn,ssm,vocab", ["--prune", "0.4", "--calib", p["calib"], "--prune-importance",
                                                  "taylor", "--prune-scope", "moe,ffn,ssm,vocab"], None)]
    for label, extra, want in cases:
        out = os.path.join(w, "p.itl")
        rc, text = convert(args, p["ck"], out, ["--tokenizer", p["tok"], "--report", out + ".json"] + extra)
        if not check(rc == 0, f"--prune {label}: converts " + ("" if rc == 0 else text[-300:])):
            continue
        with open(out + ".json") as f:
            rep = json.load(f)["pruning"]
        if want is None:  # SSM channels count too: inner D shrinks in_proj, conv, delta (D^2), B, C, D, out_proj
            ssm = 2 * (2 * D * H + D * 5 + D * D + D + 2 * D * CFG["ssm_state_size"] + D + D * H)
            want = 0.4 * (moe_ffn + ssm)
        vocab = rep.get("vocab_rows_kept")
        check(rep["removed_weights"] >= want and os.path.getsize(out) < os.path.getsize(base) - 4 * want + 64 * 40,
              f"--prune {label}: removed {rep['removed_weights']} >= {want:.0f} weights, file "
              f"{os.path.getsize(out)} of {os.path.getsize(base)} bytes; groups "
              + ", ".join(f"{g['name'].replace('layers.', 'l')} {g['kept']}/{g['units']}" for g in rep["groups"])
              + (f"; vocabulary rows {vocab}" if vocab else ""))
        if vocab:
            check(vocab == len(SPECIALS) + N_WORDS - 2, f"--prune-scope vocab drops <PAD> and <BOS>: {vocab} rows")
        rc, outp, err = run([args.run, "ppl", "-m", out, "--file", p["calib"], "--kld-ref", base, "--json"])
        ok = rc == 0 and np.isfinite(json.loads(outp)["ppl"])
        check(ok, f"--prune {label}: runs, " + (f"kld vs unpruned {json.loads(outp)['kld']:.4f}" if ok else why(rc, err)))

    bad = [p["ck"], "-o", os.path.join(w, "bad.itl"), "--tokenizer", p["tok"]]
    expect_error(args, "--prune 1.5 (out of range)", bad + ["--prune", "1.5"], codes=(1, 2))
    expect_error(args, "--prune-scope moe,attn", bad + ["--prune", "0.2", "--prune-scope", "moe,attn"])
    expect_error(args, "--prune-importance taylor without --calib", bad + ["--prune", "0.2", "--prune-importance", "taylor"])
    expect_error(args, "--prune-importance foo", bad + ["--prune", "0.2", "--prune-importance", "foo"], codes=(1, 2))
    expect_error(args, "--prune 0.95 --prune-scope ffn (more than a group may lose)",
                 bad + ["--prune", "0.95", "--prune-scope", "ffn"])


def main():
    args = tool_args(__doc__.split("\n")[0])
    w = tempfile.mkdtemp(prefix="prune-", dir=args.workdir)
    torch.set_num_threads(1)
    model, p = train(w)
    try:
        prune_option(args, w, p)
        torch_prune_layout(args, w, model, p)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        check(False, f"stopped: {type(e).__name__}: {e}")
    finish(w)


if __name__ == "__main__":
    main()

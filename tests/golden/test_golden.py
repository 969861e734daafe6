#!/usr/bin/python3
"""Golden tests: itera-convert + itera-run against the PyTorch reference.

usage: /usr/bin/python3 tests/golden/test_golden.py --convert build/itera-convert \
           --run build/itera-run --reference build/tests/reference_logits --workdir DIR

Logits are checked twice, from the same .itl file: `itera-run logits` (the fast forward) and
`reference_logits` (tests/reference_logits.cpp: the C++ reference forward made of ref:: ops,
runtime/reference_forward.h), each against PyTorch within the same tolerance.

1. make_golden.py writes seeded random models (five checkpoint layouts) into DIR/golden; each
   is converted and its logits (max |d| <= 1e-4) and greedy ids (identical, past
   max_seq_length) are compared with the reference. Case a is also converted with --dtype fp16
   (logits within 2e-2).
2. When the upstream release is present ($ITERA_UPSTREAM_DIR, default /work/shared/upstream):
   micro distilled, int4 (pickled config object), int8 (dequantized) and the expert-less mixed
   checkpoint (refused, then accepted with --moe-empty identity) against the reference loaded
   with the same weights.
Prints one line per check and `N passed, N failed`; exits 1 on any failure.
"""
import json
import math
import os
import re
import shutil
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, ".."))

import torch  # noqa: E402

from itera_lite import IteraLite  # noqa: E402
from testlib import check, finish, run, tool_args, why  # noqa: E402

TOL_FP32, TOL_FP16 = 1e-4, 2e-2


def max_abs_diff(got, want):
    """Max |got - want| over two [L][V] nested lists; None when the shapes differ."""
    if len(got) != len(want) or any(len(g) != len(w) for g, w in zip(got, want)):
        return None
    return max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w))


def shape(rows):
    return f"[{len(rows)}x{len(rows[0]) if rows else 0}]"


# The two programs that print logits: the fast forward, and the C++ reference forward.
FORWARDS = ("itera-run", "reference forward")


def runtime_logits(args, itl, ids, with_vocab_ids=False, forward="itera-run"):
    """The logits rows; with_vocab_ids: (rows, the "vocab_ids" column ids or None)."""
    ids_arg = ",".join(map(str, ids))
    rc, out, err = run([args.run, "logits", "-m", itl, "--ids", ids_arg] if forward == "itera-run"
                       else [args.reference, itl, ids_arg])
    if rc != 0:
        return None, why(rc, err)
    try:
        parsed = json.loads(out)
        logits = parsed["logits"]
        return ((logits, parsed.get("vocab_ids")) if with_vocab_ids else logits), ""
    except (ValueError, KeyError, TypeError) as e:
        return None, f"(unparsable output: {e}: {out[:200]!r})"


def runtime_greedy(args, itl, prompt, n):
    rc, out, err = run([args.run, "generate", "-m", itl, "--ids", ",".join(map(str, prompt)),
                        "-n", str(n), "--greedy", "--print-ids"])
    if rc != 0:
        return None, why(rc, err)
    try:
        return [int(t) for t in out.split()], ""
    except ValueError:
        return None, f"(unparsable output {out[:200]!r})"


def check_logits(label, args, itl, ids, want, tol):
    """Each forward's logits against want; returns itera-run's (None when it failed)."""
    fast = None
    for forward in FORWARDS:
        got, err = runtime_logits(args, itl, ids, forward=forward)
        if got is None:
            check(False, f"{label}: {forward} logits {err}")
            continue
        d = max_abs_diff(got, want)
        if d is None:
            check(False, f"{label}: {forward} logits shape {shape(got)}, expected {shape(want)}")
            continue
        check(d <= tol, f"{label}: {forward} logits max |d| {d:.1e} <= {tol:g}")
        fast = got if forward == "itera-run" else fast
    return fast


def check_greedy(label, args, itl, prompt, want):
    got, err = runtime_greedy(args, itl, prompt, len(want))
    if got is None:
        return check(False, f"{label}: greedy {err}")
    if got == want:
        return check(True, f"{label}: greedy {len(want)} ids (prompt {len(prompt)}) identical")
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return check(False, f"{label}: greedy ids differ at {first} (got {got[first:first + 5]}, "
                        f"want {want[first:first + 5]}; {len(got)} vs {len(want)} ids)")


def convert(label, args, src, dst, extra, cwd=None):
    rc, _, err = run([args.convert, src, "-o", dst] + extra, cwd=cwd)
    return check(rc == 0 and os.path.isfile(os.path.join(cwd or "", dst)),
                 f"{label}: convert {' '.join(extra) or '(no options)'}" + ("" if rc == 0 else " " + why(rc, err)))


def golden_cases(args):
    out = os.path.join(args.workdir, "golden")
    shutil.rmtree(out, ignore_errors=True)  # no stale case from an earlier run
    rc, stdout, err = run([sys.executable, os.path.join(HERE, "make_golden.py"), out])
    if not check(rc == 0, "make_golden: cases written" + ("" if rc == 0 else " " + why(rc, err))):
        return
    print(stdout.strip())
    for case in sorted(os.listdir(out)):
        d = os.path.join(out, case)
        with open(os.path.join(d, "expected.json")) as f:
            exp = json.load(f)
        label = f"golden {case}"
        if not convert(label, args, "model.pt", "model.itl", exp["convert_args"], cwd=d):
            continue
        itl = os.path.join(d, "model.itl")
        check_logits(label, args, itl, exp["ids"], exp["logits"], TOL_FP32)
        check_greedy(label, args, itl, exp["greedy_prompt"], exp["greedy_ids"])
        if case == "a":  # the reference program refuses an id past the vocabulary as itera-run does
            rc, _, err = run([args.reference, itl, f"0,{len(exp['logits'][0])}"])
            lines = err.strip().splitlines()
            check(rc == 1 and len(lines) == 1 and "not in the model's vocabulary" in lines[0],
                  f"{label}: reference_logits with an unknown id: exit {rc}, {lines}")
            if convert(label + " fp16", args, "model.pt", "model_fp16.itl",
                       exp["convert_args"] + ["--dtype", "fp16"], cwd=d):
                check_logits(label + " fp16", args, os.path.join(d, "model_fp16.itl"),
                             exp["ids"], exp["logits"], TOL_FP16)


# ---- upstream release -------------------------------------------------------------------------

def torch_load(path):
    """torch.load with a stand-in for upstream's `models.config.IteraLiteConfig` (pickled in the
    int4 checkpoint); Debian's torch 1.13 ignores pickle_module, so it goes into sys.modules."""
    if "models.config" not in sys.modules:
        models, config = types.ModuleType("models"), types.ModuleType("models.config")
        config.IteraLiteConfig = type("IteraLiteConfig", (), {"__module__": "models.config"})
        models.config = config
        sys.modules.update({"models": models, "models.config": config})
    return torch.load(path, map_location="cpu")


def dequantize(state):
    """torch dynamic-INT8 Linear entries -> `<m>.weight` (s * q) and `<m>.bias`."""
    out, suffix = {}, "._packed_params._packed_params"
    for k, v in state.items():
        if k.endswith(suffix):
            m = k[: -len(suffix)]
            out[m + ".weight"] = v[0].dequantize()
            if v[1] is not None:
                out[m + ".bias"] = v[1].detach()
        elif k.endswith("._packed_params.dtype"):
            continue
        elif k.endswith((".scale", ".zero_point")) and k.rsplit(".", 1)[0] + suffix in state:
            continue  # output qparams of the quantized Linear, unused by dynamic quantization
        else:
            out[k] = v
    return out


def infer_config(state):
    """Upstream config from tensor shapes (top_k 2 as in every upstream config)."""
    V, H = state["embedding.weight"].shape
    n = 0
    while f"layers.{n}.ssm.in_proj.weight" in state:
        n += 1
    moe = [i for i in range(n) if f"layers.{i}.moe.layer.router.gate.weight" in state]
    E = state[f"layers.{moe[0]}.moe.layer.router.gate.weight"].shape[0] if moe else 0
    F = (state[f"layers.{moe[0]}.moe.layer.experts.0.w1.weight"].shape[0] if E else
         state["layers.0.moe.ffn.w1.weight"].shape[0])
    dense = [i for i in range(n) if i not in moe]
    cfg = {"vocab_size": V, "hidden_size": H, "num_layers": n,
           "ssm_state_size": state["layers.0.ssm.ssm.A_log"].shape[0],
           "ssm_conv_kernel": state["layers.0.ssm.conv1d.weight"].shape[2],
           "ssm_expand_factor": state["layers.0.ssm.in_proj.weight"].shape[0] // (2 * H),
           "num_experts": E, "expert_size": F, "top_k_experts": 2, "moe_layers": moe,
           "max_seq_length": state["position_embedding.weight"].shape[0]}
    if dense:
        cfg["ffn_size"] = state[f"layers.{dense[0]}.moe.ffn.w1.weight"].shape[0]
    return cfg


def reference_model(state, identity_moe=False):
    state = {k: v.float() for k, v in state.items()}
    tied = torch.equal(state["lm_head.weight"], state["embedding.weight"])
    cfg = infer_config(state)
    model = IteraLite(cfg, tied=tied)
    model.load_state_dict(state, strict=True)
    if identity_moe:  # expert-less MoE layers pass the residual through unchanged
        for i in cfg["moe_layers"]:
            model.layers[i].moe = torch.nn.Identity()
    return model.eval()


def reference_from_checkpoint(path):
    """The reference model with a checkpoint's weights and its config's top_k_experts (default 2,
    as itera-convert takes it)."""
    obj = torch_load(path)
    model = reference_model(obj.get("model_state_dict", obj))
    config = obj.get("config")
    top_k = config.get("top_k_experts", 2) if isinstance(config, dict) else 2
    for layer in model.layers:
        if hasattr(layer.moe, "layer"):
            layer.moe.layer.top_k = top_k
    return model


def encode(tokenizer_path, text):
    with open(tokenizer_path) as f:
        t = json.load(f)
    if t.get("level") == "char":
        return [t["token2id"].get(c, 1) for c in text]
    table = t.get("token_to_id") or t["token2id"]
    return [table.get(w, 1) for w in text.lower().split()]


@torch.no_grad()
def reference_ppl(model, ids, n):
    """exp(mean NLL), upstream's windows (upstream.md 6.2): ids[n*w : n*w+n] from zero state,
    every position but the text's last scored against the token after it."""
    starts = list(range(0, len(ids) - 1, n))
    full = [s for s in starts if s + n <= len(ids)]
    groups = ([full] if full else []) + [[s] for s in starts if s + n > len(ids)]
    nll, scored = 0.0, 0
    for group in groups:
        length = min(n, len(ids) - group[0])
        logp = torch.log_softmax(model(torch.tensor([ids[s:s + length] for s in group])).double(), -1)
        for b, s in enumerate(group):
            t = torch.arange(min(length, len(ids) - 1 - s))
            nll -= float(logp[b, t, torch.tensor(ids)[s + 1 + t]].sum())
            scored += len(t)
    return math.exp(nll / scored), scored


def check_ppl(label, args, itl, model, tok, text_path, published):
    with open(text_path) as f:
        ids = encode(tok, f.read())
    want, scored = reference_ppl(model, ids, model.cfg["max_seq_length"])
    name = os.path.basename(text_path)
    check(abs(want - published) <= 1e-4 * published,
          f"{label}: reference ppl of {name} {want:.6g} = upstream.md 6.2 {published}")
    rc, out, err = run([args.run, "ppl", "-m", itl, "--file", text_path, "--json"])
    try:
        got = json.loads(out)
        rel = abs(got["ppl"] - want) / want
        unk = sum(i == 1 for i in ids) / len(ids)
        check(rel <= 1e-4 and got["tokens"] == len(ids) and abs(got["unk_fraction"] - unk) <= 1e-6,
              f"{label}: ppl of {name} {got['ppl']:.6g} (rel {rel:.1e} <= 1e-4), tokens {got['tokens']} "
              f"(want {len(ids)}), unk_fraction {got['unk_fraction']:.4f} (want {unk:.4f})")
    except (ValueError, KeyError, TypeError):
        check(False, f"{label}: ppl of {name} {why(rc, err)} {out[:100]!r}")


def upstream(args):
    root = os.environ.get("ITERA_UPSTREAM_DIR", "/work/shared/upstream")
    if not os.path.isdir(root):
        print(f"upstream: {root} not found, upstream checks skipped")
        return
    ck, data = os.path.join(root, "checkpoints"), os.path.join(root, "data")
    tok_word, tok_char = os.path.join(data, "tokenizer_2000.json"), os.path.join(data, "tokenizer_tiny.json")
    out = os.path.join(args.workdir, "upstream")
    os.makedirs(out, exist_ok=True)
    prompt = "once upon a time"
    models = [  # label, checkpoint, tokenizer, state loader, extra options
        ("micro", "distilled/itera_lite_micro_distilled.pt", tok_word, lambda o: o["model_state_dict"], []),
        ("int4", "int4/itera_lite_int4.pt", tok_word, lambda o: o["model_state_dict"], []),
        ("int8", "quantized/itera_lite_tiny_int8.pt", tok_word, dequantize, []),
        ("mixed", "mixed_precision/itera_lite_mixed_precision.pt", tok_char,
         lambda o: o["model_state_dict"], ["--moe-empty", "identity"]),
    ]
    torch.set_num_threads(2)
    for label, rel, tok, load_state, extra in models:
        label = "upstream " + label
        pt, itl = os.path.join(ck, rel), os.path.join(out, label.split()[1] + ".itl")
        if not os.path.isfile(pt):
            print(f"{label}: {pt} not found, skipped")
            continue
        if extra:  # the mixed checkpoint lost its experts: refused unless told what to do
            rc, _, err = run([args.convert, pt, "-o", itl, "--tokenizer", tok])
            lines = err.strip().splitlines()
            check(rc == 1 and len(lines) == 1 and lines[0].startswith("error:")
                  and re.search(r"\b0 experts?\b", lines[0]) is not None,
                  f"{label}: refused without --moe-empty ({lines[0] if len(lines) == 1 else why(rc, err)})")
        # Untrimmed: exactly upstream's vocabulary, so logits, greedy ids and ppl compare 1:1.
        if not convert(label, args, pt, itl, ["--tokenizer", tok, "--no-trim-vocab"] + extra):
            continue
        ids = encode(tok, prompt)
        with torch.no_grad():
            model = reference_model(load_state(torch_load(pt)), identity_moe=bool(extra))
            want = model(torch.tensor([ids]))[0]
            greedy = model.generate_greedy(ids, 50)
        got = check_logits(f"{label}: {prompt!r} {ids}", args, itl, ids, want.tolist(), TOL_FP32)
        if got is None:
            continue
        if label == "upstream micro":  # upstream.md 6.3: measured with upstream's own code
            top5_ref = torch.topk(want[-1], 5).indices.tolist()
            top5 = torch.topk(torch.tensor(got[-1]), 5).indices.tolist()
            check(top5_ref == [44, 35, 34, 40, 13] and top5 == top5_ref,
                  f"{label}: last-position top-5 runtime {top5}, reference {top5_ref}, "
                  f"upstream.md [44, 35, 34, 40, 13]")
        check_greedy(label, args, itl, ids, greedy)
        check_trimmed(label, args, pt, itl[:-4] + "-trimmed.itl", tok, extra, ids, want)
        if label == "upstream micro":
            check_ppl(label, args, itl, model, tok, os.path.join(data, "datasets", "wikitext2_test.txt"), 8142.99)


def check_trimmed(label, args, pt, itl, tok, extra, ids, want):
    """Vocabulary trimming (the default with a tokenizer) keeps the rows the tokenizer can produce:
    the logits are the reference's columns for those ids, listed in "vocab_ids"."""
    if not convert(label + " trimmed", args, pt, itl, ["--tokenizer", tok] + extra):
        return
    n_tokens = len(json.load(open(tok, encoding="utf-8")).get("id_to_token") or
                   json.load(open(tok, encoding="utf-8"))["id2token"])
    for forward in FORWARDS:
        got, err = runtime_logits(args, itl, ids, with_vocab_ids=True, forward=forward)
        if got is None:
            check(False, f"{label} trimmed: {forward} logits {err}")
            continue
        logits, vocab_ids = got
        if vocab_ids != list(range(n_tokens)):
            check(False, f"{label} trimmed: {forward} vocab_ids {str(vocab_ids)[:80]}, expected 0..{n_tokens - 1}")
            continue
        d = max_abs_diff(logits, want[:, vocab_ids].tolist())
        check(d is not None and d <= TOL_FP32,
              f"{label} trimmed to {n_tokens} of {want.shape[1]} rows: {forward} logits = reference columns, "
              f"max |d| {d if d is None else f'{d:.1e}'} <= {TOL_FP32:g}")


def main():
    args = tool_args(__doc__.split("\n")[0], programs=("reference",))
    golden_cases(args)
    upstream(args)
    finish()


if __name__ == "__main__":
    main()

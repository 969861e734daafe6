#!/usr/bin/python3
"""Smoke test of bench/compare.py (docs/bench.md); no timing is asserted.

usage: /usr/bin/python3 tests/cli/test_bench.py --convert build/itera-convert \
           --bench build/itera-bench --workdir DIR

Makes a small random Itera-Lite checkpoint and word tokenizer with the PyTorch reference (hidden
32, 2 layers: dense FFN then MoE, untied head, 64 rows of which the tokenizer produces 40), runs
compare.py on it with few tokens and one round, and checks: exit 0; every recurrent path passed
its check against the full forward (max |d| printed) and reproduced the greedy ids; every path
has its row in both tables; the --json figures, itera-bench's contract keys included, are > 0;
a bad --tokens is one `error:` line and exit 1; so is itera-bench on a missing or truncated model (a
usage error exits 2). Prints one line per check and `N passed, N failed`.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, ".."))

import torch  # noqa: E402

from itera_lite import IteraLite  # noqa: E402
from testlib import check, finish, run, why  # noqa: E402

COMPARE = os.path.join(HERE, "..", "..", "bench", "compare.py")
CFG = {"vocab_size": 64, "hidden_size": 32, "num_layers": 2, "ssm_state_size": 6, "ssm_conv_kernel": 4,
       "ssm_expand_factor": 2, "num_experts": 4, "expert_size": 32, "top_k_experts": 2, "moe_layers": [1],
       "max_seq_length": 128}
DECODE = ["PyTorch full re-forward (upstream generate)", "PyTorch recurrent step, eager modules",
          "PyTorch flat recurrent decoder, eager", "TorchScript flat recurrent decoder",
          "Itera fp32 (itera-bench)", "Itera q4 trimmed (itera-bench)"]
CONTRACT = ["decode_tok_s", "prefill_ms_128", "batch_tok_s", "load_ms", "peak_rss_kb"]  # itera-bench --json
PREFILL = ["PyTorch full forward", "TorchScript flat recurrent decoder, 128 steps",
           "Itera fp32 (itera-bench)", "Itera q4 trimmed (itera-bench)"]


def fixture(workdir):
    torch.manual_seed(7)
    model = IteraLite(CFG, tied=False)
    pt, tok = os.path.join(workdir, "model.pt"), os.path.join(workdir, "tokenizer.json")
    torch.save({"model_state_dict": model.state_dict(), "config": CFG}, pt)
    tokens = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"] + [f"w{i}" for i in range(36)]
    with open(tok, "w") as f:
        json.dump({"vocab_size": len(tokens), "token_to_id": {t: i for i, t in enumerate(tokens)},
                   "id_to_token": {str(i): t for i, t in enumerate(tokens)}}, f)
    return pt, tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("--convert", "--bench", "--workdir"):
        ap.add_argument(name, required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    pt, tok = fixture(args.workdir)
    report = os.path.join(args.workdir, "compare.json")
    base = ["/usr/bin/python3", COMPARE, "--checkpoint", pt, "--tokenizer", tok, "--itera-bench",
            os.path.abspath(args.bench), "--itera-convert", os.path.abspath(args.convert)]

    rc, out, err = run(base + ["--tokens", "8", "--repeats", "1", "--json", report], timeout=120)
    if not check(rc == 0, "compare.py on a 2-layer fixture, 8 tokens, 1 round: exit 0" + ("" if rc == 0 else
                                                                                        " " + why(rc, err))):
        print(out[-2000:])
        finish()
    lines = out.splitlines()
    checks = [line for line in lines if line.startswith("check:")]
    check(len(checks) >= 6 and all(line.endswith(" OK") for line in checks) and
          sum("max |d|" in line for line in checks) >= 3,
          f"{len(checks)} path checks printed, all OK, each recurrent path's max |d| against the full forward")
    decode_at = next((i for i, line in enumerate(lines) if line.startswith("decode")), len(lines))
    sample_at = next((i for i, line in enumerate(lines) if line.startswith("a sample")), len(lines))
    for label in DECODE:
        check(any(line.startswith(label) for line in lines[decode_at:sample_at]), f"decode row {label!r} printed")
    for label in PREFILL:
        check(any(line.startswith(label) for line in lines[sample_at:]), f"sample row {label!r} printed")
    try:
        with open(report) as f:
            r = json.load(f)
        figures = list(r["decode_tok_s"].values()) + list(r["prefill_ms"].values())
        figures += [run[key] for it in r["itera"].values() for run in it["runs"] for key in CONTRACT]
        check(len(r["decode_tok_s"]) >= 4 and len(r["itera"]) == 2 and all(x > 0 for x in figures) and
              all(c["ok"] for c in r["checks"]),
              f"--json: {len(r['decode_tok_s'])} PyTorch decode paths, {len(r['itera'])} Itera files with "
              f"{', '.join(CONTRACT)}; {len(figures)} figures, all > 0; checks all ok")
    except (OSError, ValueError, KeyError, TypeError) as e:
        check(False, f"--json {report}: missing or unreadable ({e!r})")

    rc, _, err = run(base + ["--tokens", "200"])
    lines = err.strip().splitlines()
    check(rc == 1 and len(lines) == 1 and lines[0].startswith("error:"),
          f"--tokens 200 on max_seq_length 128: exit {rc}, {lines[-1] if lines else 'no message'!r}")

    # itera-bench itself on bad input: one error line, exit 1 (2 for a usage error).
    itl = os.path.join(args.workdir, "fixture.itl")
    rc, _, err = run([args.convert, pt, "-o", itl])
    if check(rc == 0, "fixture converted for itera-bench" + ("" if rc == 0 else " " + why(rc, err))):
        truncated = os.path.join(args.workdir, "truncated.itl")
        with open(itl, "rb") as f, open(truncated, "wb") as g:
            g.write(f.read(100))
        for label, extra, want in (("a missing model", ["-m", os.path.join(args.workdir, "none.itl")], 1),
                                   ("a truncated model", ["-m", truncated], 1),
                                   ("--kernels bogus", ["-m", itl, "--kernels", "bogus"], 2),
                                   ("--batch 0", ["-m", itl, "--batch", "0"], 2),
                                   ("--peak-gflops nan", ["-m", itl, "--peak-gflops", "nan"], 2)):
            rc, out, err = run([args.bench] + extra)
            lines = err.strip().splitlines()
            check(rc == want and len(lines) == 1 and lines[0].startswith("error:") and not out,
                  f"itera-bench with {label}: exit {rc} (want {want}), {lines[-1] if lines else 'no message'!r}")
    finish()


if __name__ == "__main__":
    main()

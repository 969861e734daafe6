#!/usr/bin/python3
"""Checks the parts of models/distill.py (and the models/recover.py rounding it reuses) that run in
seconds; training itself is not a test.

usage: /usr/bin/python3 tests/cli/test_distill.py --convert build/itera-convert \
           --run build/itera-run --workdir DIR

1. Fake quantization is the converter's rounding: a student (the KJV tokenizer's 3,000 words,
   hidden 64, SSM inner 48 and FFN width 40, so rows of 40, 48 and 64 columns pad their last
   block) with random weights of mixed scales (and outliers) is converted with round-to-nearest
   to each block format (`--quant DTYPE --layout row_major`, no --calib); every stored block,
   decoded here from the file's bytes (docs/format.md), equals recover.fake_quant of the weights
   exactly, and the element-wise fp16 tensors equal fp16 rounding. (distill.py saves the weights
   before rounding for this reason: q3's scale search is not idempotent, so a checkpoint of
   already rounded q3 weights would be stored rounded again, a little off.)
2. Budget arithmetic: for plain and `lowbit` plans, distill.tensor_bytes equals every tensor's
   bytes in `itera-run info`, and distill.file_bytes is at least the file's size and at most
   256 bytes above it (the compressed metadata is estimated).
3. The distillation loss: with the teacher's whole distribution as its "top-k", the KD term equals
   KL(teacher || student) plus the teacher's entropy; the CE term leaves `<UNK>` targets out; with
   the teacher's top-8 and alpha 0, 0.7 and 1 the loss and its written-out gradient equal the same
   loss through autograd's log_softmax / gather / log1p / nll_loss.
Prints one line per check and `N passed, N failed`; exits 1 on any failure.
"""
import json
import math
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "models"))
sys.path.insert(0, os.path.join(HERE, ".."))

import distill as D  # noqa: E402
import recover as R  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from testlib import check, finish, run, tool_args, why  # noqa: E402

TOKENIZER = os.path.join(ROOT, "models", "tokenizer_kjv.json")


def student(seed, hidden=64, layers=2, inner=48, state=8, ffn=40):
    cfg = D.student_config({"vocab_size": 3000, "ssm_conv_kernel": 4, "max_seq_length": 128}, hidden, layers, inner,
                           state, ffn)
    torch.manual_seed(seed)
    model = D.build_student(cfg)
    with torch.no_grad():
        for p in model.parameters():  # rows of different scales, some with an outlier
            p.mul_(torch.exp(torch.randn(p.shape[0], *([1] * (p.dim() - 1)))))
            if p.dim() == 2:
                p[::7, 0] *= 20
    return cfg, model


def decode_blocks(dtype, raw, rows, cols):
    """The values of a row-major block tensor, in float32 as recover.fake_quant computes them."""
    B, size = R.BLOCK[dtype], D.BLOCK_BYTES[dtype]
    nb = -(-cols // B)
    out = torch.zeros(rows, nb * B)
    for r in range(rows):
        for b in range(nb):
            blk = raw[(r * nb + b) * size:(r * nb + b + 1) * size]
            d = torch.tensor(struct.unpack_from("<e", blk)[0], dtype=torch.float32)
            if dtype == "q8":
                n = torch.tensor(struct.unpack_from("<32b", blk, 2), dtype=torch.float32)
                v = d * n
            elif dtype == "q4":
                n = torch.tensor([blk[2 + i % 16] >> (4 * (i // 16)) & 15 for i in range(32)], dtype=torch.float32)
                v = d * (n - 8)
            elif dtype == "nf4":
                v = d * R.NF4[[blk[2 + i % 32] >> (4 * (i // 32)) & 15 for i in range(64)]]
            elif dtype == "q3":
                hi = struct.unpack_from("<I", blk, 10)[0]
                n = torch.tensor([(blk[2 + i % 8] >> (2 * (i // 8)) & 3) | (hi >> i & 1) << 2 for i in range(32)],
                                 dtype=torch.float32)
                v = d * (n - 4)
            else:  # q2
                n = torch.tensor([blk[2 + i % 16] >> (2 * (i // 16)) & 3 for i in range(64)], dtype=torch.float32)
                v = d * (n - 1.5)
            out[r, b * B:(b + 1) * B] = v
    return out[:, :cols]


def stored_tensors(args, itl):
    """name -> (dtype, shape, bytes) from `itera-run info --json`, the bytes read from the file
    (tensors in listed order, each 64-aligned in the data region)."""
    rc, out, err = run([args.run, "info", "-m", itl, "--json"])
    if rc != 0:
        raise SystemExit(f"itera-run info failed {why(rc, err)}")
    data = open(itl, "rb").read()
    offset = struct.unpack_from("<Q", data, 32)[0]
    tensors = {}
    for t in json.loads(out)["tensors"]:
        tensors[t["name"]] = (t["dtype"], t["shape"], data[offset:offset + t["bytes"]])
        offset += D.align64(t["bytes"])
    return tensors


def fake_quant_is_the_converters(args):
    for dtype in ("q8", "q4", "nf4", "q3", "q2"):
        cfg, model = student(1)
        ck, itl = os.path.join(args.workdir, f"{dtype}.pt"), os.path.join(args.workdir, f"{dtype}.itl")
        torch.save({"model_state_dict": model.state_dict(), "config": cfg}, ck)
        rc, _, err = run([args.convert, ck, "-o", itl, "--tokenizer", TOKENIZER, "--quant", dtype, "--layout",
                          "row_major"])
        if not check(rc == 0, f"{dtype}: the student converts"):
            print(why(rc, err))
            continue
        stored = stored_tensors(args, itl)
        blocks = elementwise = bad = 0
        for name, p in model.state_dict().items():
            if name not in stored:
                continue
            sdtype, shape, raw = stored[name]
            want = R.fake_quant(p, sdtype)
            want = want.reshape(-1, p.shape[-1]) if p.dim() > 1 else want.reshape(1, -1)
            if sdtype == "fp32":
                got = torch.tensor(struct.unpack(f"<{p.numel()}f", raw)).reshape(want.shape)
            elif sdtype == "fp16":
                got = torch.tensor(struct.unpack(f"<{p.numel()}e", raw), dtype=torch.float32).reshape(want.shape)
                elementwise += 1
            else:
                got = decode_blocks(sdtype, raw, want.shape[0], want.shape[1])
                blocks += 1
            if not torch.equal(got, want):
                bad += 1
                print(f"  {name} ({sdtype}): max abs difference {(got - want).abs().max().item():.3g}")
        check(bad == 0 and blocks >= 10 and elementwise >= 4,
              f"{dtype}: all {blocks} block tensors and {elementwise} fp16 tensors in the file equal "
              f"recover.fake_quant's rounding exactly ({bad} differ)")


def budget_arithmetic(args):
    plans = [("q2", []), ("lowbit", []), ("q4", [("embedding.weight", "q3")])]
    configs = [dict(hidden=32, layers=2, inner=64, ffn=64), dict(hidden=64, layers=1, inner=32, state=4, ffn=32),
               dict(hidden=64, layers=3, inner=48, ffn=40)]
    for i, (kw, (quant, keep)) in enumerate(zip(configs, plans)):
        cfg, model = student(2 + i, **kw)
        if quant == "lowbit":
            quant, keep = "q2", D.lowbit_keep(model)
        predicted, data = D.file_bytes(model, quant, keep)
        ck, itl = os.path.join(args.workdir, f"plan{i}.pt"), os.path.join(args.workdir, f"plan{i}.itl")
        torch.save({"model_state_dict": model.state_dict(), "config": cfg}, ck)
        cmd = [args.convert, ck, "-o", itl, "--tokenizer", TOKENIZER, "--quant", quant]
        for name, dtype in keep:
            cmd += ["--keep", f"{name}={dtype}"]
        rc, _, err = run(cmd)
        if not check(rc == 0, f"plan {i} converts"):
            print(why(rc, err))
            continue
        stored = stored_tensors(args, itl)
        mine = {n: (d, D.tensor_bytes(d, s)) for n, s, d in D.stored_tensors(model, quant, keep)}
        theirs = {n: (d, len(raw)) for n, (d, _, raw) in stored.items()}
        size = os.path.getsize(itl)
        check(mine == theirs, f"plan {i} ({quant}, {len(keep)} --keep rules): the dtype and bytes of all "
                              f"{len(theirs)} tensors as predicted")
        check(size <= predicted <= size + 256,
              f"plan {i}: predicted file {predicted} bytes, written {size} (at most 256 above)")


def reference_loss(logits, targets, t_logp, t_ids, alpha):
    """distill.DistillLoss through autograd's own operations."""
    V = logits.shape[-1]
    logp = F.log_softmax(logits.reshape(-1, V), dim=-1)
    t_p = t_logp.reshape(-1, t_logp.shape[-1]).float().exp()
    s_top = logp.gather(1, t_ids.reshape(-1, t_ids.shape[-1]).long())
    rest = (1 - t_p.sum(1)).clamp(min=0)
    kd = -((t_p * s_top).sum(1) + rest * torch.log1p(-s_top.exp().sum(1))).mean()
    ce = F.nll_loss(logp, targets.reshape(-1), ignore_index=1)
    return alpha * kd + (1 - alpha) * ce


def loss_terms():
    torch.manual_seed(3)
    V = 50
    logits, t_logits = (torch.randn(2, 5, V) * 3).requires_grad_(), torch.randn(2, 5, V) * 3
    targets = torch.randint(0, V, (2, 5))
    targets[0, 0] = 1  # an <UNK> target
    t_logp = F.log_softmax(t_logits, -1)
    t_top, t_ids = t_logp.topk(V, dim=-1)
    _, kd, ce = D.distill_loss(logits, targets, t_top, t_ids, 1.0)
    kl = F.kl_div(F.log_softmax(logits, -1).reshape(-1, V), t_logp.reshape(-1, V), log_target=True,
                  reduction="batchmean")
    entropy = -(t_logp.exp() * t_logp).sum(-1).mean()
    check(abs(kd.item() - (kl + entropy).item()) < 1e-4,
          f"KD term with the whole teacher distribution {kd.item():.6f} = KL + teacher entropy "
          f"{(kl + entropy).item():.6f}")
    want = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=1)
    check(abs(ce.item() - want.item()) < 1e-5,
          f"CE term is the cross-entropy without <UNK> targets ({ce.item():.6f} vs {want.item():.6f})")
    top, ids = t_top[..., :8].half(), t_ids[..., :8].short()
    for alpha in (0.0, 0.7, 1.0):
        loss, _, _ = D.distill_loss(logits, targets, top, ids, alpha)
        (grad,) = torch.autograd.grad(loss, logits)
        want = reference_loss(logits, targets, top, ids, alpha)
        (want_grad,) = torch.autograd.grad(want, logits)
        err = (grad - want_grad).abs().max().item()
        check(abs(loss.item() - want.item()) < 1e-5 and err < 1e-6,
              f"alpha {alpha}, teacher top-8: loss {loss.item():.6f} and its written-out gradient match autograd "
              f"({want.item():.6f}, max gradient difference {err:.2g})")


def main():
    args = tool_args(__doc__.split("\n")[0])
    torch.set_num_threads(1)
    fake_quant_is_the_converters(args)
    budget_arithmetic(args)
    loss_terms()
    finish(args.workdir)


if __name__ == "__main__":
    main()

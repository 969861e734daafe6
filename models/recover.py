#!/usr/bin/python3
"""Recover the quality lost to structured pruning and quantization by fine-tuning in PyTorch.

1. Prune: replay the units itera-convert chose (`--prune ... --report R.json`, the "keep" lists of
   its "pruning" groups) on the checkpoint's state dict, giving physically smaller tensors.
2. Fake-quantize (QAT): every step runs forward and backward with each matrix rounded to the
   block grid itera-convert will store it in (`--quant`, `--keep`: the converter's policy and
   format/quant_blocks.cpp's rounding), and applies the gradient to the unrounded weights
   (straight-through estimator).
3. Fine-tune on the KJV training text with the shipped model's objective and data loading
   (models/train.py: windows of 128, `<UNK>` targets left out, AdamW).
4. Write `{'model_state_dict', 'config'}` holding the weights before rounding, a checkpoint
   itera-convert accepts; converting it with the same --quant (round-to-nearest) stores exactly
   the values the last step trained with. (Not the rounded weights: q3's scale search is not
   idempotent, so rounded q3 weights would be rounded again and move.)

Usage (corpus from models/make_corpus.py; OpenBLAS as in models/README.md makes it ~8x faster):
  itera-convert models/itera_lite_kjv.pt -o /tmp/p.itl --tokenizer models/tokenizer_kjv.json \\
      --prune 0.5 --calib CALIB.txt --report /tmp/p.json
  /usr/bin/python3 models/recover.py /tmp/kjv --prune-report /tmp/p.json --quant q4 --steps 400 \\
      --out /tmp/recovered.pt
  itera-convert /tmp/recovered.pt -o /tmp/r.itl --tokenizer models/tokenizer_kjv.json --quant q4
Prints the held-out perplexity (reference forward, fake-quantized weights) before and after.
"""
import argparse
import fnmatch
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402  (sets OPENBLAS_NUM_THREADS before torch loads)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from itera_lite import DenseFFN, Expert, IteraLite, MoEWrapper, SSMBlock  # noqa: E402

BLOCK = {"q8": 32, "q4": 32, "nf4": 64, "q3": 32, "q2": 64}
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])


# ---- 1. pruning: the converter's plan, replayed on the state dict ---------------------------------

def keep_rows(t, idx):
    return t.index_select(0, torch.tensor(idx))


def keep_cols(t, idx):
    return t.index_select(t.dim() - 1, torch.tensor(idx))


def apply_group(sd, g):
    """converter/prune.cpp apply_pruning, for one group of the report."""
    keep, l = g["keep"], g["layer"]
    if g["kind"] == "ssm_channel":
        p = f"layers.{l}.ssm."
        inner = sd[p + "conv1d.weight"].shape[0]
        sd[p + "in_proj.weight"] = keep_rows(sd[p + "in_proj.weight"], keep + [inner + i for i in keep])
        for name in ("conv1d.weight", "conv1d.bias", "ssm.C", "ssm.D", "ssm.delta_proj.bias"):
            sd[p + name] = keep_rows(sd[p + name], keep)
        sd[p + "ssm.delta_proj.weight"] = keep_cols(keep_rows(sd[p + "ssm.delta_proj.weight"], keep), keep)
        for name in ("ssm.B", "out_proj.weight"):
            sd[p + name] = keep_cols(sd[p + name], keep)
    elif g["kind"] in ("ffn_neuron", "expert_neuron"):
        p = f"layers.{l}.moe.ffn." if g["kind"] == "ffn_neuron" else f"layers.{l}.moe.layer.experts.{g['expert']}."
        sd[p + "w1.weight"] = keep_rows(sd[p + "w1.weight"], keep)
        sd[p + "w2.weight"] = keep_cols(sd[p + "w2.weight"], keep)
    elif g["kind"] == "expert":
        m = f"layers.{l}.moe.layer."
        sd[m + "router.gate.weight"] = keep_rows(sd[m + "router.gate.weight"], keep)
        if m + "router.expert_counts" in sd:
            sd[m + "router.expert_counts"] = keep_rows(sd[m + "router.expert_counts"], keep)
        old = {k: sd.pop(k) for k in list(sd) if k.startswith(m + "experts.")}
        for new, e in enumerate(keep):
            for w in ("w1.weight", "w2.weight"):
                sd[f"{m}experts.{new}.{w}"] = old[f"{m}experts.{e}.{w}"]
    else:
        raise SystemExit(f"unknown pruning group kind {g['kind']!r}")


def residual_rms(model, data, P, windows=16):
    """RMS of each residual-stream channel over a few training windows, at every layer's input and
    at the final LayerNorm's input."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, inp: seen.append(inp[0])) for layer in model.layers]
    hooks.append(model.norm.register_forward_pre_hook(lambda m, inp: seen.append(inp[0])))
    with torch.no_grad():
        starts = torch.arange(windows) * (len(data) // windows)
        model(torch.stack([data[s:s + P] for s in starts.tolist()]))
    for h in hooks:
        h.remove()
    return torch.stack([(x ** 2).mean(dim=(0, 1)) for x in seen]).sum(0).sqrt()


def prune_hidden(sd, keep):
    """Keeps residual-stream channels `keep`: every tensor's hidden-sized dimension. Not a unit
    itera-convert removes (LayerNorm statistics change): only for fine-tuning."""
    idx = torch.tensor(keep)
    for k in list(sd):
        t = sd[k]
        if k in ("embedding.weight", "position_embedding.weight", "lm_head.weight") or k.endswith("gate.weight") \
                or k.endswith("in_proj.weight") or k.endswith("w1.weight"):
            sd[k] = t.index_select(1, idx)  # [*, H]
        elif k.endswith("out_proj.weight") or k.endswith("w2.weight"):
            sd[k] = t.index_select(0, idx)  # [H, *]
        elif (k.startswith("norm.") or ".norm." in k) and t.dim() == 1:
            sd[k] = t.index_select(0, idx)  # LayerNorm over H
    if "lm_head.weight" in sd:
        sd["lm_head.weight"] = sd["embedding.weight"]  # still tied


def model_for(sd, cfg):
    """An IteraLite whose every layer and expert takes its sizes from the state dict."""
    head, emb = sd.get("lm_head.weight"), sd["embedding.weight"]
    model = IteraLite(cfg, tied=head is None or (head.shape == emb.shape and head.data_ptr() == emb.data_ptr()))
    H = cfg["hidden_size"]
    for l, layer in enumerate(model.layers):
        p = f"layers.{l}."
        inner = sd[p + "ssm.conv1d.weight"].shape[0]
        layer.ssm = SSMBlock(H, inner, cfg["ssm_state_size"], cfg["ssm_conv_kernel"])
        m = p + "moe.layer."
        if m + "router.gate.weight" in sd:
            experts = sd[m + "router.gate.weight"].shape[0]
            layer.moe = MoEWrapper(H, experts, 1, cfg["top_k_experts"])
            for e in range(experts):
                layer.moe.layer.experts[e] = Expert(H, sd[f"{m}experts.{e}.w1.weight"].shape[0])
        else:
            layer.moe = DenseFFN(H, sd[p + "moe.ffn.w1.weight"].shape[0])
    model.load_state_dict(sd)
    return model


# ---- 2. fake quantization on the converter's grids -------------------------------------------------

def fp16(x):
    return x.half().float()


def search_scale(v, valid, base, lo, steps, code, value):
    """format/quant_blocks.cpp search_scale, per block: the fp16 scale among base * m,
    m = float((lo + 2k) / 100), with the least squared error over the block's valid elements (the
    first on ties). C++ sums a block's error element by element in float32; a vectorized sum
    rounds differently, which only matters where two candidates are within rounding of each
    other, so those blocks are summed again in the C++ loop's order."""
    ds, errs = [], []
    for k in range(steps):
        d = fp16((base * (torch.tensor(float(lo + 2 * k)) / 100.0)).clamp(-65504.0, 65504.0))  # float32 m, as C++
        safe = torch.where(d == 0, torch.ones_like(d), d)[..., None]
        err = (((v - value(safe, code(v, safe))) ** 2) * valid).sum(-1)
        ds.append(d)
        errs.append(torch.where(d == 0, torch.full_like(err, math.inf), err))
    d, err = torch.stack(ds), torch.stack(errs)  # [steps, rows, blocks]
    best = err.argmin(0)  # the first of equal minima, as C++'s strict <
    near = (err <= err.gather(0, best[None]) * (1 + 2e-5)).sum(0) > 1  # 64 float32 terms: order moves < 1e-5
    if near.any():
        vb, db = v[near], d[:, near]  # [n, B], [steps, n]
        safe = torch.where(db == 0, torch.ones_like(db), db)[..., None]
        e2 = (vb - value(safe, code(vb, safe))) ** 2 * valid.expand(v.shape)[near]  # [steps, n, B]
        seq = torch.zeros_like(db)
        for i in range(e2.shape[-1]):
            seq += e2[..., i]
        best[near] = torch.where(db == 0, torch.full_like(seq, math.inf), seq).argmin(0)
    return d.gather(0, best[None])[0]


def fake_quant(w, dtype):
    """The values itera-convert stores for w (rows along the last dimension) in `dtype`."""
    if dtype == "fp32":
        return w
    if dtype == "fp16":
        return fp16(w)
    B = BLOCK[dtype]
    rows, cols = w.reshape(-1, w.shape[-1]).shape
    nb = -(-cols // B)
    v = F.pad(w.reshape(rows, cols), (0, nb * B - cols)).reshape(rows, nb, B)
    valid = F.pad(torch.ones(cols), (0, nb * B - cols)).reshape(nb, B)
    amax = v.abs().amax(-1)
    if dtype == "q8":
        d = amax / 127.0
        x = v * torch.where(d == 0, torch.zeros_like(d), 1.0 / d)[..., None]
        half = (x - x.trunc()).abs() == 0.5  # std::lround: ties away from zero (torch.round: to even)
        q = fp16(d)[..., None] * torch.where(half, x.trunc() + x.sign(), torch.round(x))
    elif dtype == "q4":
        signed = torch.gather(v, -1, v.abs().argmax(-1, keepdim=True))[..., 0]  # largest magnitude, with sign
        d = signed / -8.0
        inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)[..., None]
        q = fp16(d)[..., None] * (torch.clamp(torch.floor(v * inv + 8.5), max=15) - 8)
    elif dtype == "nf4":
        x = v * torch.where(amax == 0, torch.zeros_like(amax), 1.0 / amax)[..., None]  # C++ multiplies by 1/amax
        q = fp16(amax)[..., None] * NF4[(x[..., None] - NF4).abs().argmin(-1)]
    elif dtype == "q3":
        signed = torch.gather(v, -1, v.abs().argmax(-1, keepdim=True))[..., 0]
        code = lambda x, d: torch.clamp(torch.round(x / d) + 4, 0, 7)  # noqa: E731
        value = lambda d, n: d * (n - 4)  # noqa: E731
        d = search_scale(v, valid, signed / -4.0, 70, 36, code, value)[..., None]
        q = torch.where(d == 0, torch.zeros_like(v), value(d, code(v, torch.where(d == 0, torch.ones_like(d), d))))
    elif dtype == "q2":
        code = lambda x, d: torch.clamp(torch.floor(x / d) + 2, 0, 3)  # noqa: E731
        value = lambda d, n: d * (n - 1.5)  # noqa: E731
        d = search_scale(v, valid, amax / 1.5, 40, 31, code, value)[..., None]
        q = torch.where(d == 0, torch.zeros_like(v), value(d, code(v, torch.where(d == 0, torch.ones_like(d), d))))
    else:
        raise SystemExit(f"unknown dtype {dtype}")
    return q.reshape(rows, nb * B)[:, :cols].reshape(w.shape)


def storage_dtype(name, rank, base, keep):
    """converter/quantize_spec.cpp choose_dtype (then --keep GLOB=dtype, later rules win)."""
    elementwise = rank < 2 or name.endswith("conv1d.weight") or name.endswith("ssm.C")
    dtype = base
    if rank < 2:
        dtype = "fp32"
    elif elementwise and base != "fp32":
        dtype = "fp16"
    elif name.endswith("ssm.B") and base in ("q4", "nf4", "q3", "q2"):
        dtype = "q8"
    for glob, want in keep:
        if fnmatch.fnmatchcase(name, glob):
            dtype = want
    return dtype


class FakeQuant:
    """Straight-through estimator by swapping: forward and backward see the rounded weights, the
    optimizer updates the unrounded ones."""

    def __init__(self, model, base, keep):
        self.params = [(p, storage_dtype(n, p.dim(), base, keep)) for n, p in model.named_parameters()]
        self.params = [(p, d) for p, d in self.params if d != "fp32"]
        self.latent = []

    def round(self):
        with torch.no_grad():
            self.latent = [p.detach().clone() for p, _ in self.params]
            for p, d in self.params:
                p.copy_(fake_quant(p, d))

    def restore(self):
        with torch.no_grad():
            for (p, _), w in zip(self.params, self.latent):
                p.copy_(w)


# ---- 3. fine-tuning ----------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", help="directory written by make_corpus.py")
    ap.add_argument("--ckpt", default=os.path.join(HERE, "itera_lite_kjv.pt"))
    ap.add_argument("--prune-report", help="itera-convert --report JSON whose 'pruning' groups to replay")
    ap.add_argument("--quant", default="fp32", choices=["fp32", "fp16", "q8", "q4", "nf4", "q3", "q2"])
    ap.add_argument("--keep", action="append", default=[], help="GLOB=dtype, as itera-convert --keep")
    ap.add_argument("--hidden", type=int, default=0,
                    help="also keep only this many residual channels (largest RMS on training text); "
                         "a recipe-only unit, the tied head follows the embedding")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-tokens", type=int, default=0, help="score only the first N held-out tokens (0: all)")
    ap.add_argument("--out", required=True, help="checkpoint to write")
    args = ap.parse_args()
    keep = [tuple(k.rsplit("=", 1)) for k in args.keep]
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    saved = torch.load(args.ckpt)
    cfg, sd = dict(saved["config"]), dict(saved["model_state_dict"])
    if args.prune_report:
        with open(args.prune_report) as f:
            for g in json.load(f).get("pruning", {}).get("groups", []):
                apply_group(sd, g)
    model = model_for(sd, cfg)

    def words(part):
        with open(os.path.join(args.corpus, part + ".txt"), encoding="utf-8") as f:
            return f.read().lower().split()

    with open(os.path.join(HERE, "tokenizer_kjv.json"), encoding="utf-8") as f:
        tok = json.load(f)
    train, held = T.encode(tok, words("train")), T.encode(tok, words("heldout"))
    if args.eval_tokens:
        held = held[:args.eval_tokens + 1]
    P = cfg["max_seq_length"]
    if args.hidden:
        rms = residual_rms(model, train, P)
        kept = sorted(torch.argsort(rms, descending=True)[:args.hidden].tolist())
        prune_hidden(sd, kept)
        cfg["hidden_size"] = args.hidden
        model = model_for(sd, cfg)
    params = sum(p.numel() for p in model.parameters())
    fq = FakeQuant(model, args.quant, keep)

    def evaluate():  # the reference per-token loop: the last window may be any length
        model.eval()
        T.use_fast_ssm(model, False)
        fq.round()
        ppl, ppl_known, n = T.perplexity(model, held, P)
        fq.restore()
        T.use_fast_ssm(model, True)
        model.train()
        return ppl, ppl_known

    before = evaluate()
    print(f"{params} parameters after pruning, --quant {args.quant}: held-out perplexity before recovery "
          f"{before[0]:.2f} ({before[1]:.2f} without <UNK> targets)", flush=True)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    t0, running = time.time(), 0.0
    model.train()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - P - 1, (args.batch,))
        batch = torch.stack([train[s:s + P + 1] for s in starts.tolist()])
        fq.round()
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), ignore_index=T.UNK)
        opt.zero_grad()
        loss.backward()
        fq.restore()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {running / 50:.3f} ({time.time() - t0:.0f} s)", flush=True)
            running = 0.0
    after = evaluate()
    print(f"after {args.steps} steps ({time.time() - t0:.0f} s): held-out perplexity {after[0]:.2f} "
          f"({after[1]:.2f} without <UNK> targets)", flush=True)
    T.use_fast_ssm(model, False)
    torch.save({"model_state_dict": model.state_dict(), "config": cfg}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

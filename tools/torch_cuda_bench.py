#!/usr/bin/python3
"""PyTorch eager on the GPU, the baseline next to `itera-bench --device cuda` (docs/cuda.md).

usage: python3 tools/torch_cuda_bench.py --checkpoint models/itera_lite_kjv.pt [--device cuda]
           [--steps 100] [--batches 1,4,16,64,256,1024,4096] [--json]

The reference model (tests/reference/itera_lite.py, loaded as the golden tests load it) as a
batched recurrent decoder in eager PyTorch: per step and layer LayerNorm, in_proj, the K-tap conv
over the carried inputs, delta / B / C products, the scan, out_proj; the MoE computes all experts
and combines the top-k with their softmax weights (E is 4: cheaper in eager mode than gathering).
FP32, TF32 off. Before any timing the decoder's logits for a 16-token prompt are checked against
the reference's full forward on the CPU (max |d| < 1e-3).

Measured like itera-bench: latency_us_batch1 is one decode step at batch 1 with the logits copied
to the host (median); per batch, ms_per_step is the median step with the logits left on the
device, tokens are random ids, and every sequence restarts at position 0 before max_seq_length.
Exits 0 with a line "PyTorch with CUDA is not available: ..." when it is not.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "golden"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from test_golden import reference_from_checkpoint  # noqa: E402


class Decoder:
    """Batched recurrent step: tok [B], pos [B], hist [L] of [B, Di, K-1], s [L] of [B, N]."""

    def __init__(self, model, device):
        t = lambda x: x.detach().to(device).contiguous()  # noqa: E731
        self.H = model.embedding.weight.shape[1]
        self.emb, self.pos = t(model.embedding.weight), t(model.position_embedding.weight)
        self.nw, self.nb, self.head = t(model.norm.weight), t(model.norm.bias), t(model.lm_head.weight)
        self.layers = []
        for layer in model.layers:
            b, core = layer.ssm, layer.ssm.ssm
            moe = hasattr(layer.moe, "layer")
            ch = layer.moe.layer if moe else layer.moe
            d = {"n1w": t(b.norm.weight), "n1b": t(b.norm.bias), "w_in": t(b.in_proj.weight),
                 "conv_w": t(b.conv1d.weight[:, 0]), "conv_b": t(b.conv1d.bias), "w_dt": t(core.delta_proj.weight),
                 "b_dt": t(core.delta_proj.bias), "A": t(-torch.exp(core.A_log)), "B": t(core.B), "C": t(core.C),
                 "D": t(core.D), "w_out": t(b.out_proj.weight), "n2w": t(ch.norm.weight), "n2b": t(ch.norm.bias),
                 "inner": core.D.shape[0], "moe": moe}
            if moe:
                d["k"] = ch.top_k
                d["gate"] = t(ch.router.gate.weight)
                d["w1"] = t(torch.stack([e.w1.weight for e in ch.experts]))  # [E, F, H]
                d["w2"] = t(torch.stack([e.w2.weight for e in ch.experts]))  # [E, H, F]
            else:
                d["w1"], d["w2"] = t(ch.ffn.w1.weight), t(ch.ffn.w2.weight)
            self.layers.append(d)

    def zero_state(self, model, batch, device):
        cfg = model.cfg
        hist = [torch.zeros(batch, L["inner"], cfg["ssm_conv_kernel"] - 1, device=device) for L in self.layers]
        s = [torch.zeros(batch, cfg["ssm_state_size"], device=device) for _ in self.layers]
        return hist, s

    @torch.no_grad()
    def step(self, tok, pos, hist, s):
        H = self.H
        x = self.emb[tok] + self.pos[pos]  # [B, H]
        new_hist, new_s = [], []
        for L, h, sl in zip(self.layers, hist, s):
            uz = F.layer_norm(x, (H,), L["n1w"], L["n1b"], 1e-5) @ L["w_in"].t()
            u, z = uz[:, :L["inner"]], uz[:, L["inner"]:]
            win = torch.cat([h, u[:, :, None]], 2)  # [B, Di, K]
            v = F.silu((win * L["conv_w"]).sum(2) + L["conv_b"])
            dt = F.softplus(v @ L["w_dt"].t() + L["b_dt"]).mean(1, keepdim=True)  # [B, 1]
            sl = torch.exp(dt * L["A"]) * sl + dt * (v @ L["B"].t())
            y = sl @ L["C"].t() + L["D"] * v
            x = x + (y * F.silu(z)) @ L["w_out"].t()
            a = F.layer_norm(x, (H,), L["n2w"], L["n2b"], 1e-5)
            if L["moe"]:
                p, idx = torch.topk(a @ L["gate"].t(), L["k"], dim=1)
                weights = torch.zeros(a.shape[0], L["w1"].shape[0], device=a.device).scatter(1, idx, torch.softmax(p, 1))
                hid = F.gelu(torch.matmul(a, L["w1"].transpose(1, 2)))  # [E, B, F]
                out = torch.bmm(hid, L["w2"].transpose(1, 2))  # [E, B, H]
                x = x + (out * weights.t()[:, :, None]).sum(0)
            else:
                x = x + F.gelu(a @ L["w1"].t()) @ L["w2"].t()
            new_hist.append(win[:, :, 1:])
            new_s.append(sl)
        return F.layer_norm(x, (H,), self.nw, self.nb, 1e-5) @ self.head.t(), new_hist, new_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batches", default="1,4,16,64,256,1024,4096")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"PyTorch with CUDA is not available: torch {torch.__version__}, CUDA build {torch.version.cuda}")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = reference_from_checkpoint(args.checkpoint)
    P, V = model.cfg["max_seq_length"], model.embedding.weight.shape[0]
    dec = Decoder(model, dev)

    # Correctness first: 16 prompt positions against the reference's full forward on the CPU.
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (16,), generator=g)
    with torch.no_grad():
        want = model(ids[None])[0]
    hist, s = dec.zero_state(model, 1, dev)
    got = []
    for t in range(16):
        logits, hist, s = dec.step(ids[t:t + 1].to(dev), torch.tensor([t], device=dev), hist, s)
        got.append(logits[0].cpu())
    diff = (torch.stack(got) - want).abs().max().item()
    if diff >= 1e-3:
        print(f"error: the eager decoder differs from the reference by {diff:.3g}")
        return 1

    def timed(batch, copy):
        hist, s = dec.zero_state(model, batch, dev)
        times, pos = [], 0
        for i in range(3 + args.steps):
            if pos + 1 >= P:
                hist, s = dec.zero_state(model, batch, dev)
                pos = 0
            tok = torch.randint(0, V, (batch,), generator=g).to(dev)
            sync()
            t0 = time.perf_counter()
            logits, hist, s = dec.step(tok, torch.full((batch,), pos, device=dev), hist, s)
            if copy:
                logits.cpu()
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t0)
            pos += 1
        return statistics.median(times)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    result = {"model": args.checkpoint, "device": name, "torch": torch.__version__, "check_max_abs_diff": diff,
              "latency_us_batch1": 1e6 * timed(1, True), "throughput": []}
    for b in [int(x) for x in args.batches.split(",")]:
        sec = timed(b, False)
        result["throughput"].append({"batch": b, "ms_per_step": 1e3 * sec, "tok_s": b / sec})
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"PyTorch {torch.__version__} eager on {name} (logits within {diff:.2g} of the reference)")
    print(f"latency        {result['latency_us_batch1']:.1f} us per token (batch 1, logits copied to the host)")
    for p in result["throughput"]:
        print(f"batch {p['batch']:<8} {p['ms_per_step']:.3f} ms per step, {p['tok_s']:.0f} tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

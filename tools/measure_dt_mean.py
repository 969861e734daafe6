#!/usr/bin/python3
"""How should an SSM block's step size dt = mean_i softplus(delta_i) treat removed inner channels?

usage: /usr/bin/python3 tools/measure_dt_mean.py CORPUS_DIR   (models/make_corpus.py writes it)

On the shipped model (PyTorch reference forward), removes the same fraction of SSM inner channels
in both layers (the channels whose output y * SiLU(z) has the least RMS times out_proj column norm
on 4096 training tokens) and scores the first 8192 held-out tokens (64 windows of 128) four ways:
  zeroed         the channels read and write nothing, but their softplus(delta) still counts in dt
                 (the unpruned model with the units zeroed)
  mean_kept      dt = mean over the kept channels (what a pruned .itl computes: no format change)
  sum_over_orig  dt = sum over the kept channels / the original count
  offset         as sum_over_orig plus the removed channels' mean softplus(delta) on the
                 calibration tokens
Prints the mean KL divergence from the unpruned model and the perplexity of each.
"""
import json
import math
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models"))
import train as T  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

P = 128
MODE = {"mode": "orig"}


def ssm_forward(self, h):
    L = h.shape[1]
    u, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)
    v = F.silu(self.conv1d(u.transpose(1, 2))[..., :L].transpose(1, 2))
    sp = F.softplus(self.ssm.delta_proj(v))
    self.sp_mean = sp.detach().mean(dim=(0, 1))
    Di, mode = v.shape[-1], MODE["mode"]
    if self.keep is not None and mode != "orig":
        m = torch.zeros(Di)
        m[self.keep] = 1
        v, z = v * m, z * m  # removed channels read and write nothing
        sp = F.softplus(self.ssm.delta_proj(v))
        kept = sp[..., self.keep]
        dt = {"zeroed": sp.mean(-1), "mean_kept": kept.mean(-1), "sum_over_orig": kept.sum(-1) / Di,
              "offset": (kept.sum(-1) + self.offset) / Di}[mode]
    else:
        dt = sp.mean(-1)
    A = -torch.exp(self.ssm.A_log)
    s, ys = torch.zeros(h.shape[0], A.shape[0]), []
    inp = dt[..., None] * (v @ self.ssm.B.t())
    for t in range(L):
        s = torch.exp(dt[:, t:t + 1] * A) * s + inp[:, t]
        ys.append(s)
    g = (torch.stack(ys, 1) @ self.ssm.C.t() + self.ssm.D * v) * F.silu(z)
    self.g_rms = (g.detach() ** 2).mean(dim=(0, 1)).sqrt()
    return h + self.out_proj(g)


def main():
    corpus = sys.argv[1]
    torch.set_num_threads(1)
    saved = torch.load(os.path.join(HERE, "..", "models", "itera_lite_kjv.pt"))
    model = T.IteraLite(saved["config"], tied=True)
    model.load_state_dict(saved["model_state_dict"])
    model.eval()
    with open(os.path.join(HERE, "..", "models", "tokenizer_kjv.json")) as f:
        tok = json.load(f)

    def ids(part, n):
        with open(os.path.join(corpus, part + ".txt")) as f:
            return T.encode(tok, f.read().lower().split()[:n * P + 1])

    calib, held = ids("train", 32), ids("heldout", 64)
    windows = held[:64 * P].view(64, P)
    targets = held[1:64 * P + 1].view(64, P)
    for layer in model.layers:
        layer.ssm.keep = None
        layer.ssm.forward = types.MethodType(ssm_forward, layer.ssm)
    with torch.no_grad():
        ref = F.log_softmax(model(windows), -1)
        model(calib[:32 * P].view(32, P))
    score = [l.ssm.g_rms * l.ssm.out_proj.weight.norm(dim=0) for l in model.layers]
    sp_mean = [l.ssm.sp_mean.clone() for l in model.layers]
    for frac in (0.25, 0.4, 0.5):
        for i, layer in enumerate(model.layers):
            Di = score[i].numel()
            layer.ssm.keep = torch.sort(torch.argsort(score[i], descending=True)[:Di - round(frac * Di)]).values
            removed = torch.ones(Di, dtype=torch.bool)
            removed[layer.ssm.keep] = False
            layer.ssm.offset = sp_mean[i][removed].sum()
        for mode in ("zeroed", "mean_kept", "sum_over_orig", "offset"):
            MODE["mode"] = mode
            with torch.no_grad():
                lp = F.log_softmax(model(windows), -1)
            kld = (ref.exp() * (ref - lp)).sum(-1).mean().item()
            ppl = math.exp(-lp.gather(-1, targets[..., None]).mean().item())
            print(f"{frac:.2f} of the SSM channels removed, dt {mode:13s}: KL {kld:.4f} nats, perplexity {ppl:.2f}",
                  flush=True)
        MODE["mode"] = "orig"
    with torch.no_grad():
        lp = F.log_softmax(model(windows), -1)
    print(f"unpruned: perplexity {math.exp(-lp.gather(-1, targets[..., None]).mean().item()):.2f}")


if __name__ == "__main__":
    main()

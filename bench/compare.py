#!/usr/bin/python3
"""Itera against PyTorch on one checkpoint, measured in the same run (docs/bench.md).

usage: /usr/bin/python3 bench/compare.py --checkpoint PT [--tokenizer JSON] --itera-bench PATH
           --itera-convert PATH [--tokens N] [--threads 1] [--repeats R] [--json OUT]

The checkpoint is converted with itera-convert into a temporary folder: FP32 with the whole
vocabulary, and, when a tokenizer is given, q4 with the vocabulary trimmed to the tokenizer's ids
when it has fewer (the file a user deploys; rounded to nearest, which runs as fast as a
GPTQ-calibrated file). Then, batch 1, greedy, on --threads threads:

- decode tok/s, N greedy tokens after a 4-token prompt: PyTorch's full re-forward per token
  (upstream's generate), the recurrent step in eager PyTorch on the reference's modules, a
  flattened recurrent decoder in eager PyTorch and under TorchScript, the same decoder in ONNX
  Runtime when it is installed, and `itera-bench --json` on each .itl file;
- a sample, a 128-token prompt to the last position's logits: PyTorch's full forward, the
  TorchScript decoder over 128 steps, and itera-bench's prefill_ms_128.

Before any timing, each recurrent path is checked against the reference's full forward (max |d|
< 1e-4 over the logits of every prompt position), and every PyTorch path must produce the same
greedy ids. The paths take turns within each round, --repeats rounds. On a shared machine a
long timed stretch is interrupted more often than a short one, so PyTorch's figures are taken as
the fastest that the noise allows: a decode round counts its median step time (an interrupted
step is an outlier), and a sample takes its fastest round. Itera's are itera-bench's medians. On
a loaded machine the ratios therefore understate Itera rather than overstate it.
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "golden"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from test_golden import reference_from_checkpoint  # noqa: E402  (the golden tests' loader)

TOL = 1e-4
PROMPT = [4, 5, 6, 7]  # ids after the special tokens; the speed of a step does not depend on them
SAMPLE = 128  # tokens in "a sample"
FULL = "PyTorch full re-forward (upstream generate)"
TORCHSCRIPT = "TorchScript flat recurrent decoder"


# ---- the recurrent paths: step(token [1], pos [1], hist [L, Di, K-1], s [L, N]) -> (logits [V], hist, s)

def module_step(model):
    """The recurrent step in eager PyTorch on the reference's modules: LayerNorm, Linear and the
    channel block are called as modules on one position; the conv inputs and SSM state are carried."""
    def step(tok, pos, hist, s):
        x = model.embedding(tok) + model.position_embedding(pos)  # [1, H]
        hists, states = [], []
        for l, layer in enumerate(model.layers):
            b, core = layer.ssm, layer.ssm.ssm
            u, z = b.in_proj(b.norm(x)).chunk(2, dim=-1)  # [1, Di]
            win = torch.cat([hist[l], u.t()], 1)  # [Di, K]: the conv's inputs, oldest first
            v = F.silu((win * b.conv1d.weight[:, 0]).sum(1) + b.conv1d.bias)[None]
            dt = F.softplus(core.delta_proj(v)).mean(dim=-1, keepdim=True)
            sl = torch.exp(dt * -torch.exp(core.A_log)) * s[l] + dt * (v @ core.B.t())
            y = sl @ core.C.t() + core.D * v
            x = layer.moe(x + b.out_proj(y * F.silu(z)))
            hists.append(win[:, 1:])
            states.append(sl[0])
        return model.lm_head(model.norm(x))[0], torch.stack(hists), torch.stack(states)
    return step


class FlatLayer(torch.nn.Module):
    """One layer's weights as plain tensors: torch.mv, the conv a K-tap dot, only the top-k
    experts computed."""

    def __init__(self, layer):
        super().__init__()
        b, core = layer.ssm, layer.ssm.ssm
        self.inner = core.D.shape[0]
        self.moe = hasattr(layer.moe, "layer")
        ch = layer.moe.layer if self.moe else layer.moe
        d = {"n1w": b.norm.weight, "n1b": b.norm.bias, "w_in": b.in_proj.weight,
             "conv_w": b.conv1d.weight[:, 0], "conv_b": b.conv1d.bias,
             "w_dt": core.delta_proj.weight, "b_dt": core.delta_proj.bias, "A": -torch.exp(core.A_log),
             "B": core.B, "C": core.C, "D": core.D, "w_out": b.out_proj.weight,
             "n2w": ch.norm.weight, "n2b": ch.norm.bias}
        if self.moe:
            self.top_k = ch.top_k
            d["gate"] = ch.router.gate.weight
            d["w1"] = torch.stack([e.w1.weight for e in ch.experts])  # [E, F, H]
            d["w2"] = torch.stack([e.w2.weight for e in ch.experts])  # [E, H, F]
        else:
            d["w1"], d["w2"] = ch.ffn.w1.weight, ch.ffn.w2.weight
        for name, t in d.items():
            self.register_buffer(name, t.detach().clone().contiguous())

    def forward(self, x, hist, s):  # x [H], hist [Di, K-1], s [N]
        H = x.shape[0]
        uz = torch.mv(self.w_in, F.layer_norm(x, (H,), self.n1w, self.n1b, 1e-5))
        u, z = uz[:self.inner], uz[self.inner:]
        win = torch.cat([hist, u[:, None]], 1)
        v = F.silu((win * self.conv_w).sum(1) + self.conv_b)
        dt = F.softplus(torch.mv(self.w_dt, v) + self.b_dt).mean()  # addmv: no ONNX export
        s = torch.exp(dt * self.A) * s + dt * torch.mv(self.B, v)
        y = torch.mv(self.C, s) + self.D * v
        x = x + torch.mv(self.w_out, y * F.silu(z))
        a = F.layer_norm(x, (H,), self.n2w, self.n2b, 1e-5)
        if self.moe:
            p, idx = torch.topk(torch.mv(self.gate, a), self.top_k)
            hid = F.gelu(torch.matmul(self.w1[idx], a))  # [k, F]
            out = torch.matmul(self.w2[idx], hid[:, :, None])[:, :, 0]  # [k, H]
            # not torch.mv(out.t(), ...): ONNX Runtime 1.32's graph optimizer computes that one wrong
            x = x + torch.matmul(torch.softmax(p, 0)[None], out)[0]
        else:
            x = x + torch.mv(self.w2, F.gelu(torch.mv(self.w1, a)))
        return x, win[:, 1:], s


class FlatDecoder(torch.nn.Module):
    """The step with pre-flattened weights, state in and state out, so that torch.jit.trace and
    torch.onnx.export see the whole of it."""

    def __init__(self, model):
        super().__init__()
        self.layers = torch.nn.ModuleList([FlatLayer(layer) for layer in model.layers])
        for name, t in {"emb": model.embedding.weight, "pos": model.position_embedding.weight,
                        "nw": model.norm.weight, "nb": model.norm.bias, "head": model.lm_head.weight}.items():
            self.register_buffer(name, t.detach().clone().contiguous())

    def forward(self, tok, pos, hist, s):
        x = F.embedding(tok, self.emb)[0] + F.embedding(pos, self.pos)[0]
        hists, states = [], []
        for l, layer in enumerate(self.layers):
            x, h, sl = layer(x, hist[l], s[l])
            hists.append(h)
            states.append(sl)
        logits = torch.mv(self.head, F.layer_norm(x, (x.shape[0],), self.nw, self.nb, 1e-5))
        return logits, torch.stack(hists), torch.stack(states)


def zero_state(model):
    cfg = model.cfg
    inner = cfg["ssm_expand_factor"] * cfg["hidden_size"]
    return (torch.zeros(cfg["num_layers"], inner, cfg["ssm_conv_kernel"] - 1),
            torch.zeros(cfg["num_layers"], cfg["ssm_state_size"]))


def run_steps(model, step, ids):
    """Logits [len(ids), V] of a prompt fed one token at a time from zero state."""
    hist, s = zero_state(model)
    rows = []
    for t, tok in enumerate(ids):
        logits, hist, s = step(torch.tensor([tok]), torch.tensor([t]), hist, s)
        rows.append(logits)
    return torch.stack(rows)


def greedy_steps(model, step, n):
    """(generated ids, seconds of each of the n decode steps): the prompt but its last token is
    fed untimed; each timed step feeds the last token and takes the argmax of its logits."""
    hist, s = zero_state(model)
    positions = [torch.tensor([t]) for t in range(len(PROMPT) + n)]
    for t, tok in enumerate(PROMPT[:-1]):
        _, hist, s = step(torch.tensor([tok]), positions[t], hist, s)
    tok, out, seconds = torch.tensor([PROMPT[-1]]), [], []
    for t in range(len(PROMPT) - 1, len(PROMPT) - 1 + n):
        t0 = time.perf_counter()
        logits, hist, s = step(tok, positions[t], hist, s)
        tok = logits.argmax().view(1)
        seconds.append(time.perf_counter() - t0)
        out.append(tok)
    return [int(t) for t in out], seconds


def greedy_full(model, n):
    """Upstream's generate, as the reference's generate_greedy: every token re-runs the last
    max_seq_length ids from zero state. (ids, seconds of each step)."""
    out, seconds, P = list(PROMPT), [], model.cfg["max_seq_length"]
    for _ in range(n):
        t0 = time.perf_counter()
        out.append(int(model(torch.tensor([out[-P:]]))[0, -1].argmax()))
        seconds.append(time.perf_counter() - t0)
    return out[len(PROMPT):], seconds


def sample_steps(model, step, ids):
    """Seconds to feed a sample through a step (its logits at every position)."""
    t0 = time.perf_counter()
    run_steps(model, step, ids)
    return time.perf_counter() - t0


def sample_full(model, ids):
    t0 = time.perf_counter()
    model(torch.tensor([ids]))[0, -1]
    return time.perf_counter() - t0


# ---- ONNX Runtime (optional) ----

def onnx_step(dec, model, workdir, threads):
    """The flat decoder exported to ONNX and run by an ONNX Runtime session; None when
    onnxruntime is not importable."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    hist, s = zero_state(model)
    path = os.path.join(workdir, "step.onnx")
    torch.onnx.export(dec, (torch.tensor([PROMPT[0]]), torch.tensor([0]), hist, s), path, opset_version=14,
                      input_names=["tok", "pos", "hist", "s"], output_names=["logits", "hist_out", "s_out"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def step(tok, pos, hist, s):
        logits, h, sl = sess.run(None, {"tok": tok.numpy(), "pos": pos.numpy(), "hist": hist.numpy(), "s": s.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(h), torch.from_numpy(sl)
    return step


# ---- Itera ----

def run_tool(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout


def convert(args, workdir):
    """[(label, path)] of the converted files."""
    files = [("Itera fp32", os.path.join(workdir, "fp32.itl"), ["--no-trim-vocab"])]
    if args.tokenizer:
        files.append(("Itera q4", os.path.join(workdir, "q4.itl"), ["--quant", "q4"]))
    out = []
    for label, path, extra in files:
        cmd = [args.itera_convert, args.checkpoint, "-o", path] + extra
        if args.tokenizer:
            cmd += ["--tokenizer", args.tokenizer]
        wrote = run_tool(cmd).strip()
        print(f"$ {' '.join(cmd)}\n  {wrote}")
        out.append((label + (" trimmed" if "vocabulary trimmed" in wrote else ""), path))
    return out


def itera_bench(args, path):
    cmd = [args.itera_bench, "-m", path, "--json", "--threads", str(args.threads), "--kernels", args.kernels]
    out = run_tool(cmd)
    try:
        r = json.loads(out)
        float(r["decode_tok_s"]), float(r["prefill_ms_128"])
        return r
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {' '.join(cmd)}: unparsable JSON ({e}): {out[:200]!r}")


# ---- the run ----

def machine():
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, torch {torch.__version__}"


def check(ok, line, checks):
    checks.append({"check": line, "ok": bool(ok)})
    print(f"check: {line} {'OK' if ok else 'FAIL'}", flush=True)
    return ok


def recurrent_paths(model, workdir, threads):
    """[(label, step)]: eager modules, flat eager, flat under TorchScript (traced, frozen), ONNX
    Runtime when installed."""
    flat = FlatDecoder(model).eval()
    hist, s = zero_state(model)
    script = torch.jit.freeze(torch.jit.trace(flat, (torch.tensor([PROMPT[0]]), torch.tensor([0]), hist, s)))
    paths = [("PyTorch recurrent step, eager modules", module_step(model)),
             ("PyTorch flat recurrent decoder, eager", flat),
             (TORCHSCRIPT, script)]
    ort_step = onnx_step(flat, model, workdir, threads)
    if ort_step is None:
        print("onnxruntime not installed: skipped")
    else:
        paths.append(("ONNX Runtime flat recurrent decoder", ort_step))
    return paths


def check_paths(model, paths, n):
    """Every recurrent path against the full forward, and its greedy ids against the full
    re-forward's; returns (checks, the greedy ids)."""
    checks = []
    want_ids, _ = greedy_full(model, n)
    ids = (PROMPT + want_ids)[:16]
    want = model(torch.tensor([ids]))[0]
    for label, step in paths:
        d = float((run_steps(model, step, ids) - want).abs().max())
        check(d < TOL, f"{label} vs full forward, logits of {len(ids)} positions: max |d| {d:.1e} < {TOL:g}", checks)
        got, _ = greedy_steps(model, step, n)
        check(got == want_ids, f"{label}: {n} greedy ids = the full re-forward's", checks)
    return checks, want_ids


def measure(args, model, paths, sample, itl_files):
    """Each path once per round. Returns ({label: tok/s}, {label: ms per sample}, {label: [itera-bench
    JSON per round]}). PyTorch's figures are the fastest that machine noise allows (a decode round
    counts its median step; a sample takes its fastest round); Itera's are itera-bench's medians."""
    decode = {FULL: []}
    decode.update({label: [] for label, _ in paths})
    prefill = {"PyTorch full forward": [], f"{TORCHSCRIPT}, {len(sample)} steps": []}
    script = dict(paths)[TORCHSCRIPT]
    itera = {label: [] for label, _ in itl_files}
    for _ in range(args.repeats):
        decode[FULL].append(1 / statistics.median(greedy_full(model, args.tokens)[1]))
        for label, step in paths:
            decode[label].append(1 / statistics.median(greedy_steps(model, step, args.tokens)[1]))
        prefill["PyTorch full forward"].append(1e3 * sample_full(model, sample))
        prefill[f"{TORCHSCRIPT}, {len(sample)} steps"].append(1e3 * sample_steps(model, script, sample))
        for label, path in itl_files:
            itera[label].append(itera_bench(args, path))
    return ({k: statistics.median(v) for k, v in decode.items()}, {k: min(v) for k, v in prefill.items()}, itera)


def table(title, unit, rows, itera, speedup):
    """rows and itera {label: value}; speedup(itera value, path value) -> ratio."""
    print(f"\n{title}")
    print(f"{'path':<48}{unit:>12}" + "".join(f"{label + ' x':>22}" for label in itera))
    for label, value in list(rows.items()) + [(f"{k} (itera-bench)", v) for k, v in itera.items()]:
        digits = min(5, max(0, 3 - math.floor(math.log10(value))))  # 4 significant digits
        print(f"{label:<48}{value:>12,.{digits}f}" + "".join(f"{speedup(v, value):>21,.1f}x" for v in itera.values()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tokenizer")
    ap.add_argument("--itera-bench", required=True)
    ap.add_argument("--itera-convert", required=True)
    ap.add_argument("--tokens", type=int, default=50, help="greedy tokens decoded per round (default 50)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kernels", default="native", choices=["native", "onednn", "auto"],
                    help="itera-bench --kernels: who runs the prefill's products (default native)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--json", help="write every measurement to this file")
    args = ap.parse_args()
    if args.tokens < 1 or args.threads < 1 or args.repeats < 1:
        sys.exit("error: --tokens, --threads and --repeats must be at least 1")

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = reference_from_checkpoint(args.checkpoint)
    cfg, P = model.cfg, model.cfg["max_seq_length"]
    if len(PROMPT) + args.tokens > P:
        sys.exit(f"error: --tokens must be at most {P - len(PROMPT)}: the recurrent paths equal upstream's "
                 f"generate only up to max_seq_length {P} tokens")
    print(f"machine: {machine()}; {args.threads} thread(s)")
    moe = [layer.moe.layer for layer in model.layers if hasattr(layer.moe, "layer")]
    print(f"model: {args.checkpoint}: V {cfg['vocab_size']}, H {cfg['hidden_size']}, {cfg['num_layers']} layers, "
          f"MoE layers {cfg['moe_layers']} ({cfg['num_experts']} experts, top-{moe[0].top_k if moe else '-'}), P {P}")

    with tempfile.TemporaryDirectory(prefix="itera-compare-") as workdir:
        itl_files = convert(args, workdir)
        paths = recurrent_paths(model, workdir, args.threads)
        checks, greedy = check_paths(model, paths, args.tokens)
        if not all(c["ok"] for c in checks):
            sys.exit("error: a PyTorch path disagrees with the reference; nothing timed")
        text = PROMPT + greedy
        sample = [text[i % len(text)] for i in range(min(SAMPLE, P))]
        decode, prefill, itera = measure(args, model, paths, sample, itl_files)

    med = statistics.median
    it_decode = {label: med(r["decode_tok_s"] for r in runs) for label, runs in itera.items()}
    it_prefill = {label: med(r["prefill_ms_128"] for r in runs) for label, runs in itera.items()}
    table(f"decode, batch 1, greedy, {args.tokens} tokens after a {len(PROMPT)}-token prompt, {args.repeats} rounds "
          f"(PyTorch: 1 / median step time, median of the rounds); Itera x = Itera's tok/s / the path's", "tok/s",
          decode, it_decode, lambda it, path: it / path)
    table(f"a sample: a {len(sample)}-token prompt to the last position's logits, {args.repeats} rounds "
          f"(PyTorch: the fastest round); Itera x = the path's ms / Itera's prefill_ms_128", "ms",
          prefill, it_prefill, lambda it, path: path / it)

    if args.json:
        report = {"machine": machine(), "threads": args.threads, "tokens": args.tokens, "repeats": args.repeats,
                  "checkpoint": args.checkpoint, "tokenizer": args.tokenizer, "checks": checks,
                  "decode_tok_s": decode, "prefill_ms": prefill,
                  "itera": {label: {"decode_tok_s": it_decode[label], "prefill_ms_128": it_prefill[label],
                                    "runs": runs} for label, runs in itera.items()}}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

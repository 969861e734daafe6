#!/usr/bin/python3
"""Writes the golden cases: small seeded random Itera-Lite models in several checkpoint layouts,
with the logits and greedy ids the PyTorch reference (tests/reference/itera_lite.py) computes.

usage: /usr/bin/python3 tests/golden/make_golden.py OUTDIR

Per case, OUTDIR/<case>/ holds model.pt (+ cfg.json for case d) and expected.json:
  ids, logits      one forward from zero state over ids (one row of vocab floats per position)
  greedy_prompt, greedy_ids   upstream greedy generation (crosses max_seq_length)
  convert_args     extra itera-convert arguments, paths relative to the case folder
FP16/BF16-stored cases get their expected values from the FP32 reference run on the rounded
weights, so the converter (which widens to FP32) must match them to FP32 accuracy.

A seed is kept only if the case is numerically unambiguous: greedy top-2 gaps and router top-k
boundaries are wide enough that FP32 rounding (and, for case a, FP16 storage) cannot flip them,
and top-k routing visibly changes the logits. Otherwise the next seed is tried.
"""
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from golden_config import GoldenConfig  # noqa: E402
from itera_lite import IteraLite  # noqa: E402

UPSTREAM_EXTRA = {"load_balance_loss_weight": 0.01, "dropout": 0.1, "layer_norm_eps": 1e-5,
                  "use_flash_attn": False, "gradient_checkpointing": False}


def cfg(V, H, layers, N, K, expand, E, F, top_k, moe_layers, P=16):
    return {"vocab_size": V, "hidden_size": H, "num_layers": layers, "ssm_state_size": N,
            "ssm_conv_kernel": K, "ssm_expand_factor": expand, "num_experts": E,
            "expert_size": F, "top_k_experts": top_k, "moe_layers": moe_layers,
            "max_seq_length": P}


# layout: how the checkpoint is saved; storage: dtype of the saved tensors.
CASES = {
    "a": dict(seed=4011, tied=True, layout="dict_config", storage="fp32",
              cfg=cfg(80, 32, 3, 8, 4, 2, 4, 32, 2, [1])),
    "b": dict(seed=22, tied=False, layout="bare", storage="fp32", convert_args=["--top-k", "1"],
              cfg=cfg(97, 40, 3, 5, 3, 3, 4, 24, 1, [0, 2])),
    "c": dict(seed=33, tied=True, layout="dict_config", storage="fp16",
              cfg=cfg(72, 48, 2, 8, 4, 2, 4, 40, 2, [1])),
    "d": dict(seed=44, tied=True, layout="config_file", storage="fp32",
              cfg=cfg(50, 24, 2, 6, 4, 2, 3, 16, 2, [0, 1])),
    "e": dict(seed=1055, tied=False, layout="config_object", storage="bf16",
              cfg=cfg(64, 32, 3, 8, 2, 2, 4, 32, 2, [1, 2])),
}
PROMPT_LEN, NEW_TOKENS = 6, 30   # 36 tokens > max_seq_length 16: exercises the sliding window
MIN_GREEDY_GAP = 2e-3            # top-1 minus top-2 logit at every greedy step
MIN_ROUTER_GAP = 1e-3            # k-th minus (k+1)-th gate logit at every routed position
MIN_ROUTER_GAP_LOGITS = 2e-2     # the same over the logits forward (checked with FP16 weights too)
MAX_FP16_ROUNDING = 1e-2         # case a: logit change from FP16 weights (test allows 2e-2)


@torch.no_grad()
def randomize(model):
    """Weights scaled so activations stay O(1) and logits have std ~1.5: routing, gating and
    every nonlinearity operate away from their trivial regimes."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if name in ("embedding.weight", "lm_head.weight"):
            p.normal_(0.0, 1.5 / math.sqrt(p.shape[1]))
        elif name.endswith("router.gate.weight"):
            p.normal_(0.0, 2.0 / math.sqrt(p.shape[1]))
        elif p.dim() >= 2:  # fan-in scaled; conv1d [Di, 1, K] has fan-in K
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))
        elif leaf == "A_log":
            p.copy_(torch.log(torch.linspace(0.5, float(p.numel()), p.numel())))
            p.add_(0.2 * torch.randn_like(p))
        elif name.endswith("delta_proj.bias"):
            p.normal_(-0.5, 0.5)
        elif leaf == "D" or (leaf == "weight" and "norm" in name):
            p.normal_(1.0, 0.25)
        else:  # biases (LayerNorm, conv1d)
            p.normal_(0.0, 0.2)
    for name, b in model.named_buffers():
        if name.endswith("expert_counts"):  # unused at inference; random so it cannot matter
            b.uniform_(0.0, 100.0)


def routers(model):
    return [layer.moe.layer for layer in model.layers if hasattr(layer.moe, "layer")]


def collect_gate_logits(model):
    """Forward hooks recording every router's gate logits; returns (records, remove)."""
    records = []
    hooks = [moe.router.gate.register_forward_hook(
        lambda m, i, o, k=moe.top_k: records.append((k, o.detach().reshape(-1, o.shape[-1]))))
        for moe in routers(model)]
    return records, lambda: [h.remove() for h in hooks]


def router_gap(records):
    gap = math.inf
    for k, g in records:
        if g.shape[-1] > k:
            s = torch.sort(g, dim=-1, descending=True).values
            gap = min(gap, float((s[:, k - 1] - s[:, k]).min()))
    return gap


@torch.no_grad()
def evaluate(model, ids, prompt):
    """Logits, greedy ids and the margins that make them unambiguous."""
    records, remove = collect_gate_logits(model)
    logits = model(torch.tensor([ids]))[0]
    # fewest distinct expert sets any MoE layer picks over the positions
    distinct = min(len({frozenset(row.tolist()) for row in torch.topk(g, k, dim=-1).indices})
                   for k, g in records)
    logits_rgap = router_gap(records)
    out, P, greedy_gap = list(prompt), model.cfg["max_seq_length"], math.inf
    for _ in range(NEW_TOKENS):  # generate_greedy, with the top-2 gap recorded
        last = model(torch.tensor([out[-P:]]))[0, -1]
        top2 = torch.topk(last, 2).values
        greedy_gap = min(greedy_gap, float(top2[0] - top2[1]))
        out.append(int(last.argmax()))
    remove()
    greedy = out[len(prompt):]
    assert greedy == model.generate_greedy(prompt, NEW_TOKENS)
    return logits, greedy, greedy_gap, (logits_rgap, router_gap(records)), distinct


def round_to(model, dtype):
    """The FP32 model whose weights are the `dtype`-rounded ones (what a converter reads)."""
    return model.to(dtype).float()


def build(name, spec, seed):
    c = spec["cfg"]
    torch.manual_seed(seed)
    model = IteraLite(c, tied=spec["tied"])
    randomize(model)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, c["vocab_size"], (c["max_seq_length"],), generator=gen).tolist()
    prompt = torch.randint(4, c["vocab_size"], (PROMPT_LEN,), generator=gen).tolist()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec["storage"]]
    # An OrderedDict with _metadata (pickled with BUILD) and, when tied, one shared storage for
    # embedding/lm_head: as upstream's. float() then gives the model new, rounded tensors.
    state = model.to(dtype).state_dict()
    model = model.float()
    logits, greedy, greedy_gap, rgap, distinct = evaluate(model, ids, prompt)
    problems = []
    if greedy_gap < MIN_GREEDY_GAP:
        problems.append(f"greedy gap {greedy_gap:.2e}")
    if rgap[0] < MIN_ROUTER_GAP_LOGITS or rgap[1] < MIN_ROUTER_GAP:
        problems.append(f"router gap {rgap[0]:.2e} / {rgap[1]:.2e}")
    if distinct < 2:
        problems.append("routing picks the same experts everywhere")
    with torch.no_grad():  # top-k must matter: mixing all experts gives other logits
        dense = [m.top_k for m in routers(model)]
        for m in routers(model):
            m.top_k = m.router.gate.out_features
        topk_effect = float((model(torch.tensor([ids]))[0] - logits).abs().max())
        for m, k in zip(routers(model), dense):
            m.top_k = k
    if topk_effect < 0.05 and any(m.top_k < m.router.gate.out_features for m in routers(model)):
        problems.append(f"top-k changes logits by only {topk_effect:.2e}")
    fp16_rounding = None
    if name == "a":
        with torch.no_grad():
            half = IteraLite(c, tied=spec["tied"])
            half.load_state_dict(model.state_dict())
            fp16_rounding = float((round_to(half, torch.float16).eval()(torch.tensor([ids]))[0]
                                   - logits).abs().max())
        if fp16_rounding > MAX_FP16_ROUNDING:
            problems.append(f"fp16 rounding moves logits by {fp16_rounding:.2e}")
    stats = dict(greedy_gap=greedy_gap, router_gap=rgap[1], topk_effect=topk_effect,
                 logits_std=float(logits.std()), fp16_rounding=fp16_rounding)
    return problems, state, dict(ids=ids, logits=logits.tolist(), greedy_prompt=prompt,
                                 greedy_ids=greedy), stats


def save(case_dir, spec, state):
    c = dict(spec["cfg"], **UPSTREAM_EXTRA)
    path = os.path.join(case_dir, "model.pt")
    layout = spec["layout"]
    if layout == "bare":
        torch.save(state, path)
    elif layout == "dict_config":
        torch.save({"model_state_dict": state, "config": c, "compression_ratio": 3.5}, path)
    elif layout == "config_object":
        torch.save({"model_state_dict": state, "config": GoldenConfig(**c)}, path)
    elif layout == "config_file":
        torch.save({"model_state_dict": state}, path)
        with open(os.path.join(case_dir, "cfg.json"), "w") as f:
            json.dump(c, f, indent=1)
        return ["--config", "cfg.json"]
    return []


@torch.no_grad()
def check_saved(case_dir, expected):
    """The file on disk, loaded back into a fresh reference model, reproduces the expected
    logits exactly (guards the layouts: tie kept, config readable, dtype as intended)."""
    obj = torch.load(os.path.join(case_dir, "model.pt"), map_location="cpu")
    state = obj["model_state_dict"] if "model_state_dict" in obj else obj
    c = expected["config"]
    model = IteraLite(c, tied=expected["tied"])
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    if expected["tied"]:
        assert state["lm_head.weight"].data_ptr() == state["embedding.weight"].data_ptr()
    want = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[expected["storage"]]
    assert all(v.dtype == want for v in state.values())
    logits = model.eval()(torch.tensor([expected["ids"]]))[0]
    assert logits.tolist() == expected["logits"], "saved checkpoint does not reproduce the logits"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_golden.py OUTDIR")
    out = sys.argv[1]
    torch.set_num_threads(1)
    for name, spec in CASES.items():
        for attempt in range(20):
            seed = spec["seed"] + 1000 * attempt
            problems, state, expected, stats = build(name, spec, seed)
            if not problems:
                break
            print(f"case {name}: seed {seed} rejected ({'; '.join(problems)})")
        else:
            sys.exit(f"case {name}: no usable seed")
        case_dir = os.path.join(out, name)
        os.makedirs(case_dir, exist_ok=True)
        expected["convert_args"] = save(case_dir, spec, state) + spec.get("convert_args", [])
        expected.update(case=name, seed=seed, layout=spec["layout"], storage=spec["storage"],
                        tied=spec["tied"], config=spec["cfg"], stats=stats)
        with open(os.path.join(case_dir, "expected.json"), "w") as f:
            json.dump(expected, f)
        check_saved(case_dir, expected)
        print(f"case {name}: seed {seed}, {spec['layout']}, {spec['storage']}, "
              f"logit std {stats['logits_std']:.2f}, greedy gap {stats['greedy_gap']:.1e}, "
              f"router gap {stats['router_gap']:.1e}, top-k effect {stats['topk_effect']:.2f}"
              + (f", fp16 rounding {stats['fp16_rounding']:.1e}" if stats["fp16_rounding"] else ""))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Round-to-nearest error of candidate 3- and 2-bit block grids (the measurement behind q3_0 and
q2_0, docs/quantization.md).

usage: /usr/bin/python3 tools/lowbit_grids.py [checkpoint.pt]

For N(0,1), Laplace and (given a checkpoint) the Itera-Lite projection and expert weights, prints
each grid's relative rms error ||W - Q|| / ||W|| with the block scale set by its rule (the value
of largest magnitude on the extreme level) and with the scale searched: the rule times the
multiple in 0.30 .. 1.50 (steps of 0.02) of least squared error, fp16-rounded as stored. Then,
for the two chosen grids, the percentiles of the best multiple on the checkpoint's weights: the
search ranges of format/quant_blocks.cpp.
"""
import sys

import numpy as np

MULTIPLES = np.round(np.arange(0.30, 1.5001, 0.02), 2)


def fp16(x):
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def quantize(blocks, levels, signed_max, search):
    """blocks [n, B] -> (dequantized blocks, best multiple per block)."""
    amax_at = np.abs(blocks).argmax(1)
    peak = blocks[np.arange(len(blocks)), amax_at]
    # the rule: the extreme level lands on the value of largest magnitude (signed: on the most
    # negative level, as q4_0 does; symmetric grids: absmax on the top level)
    base = peak / levels[0] if signed_max else np.abs(peak) / levels[-1]
    best = np.full(blocks.shape, np.nan, np.float32)
    best_err = np.full(len(blocks), np.inf)
    best_m = np.ones(len(blocks))
    for m in (MULTIPLES if search else [1.0]):
        d = fp16(base * m)[:, None]
        safe = np.where(d == 0, 1, d)
        q = levels[np.abs(blocks[:, :, None] / safe[:, :, None] - levels).argmin(2)] * d
        err = ((blocks - q) ** 2).sum(1)
        better = err < best_err
        best[better], best_err[better], best_m[better] = q[better], err[better], m
    return best, best_m


def rel(w, q):
    return np.sqrt(((w - q) ** 2).sum() / (w ** 2).sum())


GRIDS = [  # name, block, levels (value / d), signed rule, bytes per block
    ("q4_0 (reference) n-8", 32, np.arange(16) - 8.0, True, 18),
    ("3-bit n-4", 32, np.arange(8) - 4.0, True, 14),
    ("3-bit n-3.5", 32, np.arange(8) - 3.5, False, 14),
    ("3-bit n-4, B64", 64, np.arange(8) - 4.0, True, 26),
    ("2-bit n-2", 32, np.arange(4) - 2.0, True, 10),
    ("2-bit n-1.5", 32, np.arange(4) - 1.5, False, 10),
    ("2-bit n-2, B64", 64, np.arange(4) - 2.0, True, 18),
    ("2-bit n-1.5, B64", 64, np.arange(4) - 1.5, False, 18),
]


def main():
    rng = np.random.default_rng(0)
    data = {"N(0,1)": rng.standard_normal(64 * 512).astype(np.float32),
            "Laplace": rng.laplace(size=64 * 512).astype(np.float32)}
    if len(sys.argv) > 1:
        import torch
        state = torch.load(sys.argv[1], map_location="cpu")
        state = state.get("model_state_dict", state)
        mats = [v.float().numpy() for k, v in state.items()
                if v.dim() == 2 and k.endswith("weight") and ("proj" in k or "experts" in k)]
        data["checkpoint"] = np.concatenate([m.reshape(-1) for m in mats])  # every row a multiple of 64
    print(f"{'grid':22s} {'bits/w':>6s} " + " ".join(f"{n + ' rule':>16s} {n + ' searched':>20s}" for n in data))
    for name, block, levels, signed, nbytes in GRIDS:
        cells = []
        for w in data.values():
            v = w.reshape(-1, block)
            cells.append(f"{rel(v, quantize(v, levels, signed, False)[0]):16.4f} "
                         f"{rel(v, quantize(v, levels, signed, True)[0]):20.4f}")
        print(f"{name:22s} {8 * nbytes / block:6.2f} " + " ".join(cells))
    if "checkpoint" in data:
        for name, block, levels, signed, _ in (GRIDS[1], GRIDS[7]):
            _, m = quantize(data["checkpoint"].reshape(-1, block), levels, signed, True)
            p = np.percentile(m, [1, 5, 50, 95, 99])
            print(f"best multiple, {name}, checkpoint: percentiles 1/5/50/95/99 = " + " ".join(f"{x:.2f}" for x in p))


if __name__ == "__main__":
    main()

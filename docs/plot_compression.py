#!/usr/bin/python3
"""Draws docs/compression.svg from docs/measure_compression.sh's outputs.

usage: /usr/bin/python3 docs/plot_compression.py CURVE.json REPORT.json OUT.svg

Left: file size against KL divergence and top-1 agreement with FP32 on the evaluation text, for
the --target-size files and the uniform calibrated files. Right: where the bytes of one
--target-size file go (its --report): each part's bytes by dtype, and the units pruned in it.
Needs Debian's python3-matplotlib.
"""
import json
import re
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

DTYPE_COLORS = {"fp32": "#4c4c4c", "fp16": "#8c8c8c", "q8": "#1f77b4", "q4": "#2ca02c", "nf4": "#98df8a",
                "q3": "#ff7f0e", "q2": "#d62728"}


def part_of(name):
    m = re.match(r"layers\.(\d+)\.(ssm|moe)\.", name)
    if m:
        block = "ssm" if m.group(2) == "ssm" else ("moe" if ".moe.layer." in name else "ffn")
        return f"layers.{m.group(1)}.{block}"
    return {"embedding.weight": "embedding", "position_embedding.weight": "position"}.get(name, "head")


def pruned_units(report):
    """part -> 'kept/units unit-name' text from the report's pruning groups."""
    out = {}
    moe = {}
    for g in report.get("pruning", {}).get("groups", []):
        name = g["name"]
        if name.endswith(".ssm.channels"):
            out[part_of(name)] = f"channels {g['kept']}/{g['units']}"
        elif name.endswith(".ffn.neurons"):
            out[part_of(name)] = f"neurons {g['kept']}/{g['units']}"
        else:  # one expert's neurons, or the experts themselves
            kept, units = moe.get(part_of(name), (0, 0))
            if name.endswith(".experts"):
                out.setdefault(part_of(name) + " experts", f"experts {g['kept']}/{g['units']}")
            else:
                moe[part_of(name)] = (kept + g["kept"], units + g["units"])
    for part, (kept, units) in moe.items():
        out[part] = f"expert neurons {kept}/{units}"
    return out


def main():
    curve_path, report_path, out_path = sys.argv[1:4]
    curve = json.load(open(curve_path))
    report = json.load(open(report_path))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.15]})

    # Left: bytes against KL divergence (log) and top-1 agreement.
    targets = sorted((r for r in curve if r["kind"] == "target"), key=lambda r: r["file_bytes"])
    uniform = [r for r in curve if r["kind"] == "uniform"]
    kb = [r["file_bytes"] / 1000 for r in targets]
    ax.semilogy(kb, [r["kld"] for r in targets], "o-", color="#1f77b4", label="--target-size: KL divergence")
    ax.semilogy([r["file_bytes"] / 1000 for r in uniform], [r["kld"] for r in uniform], "s", color="#1f77b4",
                mfc="none", label="uniform q4 / q3 / q2: KL divergence")
    for r in uniform:
        ax.annotate(r["label"].split()[1].rstrip(","), (r["file_bytes"] / 1000, r["kld"]), textcoords="offset points",
                    xytext=(5, -11), fontsize=8, color="#1f77b4")
    for r in targets:
        if r.get("prune_ratio"):
            ax.annotate(f"pruned {100 * r['prune_ratio']:.0f}%", (r["file_bytes"] / 1000, r["kld"]),
                        textcoords="offset points", xytext=(4, 5), fontsize=7, color="#555555")
    ax.axhline(0.05, color="#1f77b4", ls=":", lw=1)
    ax.axvline(60, color="#999999", ls=":", lw=1)
    ax.set_xlabel("file size (kB)")
    ax.set_ylabel("mean KL divergence from FP32 (nats, evaluation text)", color="#1f77b4")
    ax2 = ax.twinx()
    ax2.plot(kb, [100 * r["top1"] for r in targets], "^-", color="#d62728", label="--target-size: top-1 agreement")
    ax2.plot([r["file_bytes"] / 1000 for r in uniform], [100 * r["top1"] for r in uniform], "^", color="#d62728",
             mfc="none", label="uniform: top-1 agreement")
    ax2.axhline(80, color="#d62728", ls=":", lw=1)
    ax2.set_ylabel("top-1 agreement with FP32 (%)", color="#d62728")
    ax2.set_ylim(0, 100)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
    ax.set_title("Upstream micro model: size against loss (dotted: the 60 kB goal)", fontsize=10)

    # Right: the bytes of each part by dtype, and what pruning kept.
    parts, order = {}, []
    for t in report["tensors"]:
        p = part_of(t["name"])
        if p not in parts:
            parts[p] = {}
            order.append(p)
        parts[p][t["dtype"]] = parts[p].get(t["dtype"], 0) + t["bytes"]
    parts["other"] = {"header, metadata, tokenizer": report["overhead_bytes"]}
    order.append("other")
    pruned = pruned_units(report)
    y = list(range(len(order)))[::-1]
    seen = set()
    for yi, p in zip(y, order):
        left = 0
        for dtype, b in sorted(parts[p].items(), key=lambda kv: -kv[1]):
            color = DTYPE_COLORS.get(dtype, "#c5b0d5")
            bx.barh(yi, b / 1000, left=left / 1000, color=color, edgecolor="white",
                    label=dtype if dtype not in seen else None)
            seen.add(dtype)
            left += b
        note = "  ".join(v for k, v in pruned.items() if k == p or k == p + " experts")
        bx.text(left / 1000 + 0.2, yi, f"{left / 1000:.1f} kB" + (f"  ({note})" if note else ""), va="center",
                fontsize=8)
    bx.set_yticks(y)
    bx.set_yticklabels(order, fontsize=9)
    bx.set_xlabel("bytes (kB)")
    bx.set_xlim(0, max(sum(v.values()) for v in parts.values()) / 1000 * 1.9)
    bx.legend(fontsize=8, loc="lower right", title="dtype", title_fontsize=8)
    bx.set_title(f"--target-size {report['target_bytes']:,}: {report['file_bytes']:,} bytes, "
                 f"pruned {100 * report['prune_ratio']:.0f}% of the prunable weights", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, metadata={"Date": None})


if __name__ == "__main__":
    main()

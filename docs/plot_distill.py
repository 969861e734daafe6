#!/usr/bin/python3
"""Draws docs/distill.svg from docs/measure_distill.sh's curve (docs/distill_curve.json).

usage: /usr/bin/python3 docs/plot_distill.py CURVE.json OUT.svg

Held-out perplexity of the shipped KJV model's held-out chapters (`itera-run ppl`) against file
size: the teacher compressed (itera-convert, pruning, recovery fine-tuning) and distilled
students; the teacher's FP32 perplexity and the issue's 1.35x line for reference. Needs Debian's
python3-matplotlib.
"""
import json
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"teacher": ("o-", "#1f77b4", "teacher compressed (prune + low-bit + recovery fine-tuning)"),
         "student": ("s-", "#d62728", "distilled student, converted")}


def main():
    curve_path, out_path = sys.argv[1:3]
    curve = json.load(open(curve_path))
    fig, ax = plt.subplots(figsize=(9, 5.4))
    for line, (marker, color, label) in STYLE.items():
        rows = sorted((r for r in curve["rows"] if r["line"] == line), key=lambda r: r["file_bytes"])
        ax.plot([r["file_bytes"] / 1000 for r in rows], [r["ppl"] for r in rows], marker, color=color, label=label)
        for r in rows:
            ax.annotate(r["short"], (r["file_bytes"] / 1000, r["ppl"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, color=color)
    fp32 = curve["teacher_fp32_ppl"]
    ax.axhline(fp32, color="#4c4c4c", ls="--", lw=1,
               label=f"teacher FP32 ({fp32:.2f}, {curve['teacher_fp32_bytes']:,}-byte .itl)")
    ax.axhline(1.35 * fp32, color="#999999", ls=":", lw=1, label=f"1.35x the teacher ({1.35 * fp32:.1f}): the goal")
    for x, text in ((83.702, "30x (83,702 B)"), (60.0, "60 kB")):
        ax.axvline(x, color="#999999", ls=":", lw=1)
        ax.text(x, ax.get_ylim()[1], text, fontsize=7, color="#555555", ha="center", va="bottom")
    ax.set_xscale("log")
    ticks = [40, 60, 84, 100, 120, 160, 200, 250]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlim(38, 265)
    ax.set_xlabel("file size (kB, log scale)")
    ax.set_ylabel("held-out perplexity (itera-run ppl, 44,540 targets)")
    ax.set_title("Shipped KJV model: compressing the teacher against distilling a student", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_path, metadata={"Date": None})


if __name__ == "__main__":
    main()

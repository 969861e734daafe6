"""Convert a PyTorch checkpoint into a .itl model and generate text with it.

    python examples/python/convert_and_generate.py [CHECKPOINT.pt TOKENIZER.json] [--quant q4] [-o OUT.itl]

Defaults: the shipped checkpoint (models/itera_lite_kjv.pt and its tokenizer), q4, a temporary file.
"""
import argparse
import os
import tempfile

import itera

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=os.path.join(ROOT, "models", "itera_lite_kjv.pt"))
    ap.add_argument("tokenizer", nargs="?", default=os.path.join(ROOT, "models", "tokenizer_kjv.json"))
    ap.add_argument("--quant", default="q4", help="fp32, fp16, q8, q4, nf4, q3 or q2 (default q4)")
    ap.add_argument("-o", "--output", help="the .itl file (default: a temporary one)")
    ap.add_argument("--prompt", default="and god said")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        output = args.output or os.path.join(tmp, "model.itl")
        report = itera.convert(args.checkpoint, output, tokenizer=args.tokenizer, quant=args.quant)
        dtypes = sorted({t["dtype"] for t in report["tensors"]})
        print(f"converted {os.path.basename(args.checkpoint)} -> {os.path.getsize(output):,} bytes "
              f"({len(report['tensors'])} tensors: {', '.join(dtypes)})")

        model = itera.Model(output)
        print(f"{args.prompt}", end="", flush=True)
        for piece in model.generate(args.prompt, max_tokens=30, greedy=True):  # streamed as sampled
            print(piece, end="", flush=True)
        print()
        print("sampled:", model.complete(args.prompt, max_tokens=20, seed=1))


if __name__ == "__main__":
    main()

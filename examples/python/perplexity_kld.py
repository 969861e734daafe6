"""Evaluate quantized conversions of a checkpoint against its FP32 conversion: perplexity of a text,
and the KL divergence from FP32 and top-1 agreement (`itera-run ppl --kld-ref`).

    python examples/python/perplexity_kld.py TEXT [--checkpoint M.pt --tokenizer T.json] [--quants q8 q4 q3]
        [--calib CALIB.txt]

TEXT: held-out text in the tokenizer's spelling, for the shipped model models/make_corpus.py's
heldout.txt (`python3 models/make_corpus.py /tmp/kjv`). With --calib, every block format is also
converted with GPTQ on that calibration text.
"""
import argparse
import os
import tempfile

import itera

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("text")
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "models", "itera_lite_kjv.pt"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "tokenizer_kjv.json"))
    ap.add_argument("--quants", nargs="+", default=["fp16", "q8", "q4", "q3"])
    ap.add_argument("--calib", help="calibration text: also convert each block format with GPTQ")
    args = ap.parse_args()
    with open(args.text, encoding="utf-8") as f:
        text = f.read()

    with tempfile.TemporaryDirectory() as tmp:
        def convert(name, **options):
            path = os.path.join(tmp, name + ".itl")
            itera.convert(args.checkpoint, path, tokenizer=args.tokenizer, **options)
            return itera.Model(path), os.path.getsize(path)

        fp32, size = convert("fp32")
        base = fp32.perplexity(text)
        print(f"{base.tokens:,} tokens ({base.unk_fraction:.2%} <UNK>), windows of {fp32.max_seq_length}")
        print(f"{'model':<10} {'bytes':>9} {'ppl':>9} {'KLD vs fp32':>12} {'top-1':>7}")
        print(f"{'fp32':<10} {size:>9,} {base.ppl:>9.4f} {'':>12} {'':>7}")
        variants = [(q, dict(quant=q)) for q in args.quants]
        if args.calib:
            variants += [(q + "+gptq", dict(quant=q, calib=args.calib)) for q in args.quants if q.startswith(("q", "nf"))]
        for name, options in variants:
            model, size = convert(name.replace("+", "_"), **options)
            r = model.perplexity(text, kld_ref=fp32)  # the same windows on both models
            print(f"{name:<10} {size:>9,} {r.ppl:>9.4f} {r.kld:>12.6f} {r.top1:>7.2%}")


if __name__ == "__main__":
    main()

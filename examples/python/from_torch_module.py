"""Convert a live torch.nn.Module (its state dict, in memory: no .pt file), check its logits against
PyTorch's, generate, and score a quantized copy against FP32.

    python examples/python/from_torch_module.py [TEXT] [--quant q4]

The module is the PyTorch reference of Itera-Lite (tests/reference/itera_lite.py) with the shipped
checkpoint's weights loaded; any module whose state dict has upstream IteraLiteModel's keys works
the same way (train it, prune it, then convert). TEXT (optional) is scored with perplexity and KLD.
"""
import argparse
import os
import sys
import tempfile

import torch

import itera

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
from itera_lite import IteraLite  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("text", nargs="?")
    ap.add_argument("--quant", default="q4")
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "tokenizer_kjv.json"))
    args = ap.parse_args()

    checkpoint = torch.load(os.path.join(ROOT, "models", "itera_lite_kjv.pt"), map_location="cpu")
    config = checkpoint["config"]
    module = IteraLite(config, tied=True).eval()
    module.load_state_dict(checkpoint["model_state_dict"])  # or train it here

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, quant_path = os.path.join(tmp, "fp32.itl"), os.path.join(tmp, args.quant + ".itl")
        # The state dict goes in as it is (itera.checkpoint_bytes writes it in torch.save's format).
        itera.convert(module.state_dict(), fp32_path, tokenizer=args.tokenizer, config=config)
        itera.convert(module.state_dict(), quant_path, tokenizer=args.tokenizer, config=config, quant=args.quant)
        fp32, quant = itera.Model(fp32_path), itera.Model(quant_path)

        prompt = "and god said , let there be light"
        ids = fp32.tokenize(prompt)
        with torch.no_grad():
            want = module(torch.tensor([ids]))[0, -1].numpy()
        got = fp32.context().eval(ids)
        diff = abs(got - want).max()
        print(f"logits after {prompt!r}: max |itera fp32 - torch| = {diff:.2e} (of a range of {want.max() - want.min():.1f})")
        print(f"argmax: torch {fp32.piece(int(want.argmax()))!r}, itera {fp32.piece(int(got.argmax()))!r}")
        torch_text = fp32.detokenize(module.generate_greedy(ids, 15))
        print(f"greedy, torch:      {torch_text}")
        print(f"greedy, itera fp32: {fp32.complete(prompt, max_tokens=15, greedy=True).strip()}")
        print(f"greedy, itera {args.quant}:   {quant.complete(prompt, max_tokens=15, greedy=True).strip()}")
        if args.text:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
            r = quant.perplexity(text, kld_ref=fp32)
            print(f"{args.quant}: ppl {r.ppl:.4f} (fp32 {fp32.perplexity(text).ppl:.4f}), KLD vs fp32 {r.kld:.6f}, "
                  f"top-1 {r.top1:.2%} over {r.scored:,} positions")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Writes tiny Itera-Lite checkpoints and a tiny tokenizer as fuzz seeds (tools/fuzz.sh).

usage: /usr/bin/python3 fuzz/make_tiny_checkpoints.py OUTDIR

A few KB each, so that the fuzzer's mutations land on the zip and pickle structure rather than
on tensor bytes; between them they cover the layouts the converter reads (bare state dict, dict
with a config dict or a pickled config object, fp32 / fp16 / bf16 storage, tied and untied head,
dense and MoE layers, a dynamic-quantized Linear).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "golden"))

import torch  # noqa: E402

from golden_config import GoldenConfig  # noqa: E402
from itera_lite import IteraLite  # noqa: E402

CFG = {"vocab_size": 12, "hidden_size": 8, "num_layers": 2, "ssm_state_size": 4, "ssm_conv_kernel": 2,
       "ssm_expand_factor": 2, "num_experts": 2, "expert_size": 8, "top_k_experts": 1, "moe_layers": [1],
       "max_seq_length": 6}
TOKENS = ["<PAD>", "<UNK>", "<BOS>", "<EOS>", "in", "the", "beginning", "god", "created", "heaven", "and", "earth."]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_checkpoints.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(7)
    moe = IteraLite(CFG, tied=True).eval()
    dense = IteraLite(dict(CFG, moe_layers=[], num_layers=1), tied=False).eval()
    torch.save({"model_state_dict": moe.state_dict(), "config": CFG}, os.path.join(out, "tiny_moe.pt"))
    torch.save(dense.half().state_dict(), os.path.join(out, "tiny_dense_fp16.pt"))
    torch.save({"model_state_dict": moe.bfloat16().state_dict(), "config": GoldenConfig(**CFG)},
               os.path.join(out, "tiny_config_object_bf16.pt"))
    # A dynamic-quantized Linear: `<m>._packed_params._packed_params` is a (qint8 weight, bias) tuple.
    q = torch.ao.nn.quantized.dynamic.Linear(4, 3)
    torch.save(q.state_dict(), os.path.join(out, "tiny_qint8_linear.pt"))
    with open(os.path.join(out, "tiny_tokenizer.json"), "w") as f:
        json.dump({"vocab_size": len(TOKENS), "token_to_id": {t: i for i, t in enumerate(TOKENS)},
                   "id_to_token": {str(i): t for i, t in enumerate(TOKENS)}}, f)
    with open(os.path.join(out, "tiny_config.json"), "w") as f:
        json.dump(CFG, f)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Train the small Itera-Lite model shipped in models/ on the King James Bible.

Usage: /usr/bin/python3 models/make_corpus.py /tmp/kjv
       /usr/bin/python3 models/train.py /tmp/kjv [--steps N]   (see README.md for the BLAS used)
       /usr/bin/python3 models/train.py /tmp/kjv --eval-only   (measure the committed files)
Writes models/itera_lite_kjv.pt ({'model_state_dict', 'config'}) and models/tokenizer_kjv.json
(upstream FrequencyTokenizer layout). Objective: the logit at position t is trained on token t+1.
The model is the reference module tests/reference/itera_lite.py; for speed only, training swaps
its per-token SSM loop for an equivalent closed form, checked against the loop before and after.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time
import types
from collections import Counter

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before torch loads the BLAS
# glibc hands every freed block above 128 kB back to the kernel, so each step's activations were
# mapped and faulted in again: 40% of a small model's step was system time. Keep them.
ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
ctypes.CDLL("libc.so.6").mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
from itera_lite import IteraLite  # noqa: E402

CONFIG = {  # upstream key names; dense FFN layers take width expert_size
    "vocab_size": 3000,
    "hidden_size": 96,
    "num_layers": 2,
    "ssm_state_size": 16,
    "ssm_conv_kernel": 4,
    "ssm_expand_factor": 2,
    "num_experts": 4,
    "expert_size": 128,
    "top_k_experts": 2,
    "moe_layers": [1],
    "max_seq_length": 128,
}
SPECIALS = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"]
UNK = 1
PROMPTS = ["in the beginning god", "and the lord said unto moses ,", "blessed are the"]


def build_tokenizer(words, vocab_size):
    # Counter keeps first-seen order and most_common sorts stably: ties stay in first-seen order.
    kept = [w for w, c in Counter(words).most_common(vocab_size - len(SPECIALS)) if c >= 2]
    itos = SPECIALS + kept
    return {"vocab_size": len(itos),
            "token_to_id": {w: i for i, w in enumerate(itos)},
            "id_to_token": {str(i): w for i, w in enumerate(itos)}}


def encode(tok, words):
    return torch.tensor([tok["token_to_id"].get(w, UNK) for w in words], dtype=torch.long)


def fast_ssm_forward(self, h, chunk=16):
    """SSMBlock.forward with the time loop replaced by a chunked closed form. Inside a chunk,
    s_t = sum_{k<=t} exp(A * sum_{j=k+1..t} dt_j) * dt_k * (v_k B^T), plus the state carried
    in from the previous chunk decayed by exp(A * sum_{j<=t} dt_j); chunks run in sequence."""
    Bn, L = h.shape[0], h.shape[1]
    assert L % chunk == 0
    u, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)
    v = F.silu(self.conv1d(u.transpose(1, 2))[..., :L].transpose(1, 2))
    dt = F.softplus(self.ssm.delta_proj(v)).mean(dim=-1)  # [B, L]
    A = -torch.exp(self.ssm.A_log)  # [N]
    N = A.shape[0]
    dtc = dt.view(Bn, L // chunk, chunk)  # [B, c, t]
    inp = (dt[..., None] * (v @ self.ssm.B.t())).view(Bn, L // chunk, chunk, N)  # [B, c, k, N]
    after = torch.ones(chunk, chunk).tril(-1)  # [j, k]: j > k
    seg = torch.cumsum(dtc[..., None] * after, dim=2)  # [B, c, t, k]: sum of dt_j, k < j <= t
    decay = torch.exp(seg[..., None] * A) * torch.ones(chunk, chunk).tril()[..., None]
    local = (decay * inp[:, :, None]).sum(dim=3)  # [B, c, t, N]: chunk started from zero state
    carry = torch.exp(torch.cumsum(dtc, dim=2)[..., None] * A)  # [B, c, t, N]
    s, states = torch.zeros(Bn, N), []
    for c in range(L // chunk):
        sc = local[:, c] + carry[:, c] * s[:, None]
        states.append(sc)
        s = sc[:, -1]
    y = torch.cat(states, dim=1) @ self.ssm.C.t() + self.ssm.D * v
    return h + self.out_proj(y * F.silu(z))


def use_fast_ssm(model, on):
    for layer in model.layers:
        if on:
            layer.ssm.forward = types.MethodType(fast_ssm_forward, layer.ssm)
        elif "forward" in vars(layer.ssm):
            del layer.ssm.forward


def max_diff_fast_vs_reference(model, ids):
    with torch.no_grad():
        use_fast_ssm(model, False)
        ref = model(ids)
        use_fast_ssm(model, True)
        fast = model(ids)
        use_fast_ssm(model, False)
    return (ref - fast).abs().max().item(), ref.abs().max().item()


@torch.no_grad()
def perplexity(model, ids, P):
    """Non-overlapping windows of P inputs from zero state, every input with a next token scored.
    Returns (ppl over all targets, ppl over targets that are not <UNK>, number of targets)."""
    nll, n, nll_known, n_known = 0.0, 0, 0.0, 0
    for w in range(0, len(ids) - 1, P):
        x = ids[w:w + P + 1]
        losses = F.cross_entropy(model(x[None, :-1])[0, :len(x) - 1], x[1:], reduction="none")
        known = x[1:] != UNK
        nll, n = nll + losses.sum().item(), n + len(losses)
        nll_known, n_known = nll_known + losses[known].sum().item(), n_known + int(known.sum())
    return math.exp(nll / n), math.exp(nll_known / n_known), n


def decode(tok, ids):
    return " ".join(tok["id_to_token"].get(str(i), "<UNK>") for i in ids)


def measure(out, train, held):
    """Held-out numbers and greedy samples from the files on disk, run by the reference module."""
    with open(os.path.join(out, "tokenizer_kjv.json"), encoding="utf-8") as f:
        tok = json.load(f)
    saved = torch.load(os.path.join(out, "itera_lite_kjv.pt"))
    model = IteraLite(saved["config"], tied=True)
    model.load_state_dict(saved["model_state_dict"])
    model.eval()
    P = saved["config"]["max_seq_length"]
    ppl, ppl_known, n = perplexity(model, held, P)
    print(f"held-out next-token perplexity over {n} targets: {ppl:.2f} all targets, "
          f"{ppl_known:.2f} excluding <UNK> targets (<UNK> rate {(held == UNK).float().mean():.2%})")
    ppl, ppl_known, n = perplexity(model, train[:len(held)], P)
    print(f"train split (first {n} targets) perplexity: {ppl:.2f} all, {ppl_known:.2f} excluding <UNK>")
    for prompt in PROMPTS:
        ids = encode(tok, prompt.split()).tolist()
        print(f"greedy: {prompt} | {decode(tok, model.generate_greedy(ids, 40))}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", help="directory written by make_corpus.py")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--eval-only", action="store_true", help="measure the files in --out, no training")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    def words(part):
        with open(os.path.join(args.corpus, part + ".txt"), encoding="utf-8") as f:
            return f.read().lower().split()

    train_words, held_words = words("train"), words("heldout")
    tok = build_tokenizer(train_words, CONFIG["vocab_size"])
    assert tok["vocab_size"] == CONFIG["vocab_size"]
    train, held = encode(tok, train_words), encode(tok, held_words)
    print(f"tokens: train {len(train)} (<UNK> {(train == UNK).float().mean():.2%}), "
          f"held-out {len(held)} (<UNK> {(held == UNK).float().mean():.2%}), vocab {tok['vocab_size']}")
    if args.eval_only:
        with open(os.path.join(args.out, "tokenizer_kjv.json"), encoding="utf-8") as f:
            assert json.load(f) == tok, "tokenizer file does not match this corpus"
        measure(args.out, train, held)
        return

    model = IteraLite(CONFIG, tied=True)
    print(f"parameters: {sum(p.numel() for p in model.parameters())}")
    P = CONFIG["max_seq_length"]
    probe = torch.randint(0, CONFIG["vocab_size"], (4, P))
    diff, scale = max_diff_fast_vs_reference(model, probe)
    print(f"fast SSM vs reference loop at init: max abs logit diff {diff:.3g} (max |logit| {scale:.3g})")
    assert diff < 1e-5

    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() == 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    use_fast_ssm(model, True)
    model.train()
    t0, running = time.time(), 0.0
    for step in range(args.steps):
        starts = torch.randint(0, len(train) - P - 1, (args.batch,))
        batch = torch.stack([train[s:s + P + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1])  # position t predicts token t+1
        # <UNK> targets are skipped: learning to predict <UNK> makes greedy text emit it everywhere.
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                               ignore_index=UNK)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps} loss {running / 100:.4f} lr {lr_at(step):.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)
            running = 0.0
    wall = time.time() - t0
    print(f"training wall time: {wall:.0f}s")
    model.eval()
    diff, scale = max_diff_fast_vs_reference(model, probe)
    print(f"fast SSM vs reference loop after training: max abs logit diff {diff:.3g} "
          f"(max |logit| {scale:.3g})")

    ckpt = os.path.join(args.out, "itera_lite_kjv.pt")
    torch.save({"model_state_dict": model.state_dict(), "config": dict(CONFIG)}, ckpt)
    with open(os.path.join(args.out, "tokenizer_kjv.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)
    print(f"wrote {ckpt} ({os.path.getsize(ckpt)} bytes)")

    measure(args.out, train, held)

if __name__ == "__main__":
    main()

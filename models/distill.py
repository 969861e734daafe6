#!/usr/bin/python3
"""Distil the shipped KJV model into a student sized for a byte budget.

1. Size: a student configuration (hidden size, layers, SSM inner and state sizes, FFN or MoE
   widths) and the storage type of every tensor, chosen so that the .itl file itera-convert
   writes fits --budget bytes (the converter's block sizes, 64-byte alignment and the tokenizer
   section counted here; the test checks the arithmetic against the converter).
2. Teacher: the shipped model's next-token distribution on fixed windows of the training text,
   cached as its top --topk log-probabilities per position (the rest of the mass as one bucket).
3. Train the student on the teacher's tokenizer and training text: alpha * KL(teacher || student)
   over the top-k + rest buckets plus (1 - alpha) * next-token cross-entropy (`<UNK>` targets left
   out, as the teacher was trained). The embedding starts as the teacher's, projected on its top
   principal directions.
4. Quantization-aware training for the last --qat fraction of the steps: every matrix rounded to
   the block grid it will be stored in (models/recover.py's FakeQuant: the converter's dtype policy
   and format/quant_blocks.cpp's rounding, straight-through estimator).
5. Write {'model_state_dict', 'config'} with the weights before rounding: the printed
   itera-convert command (round-to-nearest, the same dtype per tensor) stores exactly the values
   the last steps trained with (tests/cli/test_distill.py checks the rounding bit for bit).

Usage (corpus from models/make_corpus.py; OpenBLAS as in models/README.md, about 8x faster):
  /usr/bin/python3 models/distill.py /tmp/kjv --budget 83702 --out /tmp/s84k.pt
  itera-convert /tmp/s84k.pt -o /tmp/s84k.itl --tokenizer models/tokenizer_kjv.json --quant q2 ...
--embed-rank R trains a factorized embedding (V x R, then R x H; tied head through the same two
matrices): PyTorch only, the .itl format has no such tensor yet, so it writes no checkpoint.
"""
import argparse
import fnmatch
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import recover as R  # noqa: E402  (imports train, which sets OPENBLAS_NUM_THREADS before torch)
import train as T  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from itera_lite import IteraLite, SSMBlock  # noqa: E402

TEACHER = os.path.join(HERE, "itera_lite_kjv.pt")
TOKENIZER = os.path.join(HERE, "tokenizer_kjv.json")

# ---- 1. sizes: the bytes itera-convert writes -----------------------------------------------------

BLOCK_BYTES = {"q8": 34, "q4": 18, "nf4": 34, "q3": 14, "q2": 18}  # per block of R.BLOCK[dtype]
TOKENIZER_BYTES = 10053  # tokenizer_kjv.json's section as the writer stores it (newline-joined, zstd 19)
HEADER_BYTES = 64
PRECISION_SLACK = 256  # bytes the --precision rules add to the file's compressed provenance, at most


def tensor_bytes(dtype, shape):
    """format/dtype.cpp tensor_bytes: rows of ceil(cols / B) blocks, or 4 / 2 bytes an element."""
    n = math.prod(shape)
    if dtype in ("fp32", "fp16"):
        return n * (4 if dtype == "fp32" else 2)
    cols = shape[-1]
    return n // cols * -(-cols // R.BLOCK[dtype]) * BLOCK_BYTES[dtype]


def align64(n):
    return -(-n // 64) * 64


def stored_tensors(model, quant, keep):
    """(name, shape, dtype) of every tensor itera-convert stores, in the converter's policy."""
    out = []
    for name, p in model.state_dict(keep_vars=True).items():
        if name == "lm_head.weight" or name.endswith("expert_counts"):
            continue  # tied head, training-only buffer
        out.append((name, list(p.shape), R.storage_dtype(name, p.dim(), quant, keep)))
    return out


def lowbit_keep(model):
    """--dtypes lowbit: the embedding (also the head) at q3, every other matrix at 2 or 3 bits,
    whichever stores it in fewer bytes (a row of 32 columns is 14 bytes in q3, 18 in q2, which pays
    a whole 64-element block; ties go to q3), the vectors (LayerNorms, biases, D, A_log) in fp16:
    --keep rules over base q2. A q2 embedding cost the most perplexity in the pilots."""
    out = []
    for name, shape, dtype in stored_tensors(model, "q2", []):
        if name == "embedding.weight" or dtype == "q2" and tensor_bytes("q3", shape) <= tensor_bytes("q2", shape):
            out.append((name, "q3"))
        elif len(shape) == 1:
            out.append((name, "fp16"))
    return out


def file_bytes(model, quant, keep):
    """Predicted .itl size: header, metadata (compressed; estimated, the part that is not exact),
    64-aligned tensors, the tokenizer section. The metadata bound holds for the configurations
    here with a margin (tests/cli/test_distill.py compares it with the converter's files)."""
    tensors = stored_tensors(model, quant, keep)
    data = sum(align64(tensor_bytes(d, s)) for _, s, d in tensors)
    metadata = align64(520 + 16 * len(tensors))
    return HEADER_BYTES + metadata + data + TOKENIZER_BYTES, data


# ---- the student -----------------------------------------------------------------------------------

class FactorizedIteraLite(IteraLite):
    """IteraLite whose embedding is E [V, r] followed by P [H, r] (h = P e), with the head tied
    through both (logits = E P^T norm(h)). Not in the .itl format: a PyTorch measurement."""

    def __init__(self, cfg, rank):
        super().__init__(dict(cfg, hidden_size=cfg["hidden_size"]), tied=True)
        H, V = cfg["hidden_size"], cfg["vocab_size"]
        self.embedding = nn.Embedding(V, rank)
        self.embed_proj = nn.Linear(rank, H, bias=False)
        del self.lm_head

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        h = self.embed_proj(self.embedding(ids)) + self.position_embedding(pos)[None]
        for layer in self.layers:
            h = layer(h)
        return (self.norm(h) @ self.embed_proj.weight) @ self.embedding.weight.t()


def build_student(cfg, rank=0):
    """IteraLite with every SSM block cfg['ssm_inner'] wide (any width, not only expand x H)."""
    base = dict(cfg, ssm_expand_factor=1)
    model = FactorizedIteraLite(base, rank) if rank else IteraLite(base, tied=True)
    H = cfg["hidden_size"]
    for layer in model.layers:
        layer.ssm = SSMBlock(H, cfg["ssm_inner"], cfg["ssm_state_size"], cfg["ssm_conv_kernel"])
    for p in model.parameters():  # IteraLite's initialisation, again for the new blocks
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02 * math.sqrt(64.0 / H))
    return model


def student_config(teacher_cfg, hidden, layers, inner, state, ffn):
    """The teacher's config (vocabulary, conv kernel, max_seq_length) with the student's sizes; every
    layer an SSM block + a dense FFN. Upstream key names, plus ssm_inner (any width)."""
    cfg = dict(teacher_cfg, hidden_size=hidden, num_layers=layers, ssm_state_size=state, ssm_inner=inner,
               ffn_size=ffn, expert_size=ffn, moe_layers=[], num_experts=0)
    cfg["ssm_expand_factor"] = inner // hidden if inner % hidden == 0 else inner / hidden
    return cfg


# Students by size (hidden, layers, SSM inner, SSM state, FFN width), smallest first. --budget takes
# the largest whose lowbit file fits; itera-convert --target-size spends what is left on precision.
LADDER = [(32, 1, 32, 8, 32), (32, 1, 64, 8, 64), (32, 2, 64, 8, 64), (32, 3, 64, 8, 64), (32, 4, 64, 8, 64),
          (64, 1, 64, 8, 64), (64, 2, 64, 8, 64), (64, 2, 128, 8, 128), (64, 3, 128, 16, 128),
          (96, 2, 128, 16, 96), (96, 2, 192, 16, 128)]


def smallest_file(model):
    return file_bytes(model, "q2", lowbit_keep(model))[0]


def choose_student(teacher_cfg, budget):
    sizes = [smallest_file(build_student(student_config(teacher_cfg, *s))) for s in LADDER]
    fits = [s for s, size in zip(LADDER, sizes) if size <= budget]
    if not fits:
        raise SystemExit(f"error: no student fits {budget} bytes: the smallest file is {sizes[0]} bytes")
    return fits[-1]


# ---- 2. the teacher's targets ------------------------------------------------------------------------

def teacher_targets(teacher, train, P, offsets, k, cache_dir):
    """Windows of P + 1 tokens starting at each offset + j * P, and the teacher's top-k
    log-probabilities (fp16) and ids (int16) at each of their P positions. Cached on disk, keyed
    by the teacher's weights, the text, P, offsets and k."""
    key = hashlib.sha256()
    for v in teacher.state_dict().values():
        key.update(v.numpy().tobytes())
    key.update(train.numpy().tobytes())
    key.update(repr((P, offsets, k)).encode())
    path = os.path.join(cache_dir, f"teacher_top{k}_{key.hexdigest()[:16]}.pt")
    if os.path.exists(path):
        return torch.load(path)
    t0 = time.time()
    starts = [o + j * P for o in offsets for j in range((len(train) - o - 1) // P)]
    windows = torch.stack([train[s:s + P + 1] for s in starts])
    logp, ids = [], []
    with torch.no_grad():
        for b in range(0, len(windows), 64):
            lp = F.log_softmax(teacher(windows[b:b + 64, :-1]), dim=-1)
            v, i = lp.topk(k, dim=-1)
            logp.append(v.half())
            ids.append(i.short())
    out = {"windows": windows, "logp": torch.cat(logp), "ids": torch.cat(ids)}
    torch.save(out, path)
    mass = out["logp"].float().exp().sum(-1).mean().item()
    print(f"teacher targets: {len(windows)} windows, top-{k} mass {mass:.3f}, {time.time() - t0:.0f} s -> {path}",
          flush=True)
    return out


class DistillLoss(torch.autograd.Function):
    """alpha * KD + (1 - alpha) * CE per position, averaged, with the gradient written out: over a
    3,000-word vocabulary autograd's chain (log_softmax, gather, log1p, nll_loss) spends most of a
    small student's step building and adding full-size zero tensors. For logits z, p = softmax(z),
    the teacher's top-k probabilities t (sum T), its rest r = 1 - T and the student's top-k mass S:
      KD = -sum_k t_k log p_k - r log(1 - S)     (KL to the teacher up to its entropy)
      dKD/dz_j = p_j (T - r S / (1 - S)) + [j in top-k] (r p_j / (1 - S) - t_j)
      CE = -log p_y over targets that are not <UNK>,  dCE/dz_j = p_j - [j = y]."""

    @staticmethod
    def forward(ctx, logits, targets, t_logp, t_ids, alpha):
        z = logits.detach()
        n = z.shape[0]
        lse = torch.logsumexp(z, dim=1)
        p = (z - lse[:, None]).exp_()
        ids = t_ids.long()
        t = t_logp.float().exp()
        T_ = t.sum(1)
        rest = (1 - T_).clamp(min=0)
        p_top = p.gather(1, ids)
        left = (1 - p_top.sum(1)).clamp(min=1e-6)  # 1 - S
        kd = (-(t * (z.gather(1, ids) - lse[:, None])).sum(1) - rest * left.log()).mean()
        valid = targets != T.UNK
        n_ce = max(int(valid.sum()), 1)
        ce = -(z.gather(1, targets[:, None])[:, 0] - lse)[valid].sum() / n_ce
        grad = p.mul_((alpha / n * (T_ - rest * (1 - left) / left) + (1 - alpha) / n_ce * valid)[:, None])
        grad.scatter_add_(1, ids, alpha / n * (rest[:, None] * p_top / left[:, None] - t))
        grad.scatter_add_(1, targets[:, None], -((1 - alpha) / n_ce * valid.float())[:, None])
        ctx.save_for_backward(grad)
        return alpha * kd + (1 - alpha) * ce, kd, ce

    @staticmethod
    def backward(ctx, grad_loss, _kd, _ce):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None


def distill_loss(logits, targets, t_logp, t_ids, alpha):
    """(loss, KD term, CE term) for logits [B, L, V], targets [B, L], the teacher's top-k [B, L, k]."""
    V, k = logits.shape[-1], t_ids.shape[-1]
    return DistillLoss.apply(logits.reshape(-1, V), targets.reshape(-1), t_logp.reshape(-1, k),
                             t_ids.reshape(-1, k), alpha)


def init_embedding(student, teacher, rank):
    """The teacher's embedding (tied head) projected on its top principal directions: E_t V_r,
    the student rows closest to the teacher's in the least-squares sense; scaled to the
    student's initial row norm so the rest of the student sees inputs of its usual size."""
    E = teacher.embedding.weight.detach()
    _, _, Vt = torch.linalg.svd(E - E.mean(0), full_matrices=False)
    Es = E @ Vt[:rank].t()
    with torch.no_grad():
        w = student.embedding.weight
        w.copy_(Es * (w.norm(dim=1).mean() / Es.norm(dim=1).mean()))
        if hasattr(student, "embed_proj"):  # factorized: P with orthonormal columns keeps the geometry
            nn.init.orthogonal_(student.embed_proj.weight)


# ---- 3, 4. the storage types, training ---------------------------------------------------------------

def converter_plan(student, cfg, budget, convert, tokenizer, calib, work):
    """The storage type of every tensor as `itera-convert --target-size` picks it for this student
    (its measured KL divergence per tensor and dtype, the knapsack): (name, dtype) rules. The
    target is the budget less PRECISION_SLACK: the final file is written with these rules spelled
    out in --precision, which the converter records in the file's provenance."""
    ck, itl, report = (os.path.join(work, n) for n in ("fp32.pt", "plan.itl", "plan.json"))
    torch.save({"model_state_dict": student.state_dict(), "config": cfg}, ck)
    cmd = [convert, ck, "-o", itl, "--tokenizer", tokenizer, "--calib", calib,
           "--target-size", str(budget - PRECISION_SLACK), "--report", report]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed: {done.stderr.strip()}")
    print(done.stdout.strip(), flush=True)
    with open(report) as f:
        precision = json.load(f)["precision"]
    return [tuple(rule.rsplit("=", 1)) for rule in precision.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", help="directory written by make_corpus.py")
    ap.add_argument("--budget", type=int, default=0,
                    help="file size in bytes: picks the student from LADDER unless --student is given")
    ap.add_argument("--student", help="hidden,layers,inner,state,ffn (e.g. 32,2,64,8,64): every layer an SSM "
                                      "block of that inner width and state + a dense FFN")
    ap.add_argument("--embed-rank", type=int, default=0, help="factorized embedding V x R (PyTorch only)")
    ap.add_argument("--dtypes", default="target-size",
                    help="storage types: target-size (itera-convert --target-size --budget picks them, needs "
                         "--convert), lowbit (q2 or q3 per matrix, fp16 vectors), or one of fp32 fp16 q8 q4 "
                         "nf4 q3 q2 (itera-convert --quant)")
    ap.add_argument("--convert", help="itera-convert, for --dtypes target-size and to write OUT.itl")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--qat", type=float, default=0.3, help="fraction of the steps (the last) with fake quantization")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=0.7, help="weight of the KL term (1 - alpha: cross-entropy)")
    ap.add_argument("--topk", type=int, default=32, help="teacher probabilities kept per position")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-tokens", type=int, default=0, help="score only the first N held-out tokens (0: all)")
    ap.add_argument("--out", help="checkpoint to write; with --convert also OUT.itl (not with --embed-rank)")
    args = ap.parse_args()
    if args.embed_rank and (args.out or args.dtypes == "target-size"):
        raise SystemExit("error: --embed-rank has no .itl form yet: it measures in PyTorch (give --dtypes "
                         "lowbit or a dtype, and no --out)")
    if args.dtypes == "target-size" and not (args.convert and args.budget):
        raise SystemExit("error: --dtypes target-size needs --budget and --convert")
    if args.dtypes not in ("target-size", "lowbit") + tuple(R.BLOCK) + ("fp32", "fp16"):
        raise SystemExit(f"error: unknown --dtypes {args.dtypes}")
    if not args.student and not args.budget:
        raise SystemExit("error: give --budget or --student")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    saved = torch.load(TEACHER)
    teacher = IteraLite(saved["config"], tied=True)
    teacher.load_state_dict(saved["model_state_dict"])
    teacher.eval()
    T.use_fast_ssm(teacher, True)
    shape = [int(x) for x in args.student.split(",")] if args.student else choose_student(saved["config"], args.budget)
    cfg = student_config(saved["config"], *shape)
    student = build_student(cfg, args.embed_rank)
    params = sum(p.numel() for p in student.parameters())
    smallest = smallest_file(student)
    print(f"student: hidden {cfg['hidden_size']}, {cfg['num_layers']} layers, SSM inner {cfg['ssm_inner']} state "
          f"{cfg['ssm_state_size']}, FFN {cfg['ffn_size']}" + (f", embedding rank {args.embed_rank}" if args.embed_rank
                                                                  else "") +
          f": {params} parameters, lowbit file {smallest} bytes"
          + (f", budget {args.budget}" if args.budget else ""), flush=True)
    if args.budget and smallest > args.budget:
        raise SystemExit(f"error: this student's lowbit file is {smallest} bytes, over the budget of {args.budget}")
    init_embedding(student, teacher, args.embed_rank or cfg["hidden_size"])

    with open(TOKENIZER, encoding="utf-8") as f:
        tok = json.load(f)

    def words(part):
        with open(os.path.join(args.corpus, part + ".txt"), encoding="utf-8") as f:
            return f.read().lower().split()

    train, held = T.encode(tok, words("train")), T.encode(tok, words("heldout"))
    if args.eval_tokens:
        held = held[:args.eval_tokens + 1]
    P = cfg["max_seq_length"]
    tt = teacher_targets(teacher, train, P, (0, P // 2), args.topk, args.corpus)
    T.use_fast_ssm(student, True)
    fq = None

    def evaluate():
        student.eval()
        T.use_fast_ssm(student, False)
        if fq:
            fq.round()
        ppl, ppl_known, _ = T.perplexity(student, held, P)
        if fq:
            fq.restore()
        T.use_fast_ssm(student, True)
        student.train()
        return ppl, ppl_known

    decay = [p for p in student.parameters() if p.dim() == 2]
    no_decay = [p for p in student.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    qat_from = int(args.steps * (1 - args.qat)) if args.dtypes != "fp32" else args.steps
    work = tempfile.mkdtemp(prefix="distill-")
    calib = os.path.join(work, "calib.txt")
    with open(os.path.join(args.corpus, "train.txt"), "rb") as f, open(calib, "wb") as c:
        c.write(f.read(60000))  # the calibration text of docs/compression.md
    rules = []
    t0, running = time.time(), torch.zeros(3)
    student.train()
    for step in range(args.steps):
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / (args.steps - args.warmup))))
        for group in opt.param_groups:
            group["lr"] = lr
        if step == qat_from:
            print(f"step {step}: held-out perplexity {evaluate()[0]:.2f} in FP32 ({time.time() - t0:.0f} s)", flush=True)
            T.use_fast_ssm(student, False)
            if args.dtypes == "target-size":
                rules = converter_plan(student, cfg, args.budget, args.convert, TOKENIZER, calib, work)
            elif args.dtypes == "lowbit":
                rules = lowbit_keep(student)
            T.use_fast_ssm(student, True)
            base = {"target-size": "fp32", "lowbit": "q2"}.get(args.dtypes, args.dtypes)  # what the rules refine
            rules = [(n, R.storage_dtype(n, len(s), base, rules)) for n, s, _ in stored_tensors(student, "fp32", [])]
            fq = R.FakeQuant(student, "fp32", rules)
            print(f"fake quantization from here, file {file_bytes(student, 'fp32', rules)[0]} bytes (predicted)",
                  flush=True)
        w = torch.randint(0, len(tt["windows"]), (args.batch,))
        batch = tt["windows"][w]
        if fq:
            fq.round()
        loss, kd, ce = distill_loss(student(batch[:, :-1]), batch[:, 1:], tt["logp"][w], tt["ids"][w], args.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if fq:
            fq.restore()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        running += torch.tensor([loss.item(), kd.item(), ce.item()])
        if (step + 1) % 100 == 0:
            l, k, c = (running / 100).tolist()
            print(f"step {step + 1}/{args.steps}: loss {l:.3f} (kd {k:.3f}, ce {c:.3f}) lr {lr:.2e} "
                  f"{time.time() - t0:.0f} s", flush=True)
            running.zero_()
    wall = time.time() - t0
    ppl, ppl_known = evaluate()
    print(f"trained {args.steps} steps in {wall:.0f} s; held-out perplexity {ppl:.2f} ({ppl_known:.2f} without "
          f"<UNK> targets), weights as stored", flush=True)
    if args.out:
        # The weights before rounding: the converter rounds them as fake_quant did. (Rounded q3
        # weights would be rounded again and move: its scale search is not idempotent.)
        T.use_fast_ssm(student, False)
        torch.save({"model_state_dict": student.state_dict(), "config": cfg}, args.out)
        precision = ",".join(f"{n}={d}" for n, d in rules)
        stem = os.path.splitext(args.out)[0]
        with open(stem + ".precision", "w") as f:
            f.write(precision + "\n")
        cmd = [args.convert or "itera-convert", args.out, "-o", stem + ".itl", "--tokenizer", TOKENIZER]
        cmd += ["--precision", precision] if rules else []
        print(f"wrote {args.out} and {stem}.precision (the storage type of every tensor)", flush=True)
        if args.convert:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"error: itera-convert failed: {done.stderr.strip()}")
            size = os.path.getsize(stem + ".itl")
            print(done.stdout.strip() + (f" (budget {args.budget})" if args.budget else ""), flush=True)
            if args.budget and size > args.budget:
                raise SystemExit(f"error: {stem}.itl is {size} bytes, over the budget of {args.budget}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()

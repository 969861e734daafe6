"""What Python costs: tokens/s of itera's generate() streamed into a Python loop against
`itera-bench`'s decode on the same model in the same run, and 2 Python threads on 2 contexts
against one (docs/python.md has the figures).

usage: PYTHONPATH=build/python build-venv/bin/python bench/python_overhead.py --bench build/itera-bench
           [--model M.itl ...] [--rounds 5] [--tokens 512] [--thread-runs 40]

Per model (the built-in one, then each --model), --rounds rounds, each of: itera-bench -n TOKENS
-r 1 --json (decode: greedy eval + argmax from a 1-token prompt, each token timed, 1 / the median
token), then generate(greedy=True) from the same 1-token prompt streamed into a `for` loop, each
token timed the same way (the time between two pieces: the loop, __next__, eval, sampling, the
piece as a str), then complete() (the same steps without Python per token). Python runs are whole
generations of max_seq_length - 1 tokens (inside the window, as itera-bench stays), TOKENS tokens
per round; whole-run rates are printed too (a loaded machine lowers them, not the medians). The
machine is shared: figures are medians over the rounds, and the ratio is the median of each
round's ratio (the runs of a round are back to back, so they share its load).

Threads: --thread-runs generations of max_seq_length - 1 tokens on the built-in model, by one
thread, then the same number by each of 2 threads on 2 contexts; tokens/s of both, interleaved
over the rounds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import itera


def bench_decode(bench, model_path, tokens):
    cmd = [bench, "-n", str(tokens), "-r", "1", "--json"] + (["-m", model_path] if model_path else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["decode_tok_s"]


def python_rates(model, first, tokens):
    """(streamed tok/s as 1 / the median token, streamed tok/s over whole runs, complete() tok/s over
    whole runs), from generations inside the window until `tokens` tokens each."""
    n = model.max_seq_length - 1
    gaps = []
    streamed_t = streamed_n = 0.0
    clock = time.perf_counter
    while streamed_n < tokens:
        gen = model.generate([first], max_tokens=n, greedy=True)
        next(gen)  # the prompt and the first token: not a decode step
        t0 = last = clock()
        for _ in gen:
            now = clock()
            gaps.append(now - last)  # one token: the loop, __next__, eval, sampling, the piece
            last = now
        streamed_t += last - t0
        streamed_n += n - 1
    complete_t = complete_n = 0.0
    while complete_n < tokens:
        ctx = model.context()
        ctx.eval(first)
        t0 = clock()
        ctx.complete(max_tokens=n - 1, greedy=True)
        complete_t += clock() - t0
        complete_n += n - 1
    return 1 / statistics.median(gaps), streamed_n / streamed_t, complete_n / complete_t

def thread_rate(model, first, runs, n_threads):
    """Tokens/s of n_threads threads, each streaming `runs` generations on its own context."""
    n = model.max_seq_length - 1

    def work():
        for _ in range(runs):
            for _ in model.generate([first], max_tokens=n, greedy=True):
                pass

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n_threads * runs * n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True, help="itera-bench of the same build")
    ap.add_argument("--model", action="append", default=[], help=".itl files besides the built-in model")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--thread-runs", type=int, default=40)
    args = ap.parse_args()
    print(f"itera {itera.version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"python {sys.version.split()[0]}", flush=True)
    for path in [None] + args.model:
        model = itera.Model(path) if path else itera.Model.builtin()
        first = model.tokenize("the")[0] if model.has_tokenizer and path is None else 4
        rows = {k: [] for k in ("c", "token", "streamed", "complete", "ratio")}
        for _ in range(args.rounds):
            c = bench_decode(args.bench, path, args.tokens)
            token, streamed, complete = python_rates(model, first, args.tokens)
            for k, v in (("c", c), ("token", token), ("streamed", streamed), ("complete", complete),
                         ("ratio", token / c)):
                rows[k].append(v)
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"{path or 'built-in'}: itera-bench decode {med['c']:,.0f} tok/s; generate() streamed into a "
              f"Python loop {med['token']:,.0f} tok/s ({100 * med['ratio']:.1f}% of itera-bench; per round "
              f"{', '.join(f'{100 * r:.1f}%' for r in rows['ratio'])}); over whole runs: streamed "
              f"{med['streamed']:,.0f} tok/s, complete() {med['complete']:,.0f} tok/s; medians of {args.rounds} "
              f"rounds", flush=True)
    model = itera.Model.builtin()
    first = model.tokenize("the")[0]
    one, two = [], []
    for _ in range(args.rounds):
        one.append(thread_rate(model, first, args.thread_runs, 1))
        two.append(thread_rate(model, first, args.thread_runs, 2))
    ratios = [b / a for a, b in zip(one, two)]
    print(f"threads (built-in, generate() streamed): 1 thread {statistics.median(one):,.0f} tok/s, 2 threads on 2 "
          f"contexts {statistics.median(two):,.0f} tok/s, {statistics.median(ratios):.2f}x (per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}); load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()

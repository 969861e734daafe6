"""itera-server under load, beside itera-bench -b 64 on the same model in the same run
(docs/server.md). For each model it starts the server (--parallel 64 by default, one batch thread,
as itera-bench's one thread), then repeats, interleaved: bench/server_load at each client count
(whole responses, greedy like itera-bench's argmax, and streamed for the time to first token),
and itera-bench -b 64. It prints the medians over the repeats, the load generator's and the
server's CPU time, and the served/itera-bench ratio.

    /usr/bin/python3 bench/server_bench.py --build build -m build/builtin.itl \
        -m "micro_q4.itl=once upon a time, there was a little fox"

A model given as PATH=PROMPT uses that prompt (its words must be in the model's vocabulary).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time


def start_server(build, model, parallel):
    p = subprocess.Popen([os.path.join(build, "itera-server"), "-m", model, "--port", "0", "--parallel", str(parallel),
                          "--queue", "512"], stdout=subprocess.PIPE, text=True)
    for _ in range(5):
        m = re.search(r"listening on http://[0-9.]+:(\d+)", p.stdout.readline())
        if m:
            return p, int(m.group(1))
    p.kill()
    sys.exit("itera-server did not start")


def load(build, port, prompt, clients, seconds, max_tokens, stream, temperature, server_pid):
    cmd = [os.path.join(build, "server_load"), "--port", str(port), "-p", prompt, "-c", str(clients), "-d", str(seconds),
           "-n", str(max_tokens), "--temperature", str(temperature), "--server-pid", str(server_pid),
           "--json"] + (["--stream"] if stream else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # exit 1 when a request failed
    if p.stderr:
        print(p.stderr.strip(), file=sys.stderr)
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("-m", "--model", action="append", required=True, help="PATH or PATH=PROMPT (repeat for several)")
    ap.add_argument("--clients", default="1,8,64,256")
    ap.add_argument("--parallel", type=int, default=64, help="the server's --parallel")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--max-tokens", type=int, default=100, help="per request (stay inside the window)")
    ap.add_argument("--json", help="write every run here")
    a = ap.parse_args()
    clients = [int(c) for c in a.clients.split(",")]
    runs = []
    models = [m.partition("=")[0] for m in a.model]
    for given in a.model:
        model, _, prompt = given.partition("=")
        prompt = prompt or "and the lord said unto moses ,"
        server, port = start_server(a.build, model, a.parallel)
        try:
            for rep in range(a.repeats):
                for c in clients:
                    for stream, temperature in [(False, 0), (True, 0)] + ([(False, 0.8)] if c == 64 else []):
                        r = load(a.build, port, prompt, c, a.seconds, a.max_tokens, stream, temperature, server.pid)
                        runs.append({"model": model, "rep": rep, "kind": "server", "temperature": temperature, **r})
                bench = subprocess.run([os.path.join(a.build, "itera-bench"), "-m", model, "-b", "64", "--json"],
                                       capture_output=True, text=True, check=True, timeout=600).stdout
                runs.append({"model": model, "rep": rep, "kind": "itera-bench", **json.loads(bench)})
                time.sleep(0.2)
        finally:
            server.terminate()
            server.wait(timeout=60)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    for model in models:
        bench = [r for r in runs if r["model"] == model and r["kind"] == "itera-bench"]
        b64 = med(bench, "batch_tok_s")
        print(f"\n{model}: itera-bench -b 64: {b64:,.0f} tok/s (median of {len(bench)}, "
              f"{min(r['batch_tok_s'] for r in bench):,.0f}-{max(r['batch_tok_s'] for r in bench):,.0f})")
        print(f"{'clients':>7} {'mode':>14} {'tok/s':>9} {'vs -b 64':>8} {'req/s':>8} {'lat p50':>8} {'lat p99':>8} "
              f"{'ttft p50':>8} {'ttft p99':>8} {'gen cpu':>7} {'srv cpu':>7}")
        for c in clients:
            for stream, temperature in [(False, 0), (True, 0), (False, 0.8)]:
                rows = [r for r in runs if r["model"] == model and r["kind"] == "server" and r["clients"] == c
                        and r["stream"] == stream and r["temperature"] == temperature]
                if not rows:
                    continue
                tok = med(rows, "tokens_per_s")
                mode = ("stream" if stream else "whole") + (" greedy" if temperature == 0 else f" t={temperature}")
                ttft = f"{med(rows, 'ttft_p50_ms'):8.2f} {med(rows, 'ttft_p99_ms'):8.2f}" if stream else f"{'':8} {'':8}"
                print(f"{c:7d} {mode:>14} {tok:9,.0f} {tok / b64:8.0%} {med(rows, 'requests_per_s'):8.1f} "
                      f"{med(rows, 'latency_p50_ms'):8.2f} {med(rows, 'latency_p99_ms'):8.2f} {ttft} "
                      f"{med(rows, 'generator_cpu_s') / med(rows, 'wall_s'):7.0%} "
                      f"{med(rows, 'server_cpu_s') / med(rows, 'wall_s'):7.0%}")
        failed = sum(r["failed"] for r in runs if r["model"] == model and r["kind"] == "server")
        print(f"failed requests: {failed}; medians of {a.repeats} interleaved repeats; cpu = core-seconds per second")


if __name__ == "__main__":
    main()

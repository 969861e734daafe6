"""itera on Ray Serve (serve/, docs/scale-out.md) against itera-server, on this machine: served
tokens/s with one replica and with two (one per Ray node), at the same load, with the same model,
in the same run; and itera-server at the same concurrency. The cluster is two Ray nodes on
127.0.0.1 (itera_serve.local_cluster, as the tests), Serve's proxy on the head. Each repeat runs,
in a rotating order: itera-server (--parallel 32, one batch thread), the Serve application scaled
to one replica (on the head), then to two (one per node; scaling keeps the running replica);
bench/server_load drives each (whole responses, greedy, 100 tokens, --clients at once) for
--seconds after its warm-up. Prints medians over the repeats.

    PYTHONPATH=build/python:serve nice $(tools/ray_env.sh) bench/serve_bench.py --build build \
        -m build/builtin.itl --clients 32 --repeats 5 --seconds 5
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import itera_serve.local_cluster as local_cluster  # before Ray: its loopback settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_bench import start_server as start_itera_server  # noqa: E402


def server_load(build, port, prompt, clients, seconds, pid):
    cmd = [os.path.join(build, "server_load"), "--port", str(port), "-p", prompt, "-c", str(clients), "-d",
           str(seconds), "-n", "100", "--temperature", "0", "--json"] + (["--server-pid", str(pid)] if pid else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        print(f"server_load exited {p.returncode}: {p.stderr.strip()[-500:]}", file=sys.stderr)
    return json.loads(p.stdout)


def cpu_by_role():
    """CPU seconds so far of Serve's proxy and replica processes (by their process titles)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {"proxy": 0.0, "replicas": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read()
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = "proxy" if title.startswith(b"ray::ProxyActor") else \
            "replicas" if title.startswith(b"ray::ServeReplica") else None
        if role:
            cpu[role] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("-m", "--model", default="build/builtin.itl")
    ap.add_argument("-p", "--prompt", default="and the lord said unto moses ,")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=32, help="slots per replica, and itera-server's --parallel")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()

    from ray import serve

    from itera_serve.deployment import IteraDeployment

    model = os.path.abspath(a.model)
    server, server_port = start_itera_server(a.build, model, a.parallel)
    local = local_cluster.LocalCluster([{"itera_replica": 1}, {"itera_replica": 1}])
    runs = {"itera-server": [], "serve, 1 replica": [], "serve, 2 replicas": []}
    try:
        local.start()
        port = int(local.url.rsplit(":", 1)[1])
        app = IteraDeployment.options(max_ongoing_requests=a.parallel + 64,
                                      ray_actor_options={"num_cpus": 1, "resources": {"itera_replica": 1}})

        def scale(n):
            serve.run(app.options(num_replicas=n).bind(model=model, parallel=a.parallel, queue=64), name="itera",
                      route_prefix="/")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until the removed replica is gone too
                if dict(serve.status().applications["itera"].deployments["itera"].replica_states) == {"RUNNING": n}:
                    return
                time.sleep(0.2)
            sys.exit(f"the application did not reach {n} replicas")

        for rep in range(a.repeats):
            order = ["itera-server", "serve, 1 replica", "serve, 2 replicas"]
            order = order[rep % 3:] + order[:rep % 3]
            for kind in order:
                if kind == "itera-server":
                    r = server_load(a.build, server_port, a.prompt, a.clients, a.seconds, server.pid)
                    r["cpu"] = f"server {100 * r['server_cpu_s'] / r['wall_s']:.0f}%"
                else:
                    scale(1 if "1 replica" in kind else 2)
                    before = cpu_by_role()
                    r = server_load(a.build, port, a.prompt, a.clients, a.seconds, None)
                    after = cpu_by_role()  # includes server_load's warm-up: a share, not an exact figure
                    r["cpu"] = ", ".join(f"{k} {100 * (after[k] - before[k]) / r['wall_s']:.0f}%" for k in after)
                runs[kind].append(r)
                print(f"  repeat {rep}: {kind:18} {r['tokens_per_s']:9.0f} tok/s, {r['requests_per_s']:7.1f} req/s, "
                      f"latency p50 {r['latency_p50_ms']:.0f} ms, failed {r['failed']}, "
                      f"generator {100 * r['generator_cpu_s'] / r['wall_s']:.0f}%, {r['cpu']} of one core", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
        errors = local.stop()
        if errors:
            print(f"while stopping the cluster: {errors}", file=sys.stderr)

    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    print(f"\n{a.clients} clients, whole responses, greedy, 100 tokens, {a.repeats} repeats of {a.seconds} s; medians:")
    print("| | tok/s | range | req/s | latency p50 / p99 ms | failed |\n|---|---:|---|---:|---|---:|")
    for k, v in runs.items():
        ts = [r["tokens_per_s"] for r in v]
        print(f"| {k} | {med[k]:,.0f} | {min(ts):,.0f}-{max(ts):,.0f} | "
              f"{statistics.median(r['requests_per_s'] for r in v):,.1f} | "
              f"{statistics.median(r['latency_p50_ms'] for r in v):,.0f} / "
              f"{statistics.median(r['latency_p99_ms'] for r in v):,.0f} | {sum(r['failed'] for r in v)} |")
    print(f"2 replicas / 1 replica: {med['serve, 2 replicas'] / med['serve, 1 replica']:.2f}x; "
          f"Serve (1 replica) / itera-server: {med['serve, 1 replica'] / med['itera-server']:.2f}")


if __name__ == "__main__":
    main()

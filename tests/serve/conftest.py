"""The Ray Serve tests' cluster: two Ray nodes on 127.0.0.1 in this process's children
(ray.cluster_utils.Cluster, as Ray's own tests run several nodes on one machine), one CPU each and
one `itera_replica` resource each, so the two replicas land one per node; Serve's HTTP proxy on the
head only, on a free loopback port. The cluster is stopped at the end of the module also when a
test fails (and run_serve_tests.py kills whatever is left)."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

# Ray turns "127.0.0.1" into this machine's outward address unless this is 0 (run_serve_tests.py sets it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# The proxy (on the head only) would route every request to the head's replica while it has room.
os.environ.setdefault("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")


def pytest_addoption(parser):
    parser.addoption("--run", required=True, help="the itera-run binary (the reference text)")
    parser.addoption("--model", required=True, help="the .itl file the replicas serve")
    parser.addoption("--workdir", required=True, help="where logs go")


def pytest_terminal_summary(terminalreporter):
    stats = terminalreporter.stats
    failed = len(stats.get("failed", [])) + len(stats.get("error", []))
    print(f"pytest: {len(stats.get('passed', []))} passed, {failed} failed")


@pytest.fixture(scope="session")
def options(request):
    o = request.config.option
    os.makedirs(o.workdir, exist_ok=True)
    return {"run": os.path.abspath(o.run), "model": os.path.abspath(o.model), "workdir": os.path.abspath(o.workdir)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, body=None, timeout=30):
    """(status, headers, text) of a GET (body None) or a POST of a JSON dict or raw bytes."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def itera_run(options, *args):
    p = subprocess.run([options["run"], "-m", options["model"], *args], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout


class Deployment:
    """The cluster, its nodes, and the Serve application on it."""

    def __init__(self, cluster, head, worker, url):
        self.cluster, self.head, self.worker, self.url = cluster, head, worker, url

    def post(self, body, timeout=30):
        return request(self.url + "/v1/completions", body, timeout)

    def get(self, path, timeout=30):
        return request(self.url + path, None, timeout)


@pytest.fixture(scope="module")
def deployment(options):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from itera_serve.deployment import IteraDeployment

    temp_dir = tempfile.mkdtemp(prefix="itera-ray-")  # short: Ray's socket paths live under it
    node = {"num_cpus": 1, "resources": {"itera_replica": 1}, "node_ip_address": "127.0.0.1"}
    t0 = time.monotonic()
    cluster = None
    try:
        cluster = Cluster(initialize_head=True,
                          head_node_args={**node, "include_dashboard": False, "temp_dir": temp_dir})
        worker = cluster.add_node(**node)
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        # both nodes are 127.0.0.1: the driver must hold the head's raylet, or removing the worker breaks it
        assert ray.get_runtime_context().get_node_id() == cluster.head_node.node_id
        print(f"\n  two Ray nodes up on 127.0.0.1 in {time.monotonic() - t0:.1f} s")
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        app = IteraDeployment.options(num_replicas=2, ray_actor_options={"num_cpus": 1, "resources": {"itera_replica": 1}})
        serve.run(app.bind(model=options["model"], parallel=32, queue=64), name="itera", route_prefix="/")
        print(f"  Serve application with 2 replicas running after {time.monotonic() - t0:.1f} s, "
              f"http://127.0.0.1:{port}")
        yield Deployment(cluster, cluster.head_node, worker, f"http://127.0.0.1:{port}")
    finally:
        t1 = time.monotonic()
        for stop in (lambda: serve.shutdown(), lambda: ray.shutdown(), lambda: cluster and cluster.shutdown()):
            try:
                stop()
            except Exception as e:  # keep stopping the rest
                print(f"  while stopping the cluster: {e!r}")
        shutil.rmtree(temp_dir, ignore_errors=True)
        print(f"  cluster stopped in {time.monotonic() - t1:.1f} s")

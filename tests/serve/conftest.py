"""The Ray Serve tests' cluster: two Ray nodes on 127.0.0.1 (itera_serve.local_cluster), one CPU
and one `itera_replica` resource each, and the application of serve/config.yaml on it (two replicas,
one per node; the model path replaced by the build's). The cluster is stopped at the end of the
module also when a test fails (and run_serve_tests.py kills whatever is left)."""
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import itera_serve.local_cluster  # noqa: F401  before Ray is imported: it sets Ray's loopback environment

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    """The cluster (a LocalCluster), its nodes, and the Serve application on it."""

    def __init__(self, local):
        self.local, self.cluster, self.head, self.worker, self.url = (
            local, local.cluster, local.head, local.workers[0], local.url)

    def post(self, body, timeout=30):
        return request(self.url + "/v1/completions", body, timeout)

    def get(self, path, timeout=30):
        return request(self.url + path, None, timeout)


@pytest.fixture(scope="module")
def deployment(options):
    from ray import serve

    from itera_serve.deployment import IteraDeployment
    from itera_serve.local_cluster import LocalCluster, deployment_options

    args, deploy = deployment_options(os.path.join(SOURCE, "serve", "config.yaml"))
    assert deploy["num_replicas"] == 2 and deploy["ray_actor_options"]["resources"] == {"itera_replica": 1}
    args["model"] = options["model"]
    t0 = time.monotonic()
    local = LocalCluster([{"itera_replica": 1}, {"itera_replica": 1}])
    try:
        local.start()
        print(f"\n  two Ray nodes on 127.0.0.1 and Serve up in {time.monotonic() - t0:.1f} s")
        serve.run(IteraDeployment.options(**deploy).bind(**args), name="itera", route_prefix="/")
        print(f"  serve/config.yaml's application ({deploy['num_replicas']} replicas, {args}) running after "
              f"{time.monotonic() - t0:.1f} s at {local.url}")
        tag = os.environ.get("ITERA_SERVE_TEST_TAG")
        if tag:  # the leftover check of run_serve_tests.py finds the cluster's processes by this tag
            from run_serve_tests import tagged

            titles = " ".join(tagged(tag).values())
            for name in ("gcs_server", "raylet", "ray::ServeReplica", "ray::ProxyActor"):
                assert name in titles, f"{name} does not carry the test's tag: {titles[:500]}"
            print(f"  gcs_server, raylets, Serve's proxy and replicas carry the run's tag ({len(tagged(tag))} processes)")
        yield Deployment(local)
    finally:
        t1 = time.monotonic()
        errors = local.stop()
        print(f"  cluster stopped in {time.monotonic() - t1:.1f} s{': ' + '; '.join(errors) if errors else ''}")

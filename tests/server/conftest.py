"""What the itera-server tests share: starting a server on a free loopback port (it binds port 0
and prints the port), stopping it (SIGTERM, then SIGKILL) also when a test fails, and checking that
it exited 0 with no sanitizer report. Every wait is bounded; ITERA_SANITIZED=1 (the ASan and TSan
builds) stretches the bounds and shrinks the loads."""
import json
import os
import re
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

SANITIZED = os.environ.get("ITERA_SANITIZED") == "1"
SLOW = 10 if SANITIZED else 1  # sanitized builds run 5-20x slower
SANITIZER_REPORT = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")


def pytest_addoption(parser):
    parser.addoption("--server", required=True, help="the itera-server binary")
    parser.addoption("--run", required=True, help="the itera-run binary (the reference for greedy text)")
    parser.addoption("--convert", required=True, help="the itera-convert binary (models for the CLI tests)")
    parser.addoption("--workdir", required=True, help="where logs and screenshots go")


def pytest_terminal_summary(terminalreporter):
    """The closing 'N passed, N failed' line tools/count_tests.py reads."""
    stats = terminalreporter.stats
    failed = len(stats.get("failed", [])) + len(stats.get("error", []))
    print(f"{len(stats.get('passed', []))} passed, {failed} failed")


@pytest.fixture(scope="session")
def options(request):
    o = request.config.option
    os.makedirs(o.workdir, exist_ok=True)
    return {"server": os.path.abspath(o.server), "run": os.path.abspath(o.run), "convert": os.path.abspath(o.convert),
            "workdir": os.path.abspath(o.workdir)}


class Server:
    """One itera-server process. url is http://127.0.0.1:PORT."""

    def __init__(self, binary, args, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        # unbuffered bytes: select() then sees exactly what readline() has not taken yet
        self.proc = subprocess.Popen([binary, "--port", "0", *args], stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL, bufsize=0)
        self.banner = ""
        deadline = time.monotonic() + 30 * SLOW
        while time.monotonic() < deadline:
            # the server prints two whole lines (flushed), then nothing more: wait for one, bounded
            if not select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            self.banner += line
            m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
            if m:
                self.url = f"http://{m.group(1)}:{m.group(2)}"
                self.port = int(m.group(2))
                return
        self.stop()
        raise RuntimeError(f"itera-server did not start: {self.banner!r} {self.stderr()[-2000:]}")

    def stderr(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        """SIGTERM, then SIGKILL after a bound; returns (exit status, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode, self.stderr()

    def get(self, path, headers=None, timeout=30 * SLOW):
        """(status, headers, body text) of GET path."""
        return request(self.url + path, None, headers, timeout)

    def post(self, path, body, headers=None, timeout=60 * SLOW):
        """(status, headers, body text) of POST path with a JSON (dict) or raw (bytes) body."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        return request(self.url + path, data, h, timeout)

    def metric(self, name, headers=None):
        """The value of one Prometheus sample line (name with its labels), 0 when absent."""
        status, _, text = self.get("/metrics", headers)
        assert status == 200, text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def wait_metric(self, name, predicate, seconds=10):
        """Polls /metrics until predicate(value) (bounded); returns the last value."""
        deadline = time.monotonic() + seconds * SLOW
        value = self.metric(name)
        while not predicate(value) and time.monotonic() < deadline:
            time.sleep(0.02)
            value = self.metric(name)
        return value


def request(url, data, headers, timeout):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def stop_and_check(server):
    """Stops the server and fails the test when it did not exit 0 or printed a sanitizer report."""
    status, err = server.stop()
    report = SANITIZER_REPORT.search(err)
    assert report is None, f"sanitizer report in {server.log_path}:\n{err[max(0, report.start() - 200):][:4000]}"
    assert status == 0, f"itera-server exited with {status}: {err[-2000:]}"
    print(f"  server {' '.join(server.proc.args[1:])}: exit 0, no sanitizer report")


@pytest.fixture(scope="session")
def start_server(options):
    """start_server(*args, name=...) -> Server; every server started is stopped and checked at the
    end of the session (or by stop_and_check earlier)."""
    started = []

    def start(*args, name="server"):
        s = Server(options["server"], list(args), os.path.join(options["workdir"], f"{name}-{len(started)}.log"))
        started.append(s)
        return s

    yield start
    errors = []
    for s in started:
        if s.log.closed:
            continue
        try:
            stop_and_check(s)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


@pytest.fixture(scope="session")
def server(start_server):
    """The shared server: the built-in model, 16 slots."""
    return start_server("--parallel", "16", "--queue", "64", "--max-tokens", "100000", name="shared")


def itera_run(options, *args):
    """itera-run's stdout (the reference text), asserting exit 0."""
    p = subprocess.run([options["run"], *args], capture_output=True, text=True, timeout=60 * SLOW,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout

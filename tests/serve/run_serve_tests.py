"""Runs the Ray Serve tests (tests/serve/test_serve.py) and makes sure no Ray process outlives them.

usage: python3 tests/serve/run_serve_tests.py --python-dir BUILD/python --run BUILD/itera-run
           --model BUILD/builtin.itl --workdir DIR

1. tools/ray_env.sh makes or reuses the virtualenv with the pinned ray[serve] (prints how long).
2. pytest runs there in its own session, with PYTHONPATH naming the build's itera module and serve/,
   and a tag in its environment that every process it starts inherits (Ray's gcs_server, raylets,
   workers). It has a time bound; past it the whole session is killed.
3. Whatever still carries the tag afterwards (a cluster a crash left) is killed by its pid, and the
   test fails naming it. Closes with the `N passed, N failed` line of tools/count_tests.py.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
PYTEST_SECONDS = 360  # the tests take about a minute on the 2-core VM


def tagged(tag):
    """pid -> command line of the processes whose environment holds tag."""
    found = {}
    needle = tag.encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")[:100]
        except OSError:  # gone, or not ours to read
            continue
    return found


def kill_tagged(tag, seconds=15):
    """SIGKILLs every tagged process until none is left (bounded); returns what was found first."""
    left = tagged(tag)
    deadline = time.monotonic() + seconds
    while True:
        now = tagged(tag)
        if not now or time.monotonic() > deadline:
            return left, now
        for pid in now:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser()
    for name in ("--python-dir", "--run", "--model", "--workdir"):
        parser.add_argument(name, required=True)
    a = parser.parse_args()
    t0 = time.monotonic()
    env_run = subprocess.run(["sh", os.path.join(SOURCE, "tools", "ray_env.sh")], capture_output=True, text=True)
    if env_run.returncode != 0:
        print(f"tools/ray_env.sh failed:\n{env_run.stderr[-3000:]}\n0 passed, 1 failed")
        sys.exit(1)
    python = env_run.stdout.strip()
    print(f"Ray virtualenv {python}: ready in {time.monotonic() - t0:.1f} s")

    tag = f"ITERA_SERVE_TEST_{uuid.uuid4().hex}"
    env = dict(os.environ, ITERA_SERVE_TEST_TAG=tag, PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([os.path.abspath(a.python_dir), os.path.join(SOURCE, "serve"), HERE]),
               RAY_DEDUP_LOGS="0")  # itera_serve.local_cluster sets Ray's loopback settings
    cmd = [python, "-m", "pytest", os.path.join(HERE, "test_serve.py"), "-v", "-s", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
           "-W", "ignore::DeprecationWarning",
           "--rootdir", HERE, "--run", a.run, "--model", a.model, "--workdir", a.workdir]
    t1 = time.monotonic()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", start_new_session=True)
    try:
        out, _ = child.communicate(timeout=PYTEST_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        out += f"\npytest did not finish within {PYTEST_SECONDS} s: killed\n"
    sys.stdout.write(out)
    print(f"pytest ran {time.monotonic() - t1:.1f} s")
    counts = re.findall(r"^pytest: (\d+) passed, (\d+) failed", out, re.M)
    passed, failed = map(int, counts[-1]) if counts else (0, 1)

    try:
        os.killpg(child.pid, signal.SIGKILL)  # anything left in pytest's session
    except OSError:
        pass
    left, still = kill_tagged(tag)
    if left:
        print(f"Ray processes left after the tests (killed): {sorted(left.values())[:6]} FAIL")
        failed += 1
    else:
        print("no process of the test's cluster left (gcs_server, raylets, workers) OK")
        passed += 1
    if still:
        print(f"could not kill: {still}")
    others = subprocess.run(["pgrep", "-fa", "ray::|raylet|gcs_server"], capture_output=True, text=True).stdout
    if others.strip():  # not tagged: another user's Ray on this machine (listed, not touched)
        print(f"Ray processes of others on this machine (not the test's):\n{others[:1000]}")
    if child.returncode not in (0, 1) and failed == 0:
        failed = 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or child.returncode != 0 else 0)


if __name__ == "__main__":
    main()

"""Runs the Python package's pytest suite (tests/python/) against the module the build made, and
closes with one `N passed, N failed` line for tools/count_tests.py.

usage: PYTHON tests/python/run_tests.py [PYTEST ARGS...]      (meson test runs it: tests/meson.build)

pytest runs in a child process with the same interpreter and environment (PYTHONPATH names the
build's python/ folder; the ASan build preloads the sanitizer runtime). Beyond pytest's own
verdict, the run fails when the child's stderr holds a sanitizer report or nanobind's warning
about objects or types still alive at exit (a reference leak in the binding), or when the child
dies without its summary.
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPORTS = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|nanobind: leaked")


def main():
    cmd = [sys.executable, "-m", "pytest", HERE, "-v", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-o", "console_output_style=classic", "--capture=sys",
           *sys.argv[1:]]
    child = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    sys.stdout.write(child.stdout)
    sys.stdout.write(child.stderr)
    counts = re.findall(r"^pytest: (\d+) passed, (\d+) failed", child.stdout, re.M)
    passed, failed = map(int, counts[-1]) if counts else (0, 1)
    reports = [line for line in child.stderr.splitlines() if REPORTS.search(line)]
    if reports:
        print(f"reports on stderr: {len(reports)} ({reports[0].strip()[:200]}) FAIL")
        failed += 1
    else:
        print("no sanitizer report and no leaked nanobind object on stderr OK")
        passed += 1
    if child.returncode not in (0, 1) and failed == 0:
        failed = 1  # a crash after the summary
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or child.returncode != 0 else 0)


if __name__ == "__main__":
    main()

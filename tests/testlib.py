"""What the Python test drivers share: one printed line per check, the closing
`N passed, N failed` line, running a tool, and the drivers' common arguments."""
import argparse
import os
import shutil
import subprocess
import sys

counts = {"passed": 0, "failed": 0}


def check(ok, line):
    counts["passed" if ok else "failed"] += 1
    print(f"{line} {'OK' if ok else 'FAIL'}", flush=True)
    return ok


def finish(workdir=None):
    """Removes workdir when every check passed (kept on failure, to look at), prints the closing
    line; exits 1 on any failure."""
    if workdir and not counts["failed"]:
        shutil.rmtree(workdir)
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    sys.exit(1 if counts["failed"] else 0)


def run(cmd, timeout=600, cwd=None):
    """(exit status, stdout, stderr); a signal is a negative status, a timeout -999."""
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return -999, "", f"timed out after {timeout} s"
    except OSError as e:
        return -998, "", str(e)


def why(rc, err):
    tail = " | ".join(err.strip().splitlines()[-3:])
    return f"(exit {rc}: {tail[:300]})"


def tool_args(description, programs=()):
    """--convert PATH --run PATH --workdir DIR, and --NAME PATH for each name in programs, as
    absolute paths (the work dir created)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--convert", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--workdir", required=True)
    for name in programs:
        ap.add_argument("--" + name, required=True)
    args = ap.parse_args()
    args.convert, args.run = os.path.abspath(args.convert), os.path.abspath(args.run)
    for name in programs:
        setattr(args, name, os.path.abspath(getattr(args, name)))
    os.makedirs(args.workdir, exist_ok=True)
    args.workdir = os.path.abspath(args.workdir)
    return args

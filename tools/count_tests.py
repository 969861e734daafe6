"""Prints one 'N passed, N failed' line over meson test logs, counting the checks inside each
test (doctest's test cases, the Python drivers' own closing line), not just the test programs."""
import json
import re
import sys

passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        print(f"missing test log {path}")
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        out = t.get("stdout") or ""
        if t["result"] == "SKIP":
            skipped += 1
            continue
        doc = re.search(r"test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed", out)
        plain = re.findall(r"^(\d+) passed, (\d+) failed", out, re.M)
        if doc:
            p, f = int(doc.group(2)), int(doc.group(3))
        elif plain:
            p, f = map(int, plain[-1])
        else:
            p, f = (1, 0) if t["result"] == "OK" else (0, 1)
        if t["result"] != "OK" and f == 0:
            f = 1  # a crash or timeout after the counts were printed
        passed += p
        failed += f
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)

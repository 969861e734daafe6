"""The package's type stub (python/itera/_itera.pyi) is what nanobind's stubgen makes of the built
module: regenerate it with the command in docs/python.md when the binding changes."""
import os
import subprocess
import sys

import itera


def test_stub_matches_the_module(tmp_path):
    out = tmp_path / "_itera.pyi"
    r = subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "itera._itera", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    shipped = os.path.join(os.path.dirname(itera.__file__), "_itera.pyi")
    with open(shipped) as f:
        assert out.read_text() == f.read(), "python/itera/_itera.pyi is stale: see docs/python.md"

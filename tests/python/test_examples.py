"""examples/python/ run as a user runs them (so they cannot rot), on small inputs, and say what
they should: the conversion, streamed and sampled text, perplexity and KLD rows, PyTorch's logits."""
import os
import re
import sys

import pytest

from conftest import ROOT, SANITIZED, run
from test_perplexity import GENESIS

EXAMPLES = os.path.join(ROOT, "examples", "python")


def example(name, *args):
    r = run([sys.executable, os.path.join(EXAMPLES, name), *map(str, args)])
    assert r.returncode == 0, f"{name}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    print(r.stdout)
    return r.stdout


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("examples") / "genesis.txt"
    path.write_text(GENESIS)
    return path


def test_convert_and_generate(tmp_path):
    out = example("convert_and_generate.py", "--quant", "q8", "-o", tmp_path / "kjv-q8.itl", "--prompt", "and god")
    assert re.search(r"converted itera_lite_kjv\.pt -> [\d,]+ bytes \(\d+ tensors: .*q8", out)
    lines = out.splitlines()
    assert lines[1].startswith("and god ") and len(lines[1].split()) > 10
    assert lines[2].startswith("sampled: ")
    assert (tmp_path / "kjv-q8.itl").stat().st_size > 0


def test_perplexity_kld(text, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(GENESIS * 4)
    # GPTQ in the unoptimized ASan build takes minutes: there the calibrated rows are left out.
    out = example("perplexity_kld.py", text, "--quants", "q8", "q4", *([] if SANITIZED else ["--calib", calib]))
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^(\S+)\s+([\d,]+)\s+([\d.]+)(?:\s+([\d.]+)\s+([\d.]+)%)?\s*$",
                                                             out, re.M)}
    assert list(rows) == ["fp32", "q8", "q4"] + ([] if SANITIZED else ["q8+gptq", "q4+gptq"]), out
    assert all(float(rows[m][2]) > 0 for m in ("q8", "q4"))
    assert float(rows["q8"][2]) < float(rows["q4"][2])  # 8 bits stay closer to FP32 than 4


def test_from_torch_module(text):
    pytest.importorskip("torch")
    out = example("from_torch_module.py", text, "--quant", "q4")
    diff = float(re.search(r"max \|itera fp32 - torch\| = (\S+)", out).group(1))
    assert diff < 1e-3
    assert re.search(r"argmax: torch '(.*)', itera '\1'", out)
    assert re.search(r"q4: ppl [\d.]+ \(fp32 [\d.]+\), KLD vs fp32 [\d.]+, top-1 [\d.]+%", out)

"""Fixtures of the Python package's tests (run by run_tests.py, which meson test starts).

Environment (tests/meson.build sets it): PYTHONPATH names the build's python/ folder, ITERA_RUN and
ITERA_CONVERT the build's programs, ITERA_LIB its libitera.so (the C API reached through ctypes,
capi.py), ITERA_BUILTIN_ITL the built-in model's file, ITERA_SANITIZED 1 in the ASan build."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))

import itera  # noqa: E402  (the build's module, through PYTHONPATH)

ITERA_RUN = os.environ.get("ITERA_RUN", "")
ITERA_CONVERT = os.environ.get("ITERA_CONVERT", "")
BUILTIN_ITL = os.environ.get("ITERA_BUILTIN_ITL", "")
SANITIZED = os.environ.get("ITERA_SANITIZED") == "1"

# A tiny MoE model and its word tokenizer (as fuzz/make_tiny_checkpoints.py).
TINY_CFG = {"vocab_size": 12, "hidden_size": 8, "num_layers": 2, "ssm_state_size": 4, "ssm_conv_kernel": 2,
            "ssm_expand_factor": 2, "num_experts": 2, "expert_size": 8, "top_k_experts": 1, "moe_layers": [1],
            "max_seq_length": 6}
TINY_TOKENS = ["<PAD>", "<UNK>", "<BOS>", "<EOS>", "in", "the", "beginning", "god", "created", "heaven", "and",
               "earth."]


def run(cmd, **kw):
    """A program's result; its command and output are in the assertion message when it fails."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, **kw)


def tokenizer_json(tokens):
    return json.dumps({"vocab_size": len(tokens), "token_to_id": {t: i for i, t in enumerate(tokens)},
                       "id_to_token": {str(i): t for i, t in enumerate(tokens)}})


@pytest.fixture(scope="session")
def builtin():
    return itera.Model.builtin()


@pytest.fixture(scope="session")
def builtin_path():
    assert os.path.isfile(BUILTIN_ITL), f"ITERA_BUILTIN_ITL={BUILTIN_ITL!r} is not a file"
    return BUILTIN_ITL


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny model's files: checkpoint (tiny.pt), tokenizer (tiny_tokenizer.json), and .itl
    conversions: tiny.itl (fp32 with the tokenizer), tiny_notok.itl (no tokenizer)."""
    torch = pytest.importorskip("torch")
    from itera_lite import IteraLite

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(7)
    model = IteraLite(TINY_CFG, tied=True).eval()
    torch.save({"model_state_dict": model.state_dict(), "config": TINY_CFG}, d / "tiny.pt")
    (d / "tiny_tokenizer.json").write_text(tokenizer_json(TINY_TOKENS))
    for name, extra in [("tiny.itl", ["--tokenizer", str(d / "tiny_tokenizer.json")]), ("tiny_notok.itl", [])]:
        r = run([ITERA_CONVERT, str(d / "tiny.pt"), "-o", str(d / name), *extra])
        assert r.returncode == 0, r.stderr
    return d


def pytest_terminal_summary(terminalreporter):
    """The counts run_tests.py reads (and turns into the closing `N passed, N failed` line)."""
    stats = terminalreporter.stats
    passed = len(stats.get("passed", []))
    failed = len(stats.get("failed", [])) + len(stats.get("error", []))
    terminalreporter.write_line(f"pytest: {passed} passed, {failed} failed")

"""itera-server's command line: usage errors are one 'error:' line and exit 2, other failures (a
missing model, a model without tokenizer, a port in use, an unreadable key file) one 'error:' line
and exit 1; --help and --version exit 0; -m serves a model file under its name."""
import os
import socket
import subprocess

import pytest

from conftest import SLOW


def run_server(options, *args):
    p = subprocess.run([options["server"], *args], capture_output=True, text=True, timeout=60 * SLOW,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("args", [["--port", "70000"], ["--parallel", "0"], ["--queue", "-1"], ["--device", "tpu"],
                                  ["--threads", "0"], ["--timeout", "0"], ["--max-tokens", "0"], ["--api-key", ""],
                                  ["--api-key", "a", "--api-key-file", "b"], ["-m", ""], ["--bogus"],
                                  ["--max-body", "10"]])
def test_usage_errors(options, args):
    rc, out, err = run_server(options, *args)
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), (rc, out, err)
    print(f"  {' '.join(args) or repr('')}: exit 2, {err.strip()[:100]!r}")


def test_failures(options, tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    no_tok = str(work / "no_tokenizer.itl")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([options["convert"], os.path.join(root, "models", "itera_lite_kjv.pt"), "-o", no_tok],
                       capture_output=True, text=True, timeout=120 * SLOW)
    assert p.returncode == 0, p.stderr
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    cases = [(["-m", str(work / "missing.itl")], "missing.itl"), (["-m", no_tok], "no tokenizer"),
             (["--port", str(busy.getsockname()[1])], "cannot listen"),
             (["--api-key-file", str(work / "nokey")], "cannot read an API key"),
             (["--host", "203.0.113.7"], "cannot listen")]
    for args, why in cases:
        rc, out, err = run_server(options, "--parallel", "1", *args)
        assert rc == 1 and err.count("\n") == 1 and err.startswith("error: ") and why in err, (args, rc, err)
        print(f"  {' '.join(args)}: exit 1, {err.strip()[:100]!r}")
    busy.close()
    for flag in ["--help", "--version"]:
        rc, out, _ = run_server(options, flag)
        assert rc == 0 and out
    print("  --help and --version: exit 0")


def test_model_file_and_alias(options, start_server, tmp_path_factory):
    work = tmp_path_factory.mktemp("model")
    path = str(work / "kjv-fp16.itl")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([options["convert"], os.path.join(root, "models", "itera_lite_kjv.pt"), "--tokenizer",
                        os.path.join(root, "models", "tokenizer_kjv.json"), "--quant", "fp16", "-o", path],
                       capture_output=True, text=True, timeout=120 * SLOW)
    assert p.returncode == 0, p.stderr
    s = start_server("-m", path, "--parallel", "2", name="file")
    status, _, body = s.get("/v1/models")
    assert status == 200 and '"kjv-fp16.itl"' in body
    expected = subprocess.run([options["run"], "-m", path, "-p", "and god said", "-n", "20", "--greedy"],
                              capture_output=True, text=True, timeout=60 * SLOW).stdout
    status, _, body = s.post("/v1/completions", {"prompt": "and god said", "max_tokens": 20, "temperature": 0,
                                                 "echo": True})
    assert status == 200 and __import__("json").loads(body)["choices"][0]["text"] + "\n" == expected
    a = start_server("--alias", "my-model", "--parallel", "1", name="alias")
    assert '"my-model"' in a.get("/v1/models")[2]
    print("  -m FILE: named after the file, greedy text equal to itera-run -m FILE; --alias names the model")

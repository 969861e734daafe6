"""itera.convert and itera.checkpoint_bytes: a .pt path, its bytes and an in-memory state dict (torch
tensors or numpy arrays) give byte-identical .itl files; the model equals itera-convert's (tensors,
logits bit for bit, report); torch.load reads checkpoint_bytes; `import itera` and a numpy state
dict never import torch; bad input raises (TypeError, ValueError, itera.Error subclasses); the GIL
is released while converting."""
import io
import json
import os
import pathlib
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

import itera
from conftest import ITERA_CONVERT, ITERA_RUN, ROOT, SANITIZED, run

KJV_PT = os.path.join(ROOT, "models", "itera_lite_kjv.pt")
KJV_TOKENIZER = os.path.join(ROOT, "models", "tokenizer_kjv.json")
PROMPT = "and god said , let there be light"


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def kjv_state_dict(torch):
    return torch.load(KJV_PT, map_location="cpu")["model_state_dict"]


def read(path):
    return pathlib.Path(path).read_bytes()


def same_model(a, b):
    """Two .itl files hold the same tensors and give the same logits bit for bit."""
    ma, mb = itera.Model(str(a)), itera.Model(str(b))
    assert ma.info["tensors"] == mb.info["tensors"]
    ids = ma.tokenize(PROMPT)
    assert ma.context().eval(ids).tobytes() == mb.context().eval(ids).tobytes()


def test_path_bytes_and_state_dicts_give_the_same_file(tmp_path, torch, kjv_state_dict):
    pt = tmp_path / "kjv.pt"
    pt.write_bytes(itera.checkpoint_bytes(kjv_state_dict))
    numpy_sd = {k: v.numpy() for k, v in kjv_state_dict.items()}
    opts = dict(tokenizer=KJV_TOKENIZER, quant="q4")
    reports = []
    for i, source in enumerate([pt, str(pt), read(pt), bytearray(read(pt)), kjv_state_dict, numpy_sd]):
        name = None if i < 2 else "kjv.pt"  # a path records its file name; bytes and dicts take it
        reports.append(itera.convert(source, tmp_path / f"{i}.itl", source_name=name, **opts))
    files = [read(tmp_path / f"{i}.itl") for i in range(6)]
    assert all(f == files[0] for f in files), [len(f) for f in files]
    assert all(r == reports[0] for r in reports)
    print(f"path, PathLike, bytes, bytearray, torch and numpy state dicts: one file of {len(files[0])} bytes")


def test_state_dict_as_the_shipped_checkpoint(tmp_path, torch, kjv_state_dict):
    """The state dict route converts the same weights as the torch.save'd file (whose bytes differ:
    it holds the config too), and itera-convert makes the same model from that file."""
    itera.convert(KJV_PT, tmp_path / "file.itl", tokenizer=KJV_TOKENIZER, quant="q8")
    itera.convert(kjv_state_dict, tmp_path / "dict.itl", tokenizer=KJV_TOKENIZER, quant="q8")
    cli_args = [KJV_PT, "--tokenizer", KJV_TOKENIZER, "--quant", "q8", "-o", str(tmp_path / "cli.itl"),
                "--report", str(tmp_path / "cli.json")]
    r = run([ITERA_CONVERT] + cli_args)
    assert r.returncode == 0, r.stderr
    same_model(tmp_path / "file.itl", tmp_path / "dict.itl")
    same_model(tmp_path / "file.itl", tmp_path / "cli.itl")
    report = itera.convert(KJV_PT, tmp_path / "again.itl", tokenizer=KJV_TOKENIZER, quant="q8")
    cli = json.loads((tmp_path / "cli.json").read_text())
    # file_bytes differ by the metadata alone: itera-convert records its command line, padded to 64 bytes.
    assert report["tensors"] == cli["tensors"] and set(report) == set(cli)
    assert 0 <= cli["file_bytes"] - report["file_bytes"] <= len(" ".join(cli_args)) + 64
    assert {t["dtype"] for t in report["tensors"]} >= {"q8", "fp32"}


def test_the_builtin_model_from_python(tmp_path, builtin_path):
    """itera.convert with the build's options makes the built-in model's tensors (the build ran
    itera-convert), and the file records the options as itera-convert spells them."""
    itera.convert(KJV_PT, tmp_path / "kjv.itl", tokenizer=pathlib.Path(KJV_TOKENIZER))
    same_model(tmp_path / "kjv.itl", builtin_path)
    r = run([ITERA_RUN, "info", "-m", str(tmp_path / "kjv.itl")])
    assert r.returncode == 0 and f"--tokenizer {KJV_TOKENIZER}" in r.stdout and "itera_lite_kjv.pt" in r.stdout, r.stdout


def test_checkpoint_bytes_load_in_torch(torch):
    sd = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),  # not contiguous
          "b": torch.tensor([1.5, -2], dtype=torch.bfloat16), "c": torch.tensor(7, dtype=torch.int64),
          "d": np.array([[1, 2]], dtype=">i4"), "e": torch.nn.Parameter(torch.ones(2, dtype=torch.float16)),
          "f": np.zeros((0, 4), np.float32), "g": np.array([True, False])}
    data = itera.checkpoint_bytes(sd)
    assert data == itera.checkpoint_bytes(sd)  # the same bytes every time
    back = torch.load(io.BytesIO(data))
    assert list(back) == list(sd)
    for k, v in sd.items():
        want = torch.as_tensor(v.astype(v.dtype.newbyteorder("="))) if isinstance(v, np.ndarray) else v.detach()
        assert back[k].dtype == want.dtype and torch.equal(back[k], want.contiguous()), k
    with zipfile.ZipFile(io.BytesIO(data)) as z:  # tensor data on 64-byte boundaries, as torch.save's
        for info in z.infolist():
            if "/data/" in info.filename:
                assert (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 64 == 0


def test_numpy_state_dicts_need_no_torch(tmp_path, kjv_state_dict):
    np.savez(tmp_path / "sd.npz", **{k: v.numpy() for k, v in kjv_state_dict.items()})
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch fails
import numpy as np
import itera
sd = dict(np.load({str(tmp_path / 'sd.npz')!r}))
itera.convert(sd, {str(tmp_path / 'np.itl')!r}, tokenizer={KJV_TOKENIZER!r}, source_name="kjv.pt")
print("converted without torch")
"""
    r = run([sys.executable, "-c", script])
    assert r.returncode == 0 and "converted without torch" in r.stdout, r.stderr
    itera.convert(kjv_state_dict, tmp_path / "torch.itl", tokenizer=KJV_TOKENIZER, source_name="kjv.pt")
    assert read(tmp_path / "np.itl") == read(tmp_path / "torch.itl")


def test_import_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, itera; print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_bad_arguments(tmp_path):
    out = tmp_path / "x.itl"
    good = read(KJV_PT)
    for source, kwargs, err in [
            (5, {}, TypeError), (None, {}, TypeError), ([1, 2], {}, TypeError),
            (KJV_PT, dict(tokenizer=5), TypeError), (KJV_PT, dict(quant=4), TypeError),
            (KJV_PT, dict(quant="q5"), ValueError), (KJV_PT, dict(top_k=0), ValueError),
            (KJV_PT, dict(top_k=2**21), ValueError), (KJV_PT, dict(top_k="2"), TypeError),
            (KJV_PT, dict(top_k=2.0), TypeError), (KJV_PT, dict(top_k=True), TypeError),
            (KJV_PT, dict(prune=2), ValueError), (KJV_PT, dict(prune=float("nan")), ValueError),
            (KJV_PT, dict(prune="0.5"), TypeError), (KJV_PT, dict(moe_empty="x"), ValueError),
            (KJV_PT, dict(moe_empty=1), TypeError), (KJV_PT, dict(trim_vocab=0), TypeError),
            (KJV_PT, dict(keep=5), TypeError), (KJV_PT, dict(keep=[5]), TypeError), (KJV_PT, dict(keep=b"x"), TypeError),
            (KJV_PT, dict(keep="nonsense"), ValueError), (KJV_PT, dict(precision="embedding=q9"), ValueError),
            (KJV_PT, dict(layout="columns"), ValueError), (KJV_PT, dict(prune_scope=5), TypeError),
            (KJV_PT, dict(target_size=-1), ValueError), (KJV_PT, dict(calib_tokens=0), ValueError),
            (KJV_PT, dict(target_size=100000), ValueError),  # without calib
            (KJV_PT, dict(calib=5), TypeError), (KJV_PT, dict(source_name=5), TypeError),
            (KJV_PT, dict(config={"vocab_size": 12}), itera.FormatError),  # disagrees with the weights
            (KJV_PT, dict(tokenizer="/nonexistent.json"), itera.FileError),
            ("/nonexistent.pt", {}, itera.FileError), (str(tmp_path), {}, itera.FileError),
            (b"", {}, itera.FormatError), (b"not a zip file at all", {}, itera.FormatError),
            (good[: len(good) // 2], {}, itera.FormatError),
            (good[:1000] + bytes([good[1000] ^ 1]) + good[1001:], {}, itera.FormatError),  # CRC of an entry
            ({"embedding.weight": "x"}, {}, TypeError), ({"model_state_dict": {}, "config": {}}, {}, TypeError), ({1: np.zeros(2, np.float32)}, {}, TypeError),
            ({"a": np.zeros(2, np.complex64)}, {}, TypeError),
            ({"embedding.weight": np.zeros((4, 2), np.float32)}, {}, itera.FormatError)]:  # not Itera-Lite
        with pytest.raises(err):
            itera.convert(source, out, **kwargs)
    assert isinstance(itera.InvalidArgumentError("x"), ValueError)
    with pytest.raises(TypeError):
        itera.convert(KJV_PT, 5)
    with pytest.raises(TypeError):
        itera.convert(KJV_PT, out, "q4")  # options are keyword-only
    with pytest.raises(itera.FileError):
        itera.convert(KJV_PT, tmp_path)  # a directory is never replaced
    assert not out.exists()


def test_pickle_code_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:  # data.pkl: os.system("touch ran")
        z.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little") +
                   f"touch {marker}".encode() + b"\x85R.")
    with pytest.raises(itera.FormatError, match="os.system"):
        itera.convert(evil.getvalue(), tmp_path / "x.itl")
    assert not marker.exists()


def test_the_gil_is_released_while_converting(tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("and god said , let there be light : and there was light .\n" * 400)
    progress = 0
    t = threading.Thread(target=itera.convert, args=(KJV_PT, tmp_path / "gil.itl"),
                         kwargs=dict(tokenizer=KJV_TOKENIZER, quant="q4", calib=calib,
                                     calib_tokens=256 if SANITIZED else 4096))
    t.start()
    while t.is_alive():
        progress += 1  # runs only while the other thread is inside the converter without the GIL
    t.join()
    assert progress > 10 and (tmp_path / "gil.itl").exists()

"""itera.Model: loading from a path, a PathLike, bytes and other buffers, the built-in model;
info, tokenizer calls; corrupt input, wrong types, a closed model; pickling."""
import gc
import json
import os
import pathlib
import pickle

import numpy as np
import pytest

import itera
from conftest import ITERA_RUN, run


def test_builtin_queries(builtin):
    assert (builtin.vocab_size, builtin.hidden, builtin.max_seq_length, builtin.n_layers) == (3000, 96, 128, 2)
    assert builtin.has_tokenizer and builtin.eos == 3 and builtin.path is None
    assert builtin.fingerprint != 0
    assert "built-in" in repr(builtin)
    assert itera.__version__ == itera.version() == "0.2.0"


def test_load_path_pathlike_bytes_buffers_agree(builtin, builtin_path):
    data = pathlib.Path(builtin_path).read_bytes()
    models = [itera.Model(builtin_path), itera.Model(pathlib.Path(builtin_path)), itera.Model(data),
              itera.Model(bytearray(data)), itera.Model(memoryview(data)), itera.Model(np.frombuffer(data, np.uint8)),
              itera.Model(builtin_path, verify_checksum=False)]
    assert models[0].path == builtin_path and models[2].path is None
    ids = builtin.tokenize("and god said")
    want = builtin.context().eval(ids)
    for m in models:
        assert m.fingerprint == builtin.fingerprint
        assert m.context().eval(ids).tobytes() == want.tobytes()


def test_copied_buffer_may_change_after_loading(builtin, builtin_path):
    buf = bytearray(pathlib.Path(builtin_path).read_bytes())
    m = itera.Model(buf)
    buf[:] = bytes(len(buf))  # the model holds its own copy
    del buf
    gc.collect()
    ids = builtin.tokenize("in the beginning")
    assert m.context().eval(ids).tobytes() == builtin.context().eval(ids).tobytes()


def test_info_is_itera_run_info_json(builtin_path):
    r = run([ITERA_RUN, "info", "-m", builtin_path, "--json"])
    assert r.returncode == 0, r.stderr
    assert itera.Model(builtin_path).info == json.loads(r.stdout)
    info = itera.Model.builtin().info
    assert info["vocab_size"] == 3000 and info["parameters"] == 623840 and info["file"] == ""
    assert [t["name"] for t in info["tensors"]][:2] == ["embedding.weight", "position_embedding.weight"]
    assert all(set(t) == {"name", "shape", "dtype", "layout", "bytes"} for t in info["tensors"])
    assert [layer["kind"] for layer in info["layers"]] == ["ffn", "moe"]


def test_tokenize_detokenize_piece(builtin):
    ids = builtin.tokenize("And GOD said")
    assert ids == builtin.tokenize("and god said") and len(ids) == 3
    assert builtin.detokenize(ids) == "and god said"
    assert builtin.detokenize(np.array(ids, dtype=np.int64)) == "and god said"
    assert builtin.detokenize([]) == ""
    assert builtin.piece(ids[1]) == " god" and builtin.piece(ids[1], first=True) == "god"
    assert builtin.tokenize("") == []
    with pytest.raises(itera.UnknownTokenError, match="'xyzzy' is not in the model's vocabulary"):
        builtin.tokenize("and xyzzy said")
    unk = builtin.tokenize("and xyzzy said", allow_unknown=True)
    assert unk[0] == ids[0] and builtin.detokenize([unk[1]]) == "<UNK>"
    with pytest.raises(ValueError, match="NUL"):
        builtin.tokenize("and\0god")
    with pytest.raises(itera.InvalidArgumentError, match="3000"):
        builtin.detokenize([4, 3000])
    with pytest.raises(TypeError):
        builtin.detokenize("and god")
    with pytest.raises(TypeError):
        builtin.tokenize(b"and god")


def test_no_tokenizer(tiny):
    m = itera.Model(tiny / "tiny_notok.itl")
    assert not m.has_tokenizer and m.eos is None
    with pytest.raises(itera.NoTokenizerError):
        m.tokenize("in the")
    with pytest.raises(itera.NoTokenizerError):
        m.detokenize([4])
    with pytest.raises(itera.NoTokenizerError):
        m.generate("in the")
    assert len(list(m.generate_ids([4, 5], max_tokens=3, greedy=True))) == 3


def test_missing_and_corrupt_files(tmp_path, builtin_path):
    with pytest.raises(itera.FileError, match="No such file") as e:
        itera.Model(tmp_path / "missing.itl")
    assert isinstance(e.value, OSError) and e.value.code == 2 and e.value.code_name == "ITERA_ERR_IO"
    with pytest.raises(itera.FileError, match="not a regular file"):
        itera.Model(tmp_path)
    data = pathlib.Path(builtin_path).read_bytes()
    with pytest.raises(itera.FormatError, match="truncated"):
        itera.Model(data[:1000])
    with pytest.raises(itera.FormatError):
        itera.Model(b"")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    with pytest.raises(itera.FormatError, match="checksum"):
        itera.Model(bytes(flipped))
    (tmp_path / "flipped.itl").write_bytes(flipped)
    with pytest.raises(itera.FormatError, match="checksum"):
        itera.Model(tmp_path / "flipped.itl")
    with pytest.raises(itera.FormatError, match="magic"):
        itera.Model(b"PK" + data[2:])


def test_wrong_types():
    for bad in (None, 3, 2.5, ["model.itl"], object()):
        with pytest.raises(TypeError):
            itera.Model(bad)
    with pytest.raises(ValueError, match="NUL"):
        itera.Model("model\0.itl")
    with pytest.raises(TypeError):
        itera.Model.builtin().context(device=1)
    with pytest.raises(ValueError, match="device must be"):
        itera.Model.builtin().context(device="gpu")


def test_closed_model_and_context_manager(builtin_path):
    with itera.Model(builtin_path) as m:
        ctx = m.context()
        batch = m.batch(2)
        gen = m.generate("and god", max_tokens=5, greedy=True)
    assert m.closed and "closed" in repr(m)
    for use in (lambda: m.vocab_size, lambda: m.tokenize("and"), lambda: m.context(), lambda: m.info,
                lambda: m.batch(1), lambda: m.generate("and"), lambda: m.complete("and"), lambda: pickle.dumps(m)):
        with pytest.raises(ValueError, match="the model is closed"):
            use()
    # What was made from it keeps it alive.
    assert ctx.eval([4, 5]).shape == (3000,)
    assert batch.eval([4, 5]).shape == (2, 3000)
    assert len(list(gen)) == 5
    m.close()  # twice is fine


def test_objects_outlive_the_model_object(builtin_path):
    m = itera.Model(builtin_path)
    ids = m.tokenize("and god said")
    ctx = m.context()
    gen = m.generate(ids, max_tokens=4, greedy=True)
    want = ctx.eval(ids)
    del m
    gc.collect()
    ctx.reset()
    assert ctx.eval(ids).tobytes() == want.tobytes()
    assert len(list(gen)) == 4
    assert ctx.model.vocab_size == 3000


def test_pickle_model(builtin, builtin_path):
    data = pathlib.Path(builtin_path).read_bytes()
    ids = builtin.tokenize("and god said")
    want = builtin.context().eval(ids).tobytes()
    for m in (builtin, itera.Model(builtin_path), itera.Model(data), itera.Model(bytearray(data))):
        again = pickle.loads(pickle.dumps(m))
        assert again.fingerprint == m.fingerprint and again.path == m.path
        assert again.context().eval(ids).tobytes() == want


def test_help_shows_docstrings():
    assert "verify_checksum" in itera.Model.__doc__
    assert "Streams the text generated" in itera.Model.generate.__doc__
    assert "eval(self, ids: int | typing.Iterable[int], *, logits: bool = True)" in itera.Context.eval.__doc__


def test_error_hierarchy():
    assert issubclass(itera.NoCudaError, itera.NoDeviceError)
    for cls in (itera.InvalidArgumentError, itera.UnknownTokenError, itera.ModelMismatchError):
        assert issubclass(cls, ValueError) and issubclass(cls, itera.Error)
    assert issubclass(itera.FileError, OSError) and issubclass(itera.OutOfMemoryError, MemoryError)
    codes = sorted(c.code for c in vars(itera).values() if isinstance(c, type) and issubclass(c, itera.Error))
    assert codes == list(range(0, 12))
    assert os.path.basename(itera.__file__) == "__init__.py"

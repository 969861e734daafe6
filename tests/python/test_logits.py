"""Logits from Python equal the C API's (libitera.so through ctypes) and itera-run's, bit for bit,
and arrive as arrays the caller owns."""
import json

import numpy as np
import pytest

import capi
import itera
from conftest import ITERA_RUN, run


def prompts(model):
    return [model.tokenize(t) for t in ("and god said", "in the beginning god created the heaven and the earth",
                                        "and the lord said unto moses ,")]


def test_token_by_token_equals_c_api(builtin, builtin_path):
    ref = capi.Model(builtin_path)
    for ids in prompts(builtin):
        ctx, c = builtin.context(), ref.context()
        for t in ids:
            got, want = ctx.eval(t), c.eval(t)
            assert got.dtype == np.float32 and got.shape == (3000,)
            assert got.tobytes() == want.tobytes()


def test_prompt_equals_c_api_and_token_by_token(builtin, builtin_path):
    ref = capi.Model(builtin_path)
    for ids in prompts(builtin):
        at_once = builtin.context().eval(ids)
        assert at_once.tobytes() == ref.context().eval_tokens(ids).tobytes()
        one_by_one = builtin.context()
        for t in ids:
            last = one_by_one.eval(t)
        assert at_once.tobytes() == last.tobytes()
        for as_array in (np.array(ids, dtype=np.int32), np.array(ids, dtype=np.uint16), tuple(ids), iter(ids)):
            assert builtin.context().eval(as_array).tobytes() == at_once.tobytes()


def test_equals_itera_run_logits(builtin, builtin_path):
    ids = builtin.tokenize("in the beginning god created the heaven and the earth")
    r = run([ITERA_RUN, "logits", "-m", builtin_path, "--ids", ",".join(map(str, ids))])
    assert r.returncode == 0, r.stderr
    rows = np.array(json.loads(r.stdout)["logits"], dtype=np.float32)  # %.9g: float32 exactly
    ctx = builtin.context()
    for i, t in enumerate(ids):
        assert ctx.eval(t).tobytes() == rows[i].tobytes(), f"position {i}"


def test_past_max_seq_length_equals_c_api(builtin, builtin_path):
    ref = capi.Model(builtin_path).context()
    ctx = builtin.context()
    rng = np.random.default_rng(5)
    for i, t in enumerate(rng.integers(4, 3000, size=131)):
        got, want = ctx.eval(int(t)), ref.eval(int(t))
        assert got.tobytes() == want.tobytes(), f"token {i}"
    assert ctx.position == 128


def test_arrays_are_the_callers(builtin):
    ctx = builtin.context()
    first = ctx.eval(builtin.tokenize("and god"))
    kept = first.copy()
    second = ctx.eval(builtin.tokenize("said"))
    assert first.tobytes() == kept.tobytes()  # not overwritten by the next call
    assert first.flags.owndata or first.base is not None
    assert first.flags.writeable and first.flags.c_contiguous
    first[:] = 0  # writing to it changes nothing in the context
    assert ctx.logits.tobytes() == second.tobytes()
    del ctx  # the arrays outlive the context
    assert second.shape == (3000,) and np.isfinite(second).all()


def test_logits_false_and_property(builtin):
    ctx = builtin.context()
    assert ctx.logits is None
    assert ctx.eval(builtin.tokenize("and god"), logits=False) is None
    assert ctx.logits is None and ctx.position == 2
    full = ctx.eval(builtin.tokenize("said"))
    assert ctx.logits.tobytes() == full.tobytes()
    ctx.reset()
    assert ctx.logits is None and ctx.position == 0


def test_bad_ids(builtin):
    ctx = builtin.context()
    ctx.eval(4)
    with pytest.raises(itera.InvalidArgumentError, match="token id 3000 is not in the model's vocabulary"):
        ctx.eval([5, 3000])
    with pytest.raises(itera.InvalidArgumentError, match="-1"):
        ctx.eval(-1)
    assert ctx.position == 1  # unchanged
    for bad, err in [("and god", TypeError), (b"ab", TypeError), (2.0, TypeError), ([4, 5.5], TypeError),
                     ([4, None], TypeError), (None, TypeError), (np.array([1.0, 2.0]), TypeError),
                     ([2**31], ValueError), ([-2**40], ValueError), (np.array([2**40]), ValueError),
                     (np.array([[4, 5]]), ValueError), ([], ValueError), (np.array([], dtype=np.int32), ValueError)]:
        with pytest.raises(err):
            ctx.eval(bad)
    assert ctx.position == 1

"""Contexts: save/restore round trips that continue exactly, restore from any bytes-like source and
refusal of foreign or damaged states, pickling, devices."""
import copy
import pickle

import numpy as np
import pytest

import itera


def continue_greedy(ctx, n):
    """Feeds the argmax n times; the logits seen, as bytes."""
    out = []
    logits = ctx.logits
    for _ in range(n):
        logits = ctx.eval(int(np.argmax(logits)))
        out.append(logits.tobytes())
    return out


def test_save_restore_continues_exactly(builtin):
    ids = builtin.tokenize("in the beginning god created the heaven and the earth")
    for total in (len(ids), 129):  # inside and past max_seq_length (128)
        ctx = builtin.context()
        ctx.eval(ids)
        continue_greedy(ctx, total - len(ids))
        state = ctx.save()
        assert isinstance(state, bytes) and state[:8] == b"ITERA\0ST"
        position = ctx.position
        want = continue_greedy(ctx, 4)
        for source in (state, bytearray(state), memoryview(state), np.frombuffer(state, np.uint8)):
            other = builtin.context()
            other.eval([7, 8, 9])  # whatever it held is replaced
            other.restore(source)
            assert other.position == position
            assert continue_greedy(other, 4) == want


def test_save_of_a_new_and_a_reset_context(builtin):
    ctx = builtin.context()
    empty = ctx.save()
    ctx.eval([4, 5, 6])
    ctx.restore(empty)
    assert ctx.position == 0 and ctx.logits is None
    with pytest.raises(itera.InvalidArgumentError, match="no logits"):
        list(ctx.generate(max_tokens=2))


def test_restore_refuses_foreign_and_damaged_states(builtin, tiny):
    ctx = builtin.context()
    ctx.eval(builtin.tokenize("and god said"))
    state = ctx.save()
    before = ctx.logits.tobytes()
    other = itera.Model(tiny / "tiny.itl").context()
    other.eval([4, 5])
    with pytest.raises(itera.ModelMismatchError, match="different model"):
        other.restore(state)
    for damaged, pattern in [(state[:40], "truncated"), (state[:-4], "bytes, its header implies"),
                             (b"X" + state[1:], "bad magic"), (state + b"\0", "bytes, its header implies"),
                             (b"", "truncated")]:
        with pytest.raises(itera.FormatError, match=pattern):
            ctx.restore(damaged)
    flipped = bytearray(state)
    flipped[-1] ^= 1
    with pytest.raises(itera.FormatError, match="checksum"):
        ctx.restore(flipped)
    version = bytearray(state)
    version[8] = 9
    with pytest.raises(itera.FormatError, match="version 9"):
        ctx.restore(version)
    assert ctx.logits.tobytes() == before and ctx.position == 3  # unchanged by every refusal
    for bad in (None, "state", 5, [1, 2], np.zeros((2, 64), np.uint8)[:, ::2]):
        with pytest.raises(TypeError):
            ctx.restore(bad)


def test_pickle_and_copy_continue_exactly(builtin, builtin_path):
    for model in (builtin, itera.Model(builtin_path)):
        ctx = model.context()
        ctx.eval(model.tokenize("and the lord said"))
        clone = pickle.loads(pickle.dumps(ctx))
        shallow = copy.copy(ctx)
        assert clone.position == ctx.position == shallow.position
        assert clone.logits.tobytes() == ctx.logits.tobytes()
        want = continue_greedy(ctx, 6)
        assert continue_greedy(clone, 6) == want
        assert continue_greedy(shallow, 6) == want


def test_pickle_after_the_model_is_closed(builtin_path):
    m = itera.Model(builtin_path)
    ctx = m.context()
    ctx.eval([4, 5, 6])
    m.close()
    clone = pickle.loads(pickle.dumps(ctx))
    assert clone.logits.tobytes() == ctx.logits.tobytes()


def test_devices(builtin):
    assert itera.device_available("cpu") and itera.device_available("auto")
    assert builtin.context().device == "cpu"
    assert builtin.context(device="auto").device in ("cpu", "cuda")
    if itera.device_available("cuda"):
        ctx = builtin.context(device="cuda")
        assert ctx.device == "cuda"
        ids = builtin.tokenize("and god said")
        # The GPU's sums run in another order: the last bits differ, the argmax does not.
        assert np.argmax(ctx.eval(ids)) == np.argmax(builtin.context().eval(ids))
    else:
        with pytest.raises(itera.NoDeviceError, match="no CUDA device"):
            builtin.context(device="cuda")
        with pytest.raises(itera.NoDeviceError):
            builtin.batch(2, device="cuda")
        with pytest.raises(itera.NoDeviceError):
            builtin.generate("and", device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        builtin.context(device="CUDA")
    with pytest.raises(ValueError, match="device must be"):
        itera.device_available("tpu")

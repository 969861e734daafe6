"""Batches: every sequence's logits equal a Context's fed the same tokens, bit for bit, with one
thread or several; continuous batching with run(); bad sizes and feeds."""
import numpy as np
import pytest

import itera


def test_batch_equals_contexts(builtin):
    rng = np.random.default_rng(11)
    n = 5
    for threads in (1, 2, 3):
        batch = builtin.batch(n, threads=threads)
        assert len(batch) == batch.size == n and batch.threads == threads and batch.device == "cpu"
        contexts = [builtin.context() for _ in range(n)]
        for step in range(20):
            tokens = rng.integers(4, 3000, size=n)
            out = batch.eval(tokens)
            assert out.shape == (n, 3000) and out.dtype == np.float32
            for i, ctx in enumerate(contexts):
                assert out[i].tobytes() == ctx.eval(int(tokens[i])).tobytes(), f"threads {threads} step {step} seq {i}"
        assert [batch.position(i) for i in range(n)] == [20] * n


def test_run_feeds_some_sequences(builtin):
    batch = builtin.batch(4, threads=2)
    contexts = [builtin.context() for _ in range(4)]
    prompts = {0: builtin.tokenize("and god said"), 2: builtin.tokenize("in the beginning"), 3: 17}
    out = batch.run(prompts)
    assert out.shape == (3, 3000)
    for row, (seq, ids) in enumerate(prompts.items()):
        assert out[row].tobytes() == contexts[seq].eval(ids).tobytes()
    assert batch.logits(1) is None and batch.position(1) == 0
    out = batch.run([(1, [4, 5]), (0, 6)])  # pairs, in the order given
    assert out[0].tobytes() == contexts[1].eval([4, 5]).tobytes()
    assert out[1].tobytes() == contexts[0].eval(6).tobytes()
    assert batch.logits(2) is None  # not fed by the last call
    assert batch.logits(0).tobytes() == out[1].tobytes()
    assert batch.run({}).shape == (0, 3000)
    batch.reset(0)
    assert batch.position(0) == 0 and batch.position(1) == 2


def test_bad_sizes_and_feeds(builtin):
    for n in (0, -1, 2**20 + 1, 2**40):
        with pytest.raises(ValueError):
            builtin.batch(n)
    for threads in (0, -3, 1025):
        with pytest.raises(ValueError):
            builtin.batch(2, threads=threads)
    with pytest.raises(TypeError):
        builtin.batch("2")
    batch = builtin.batch(3)
    with pytest.raises(ValueError, match="one token per sequence: 3, got 2"):
        batch.eval([4, 5])
    with pytest.raises(itera.InvalidArgumentError, match="3000"):
        batch.eval([4, 5, 3000])
    assert [batch.position(i) for i in range(3)] == [0, 0, 0]  # no sequence changed
    with pytest.raises(IndexError):
        batch.run({3: [4]})
    with pytest.raises(IndexError):
        batch.position(-1)
    with pytest.raises(IndexError):
        batch.reset(3)
    with pytest.raises(itera.InvalidArgumentError, match="twice"):
        batch.run([(0, 4), (0, 5)])
    with pytest.raises(ValueError, match="no token ids"):
        batch.run({0: []})
    for bad in ([4, 5], [(0,)], {"0": [4]}, 7):
        with pytest.raises(TypeError):
            batch.run(bad)

"""itera.Sampler, the library's sampler on logits the caller holds (as the Ray Serve replica samples
each row of a Batch step): a context stepped by hand with it gives itera-run's seeded and greedy
text; bad arguments raise."""
import numpy as np
import pytest

import itera
from conftest import ITERA_RUN, run


def by_hand(model, prompt, n, sampler):
    """itera-run's loop: sample, stop at <EOS>, feed; ids of the n tokens."""
    ctx = model.context()
    logits = ctx.eval(model.tokenize(prompt))
    ids = []
    for _ in range(n):
        token = sampler.sample(np.ascontiguousarray(logits[-1] if logits.ndim == 2 else logits))
        if token == model.eos:
            break
        ids.append(token)
        logits = ctx.eval([token])
    return ids


def test_sampling_by_hand_equals_itera_run(builtin, builtin_path):
    prompt = "and god said"
    prompt_ids = builtin.tokenize(prompt)
    for seed, extra in ((7, ["--seed", "7"]), (2**64 - 1, ["--seed", str(2**64 - 1), "--temp", "1.2", "--top-k", "0"])):
        temperature = 1.2 if "--temp" in extra else 0.8
        top_k = 0 if "--top-k" in extra else 40
        ids = by_hand(builtin, prompt, 25, itera.Sampler(seed=seed, temperature=temperature, top_k=top_k))
        r = run([ITERA_RUN, "-m", builtin_path, "-p", prompt, "-n", "25", *extra])
        assert r.returncode == 0, r.stderr
        assert builtin.detokenize(prompt_ids + ids) == r.stdout[:-1]
        print(f"  seed {seed} {extra}: {len(ids)} ids sampled by hand equal itera-run's text")
    greedy = itera.Sampler(greedy=True)
    assert greedy.greedy and itera.Sampler(temperature=0).greedy and not itera.Sampler(seed=1).greedy
    r = run([ITERA_RUN, "-m", builtin_path, "-p", prompt, "-n", "20", "--greedy"])
    assert builtin.detokenize(prompt_ids + by_hand(builtin, prompt, 20, greedy)) == r.stdout[:-1]


def test_bad_arguments():
    s = itera.Sampler(seed=1)
    with pytest.raises(TypeError):
        s.sample(np.zeros((2, 3), dtype=np.float32))  # not one row
    with pytest.raises(TypeError):
        s.sample([0.5, 1.0])  # not an array
    with pytest.raises(ValueError, match="between 1"):
        s.sample(np.zeros(0, dtype=np.float32))
    with pytest.raises(itera.InvalidArgumentError, match="NaN"):
        s.sample(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError):
        itera.Sampler(top_p=1.5)
    with pytest.raises(ValueError):
        itera.Sampler(top_k=-1)
    with pytest.raises(TypeError):
        itera.Sampler(seed="1")
    with pytest.raises(TypeError):
        itera.Sampler(1.0)  # keyword-only
    assert s.sample(np.array([0.0, 30.0, 1.0], dtype=np.float32)) == 1
    print("  bad rows, NaN, top_p, top_k, seed types and positional arguments raise")

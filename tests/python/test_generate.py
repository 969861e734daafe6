"""Generation: greedy and seeded text equal itera-run's and the C API's itera_generate; streaming
equals complete(); stop strings, <EOS>, max_tokens; continuing a context; interrupted and shared
generators; threads; bad arguments."""
import threading

import numpy as np
import pytest

import capi
import itera
from conftest import ITERA_RUN, run

PROMPTS = ["and the lord said unto moses ,", "and god said", "in the beginning"]


def itera_run_text(path, prompt, n, *extra):
    r = run([ITERA_RUN, "-m", path, "-p", prompt, "-n", str(n), *extra])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n")
    return r.stdout[:-1]


def test_greedy_text_equals_itera_run(builtin, builtin_path):
    for prompt in PROMPTS:
        want = itera_run_text(builtin_path, prompt, 30, "--greedy")
        head = builtin.detokenize(builtin.tokenize(prompt))
        streamed = list(builtin.generate(prompt, max_tokens=30, greedy=True))
        assert head + "".join(streamed) == want
        assert head + builtin.complete(prompt, max_tokens=30, greedy=True) == want
        assert head + builtin.complete(prompt, max_tokens=30, temperature=0) == want
    assert builtin.complete("and the lord said unto moses ,", max_tokens=30, greedy=True).startswith(
        " i will bring you up out of the land of egypt")


def test_seeded_text_equals_itera_run_and_c_api(builtin, builtin_path):
    ref = capi.Model(builtin_path)
    for seed in (1, 2, 12345, 2**64 - 1):
        for prompt in PROMPTS[:2]:
            ids = builtin.tokenize(prompt)
            gen = builtin.generate(prompt, max_tokens=25, seed=seed)
            pieces = list(gen)
            c = ref.context().generate(ids, 25, seed=seed)
            assert gen.tokens == [t for t, _ in c] and pieces == [p for _, p in c]
            want = itera_run_text(builtin_path, prompt, 25, "--seed", str(seed))
            assert builtin.detokenize(ids) + "".join(pieces) == want
            assert builtin.complete(prompt, max_tokens=25, seed=seed) == "".join(pieces)
    params = dict(temperature=1.3, top_k=7, top_p=0.8, seed=99)
    gen = builtin.generate("and god said", max_tokens=40, **params)
    pieces = list(gen)
    c = ref.context().generate(builtin.tokenize("and god said"), 40, **params)
    assert gen.tokens == [t for t, _ in c] and pieces == [p for _, p in c]


def test_ids_streaming_and_eos_equal_c_api(tiny):
    """The tiny model (12 words) samples <EOS> often: where generation stops must match too."""
    model, ref = itera.Model(tiny / "tiny.itl"), capi.Model(tiny / "tiny.itl")
    reasons = set()
    for seed in range(40):
        gen = model.generate_ids([4, 5], max_tokens=8, temperature=1.5, top_k=0, top_p=1.0, seed=seed)
        ids = list(gen)
        assert ids == gen.tokens == [t for t, _ in ref.context().generate([4, 5], 8, temperature=1.5, top_k=0,
                                                                            top_p=1.0, seed=seed)]
        reasons.add(gen.stop_reason)
        assert (gen.stop_reason == "length") == (len(ids) == 8)
    assert reasons == {"eos", "length"}


def test_stop_strings(builtin):
    prompt = "and the lord said unto moses ,"
    full = builtin.complete(prompt, max_tokens=30, greedy=True)
    # " the land" spans two pieces (" the", " land"); " eg" ends inside the piece " egypt".
    for stop in (" the land", " eg", ["zzz", " out of"], ("of the land", " up")):
        stops = [stop] if isinstance(stop, str) else list(stop)
        cut = min(full.find(s) for s in stops if s in full)
        gen = builtin.generate(prompt, max_tokens=30, greedy=True, stop=stop)
        pieces = list(gen)
        assert "".join(pieces) == full[:cut] and gen.stop_reason == "stop"
        assert builtin.complete(prompt, max_tokens=30, greedy=True, stop=stop) == full[:cut]
    # A stop string that never appears: held-back text is released, nothing is lost.
    assert builtin.complete(prompt, max_tokens=30, greedy=True, stop=" egyptian") == full
    # The text begins with the stop string: nothing is passed on.
    assert full.startswith(" i will bring you up out of the land of egypt ,")
    gen = builtin.generate(prompt, max_tokens=30, greedy=True, stop=" i will bring you up out of the land of egypt ,")
    assert list(gen) == [] and gen.stop_reason == "stop" and len(gen.tokens) == 12


def test_max_tokens_and_lengths(builtin):
    gen = builtin.generate("and god said", max_tokens=0)
    assert list(gen) == [] and gen.stop_reason == "length" and gen.tokens == []
    gen = builtin.generate("and god said", max_tokens=130, greedy=True)  # past max_seq_length (128)
    assert len(list(gen)) == 130 and gen.stop_reason == "length"


def test_context_generation_continues(builtin):
    prompt = builtin.tokenize("and god said")
    want = builtin.complete(prompt, max_tokens=12, seed=5)
    ctx = builtin.context()
    ctx.eval(prompt)
    assert ctx.complete(max_tokens=12, seed=5) == want and ctx.position == 3 + 12
    ctx2 = builtin.context()
    gen = ctx2.generate(prompt, max_tokens=12, seed=5)
    assert ctx2.position == 0  # the prompt is fed at the first next()
    assert "".join(gen) == want and ctx2.position == 15
    with pytest.raises(TypeError, match="device"):
        ctx2.generate(device="cpu")


def test_interrupted_generators(builtin):
    ctx = builtin.context()
    gen = ctx.generate("and god said", max_tokens=20, greedy=True)
    for i, _ in enumerate(gen):
        if i == 2:
            break
    assert ctx.position == 3 + 3 and gen.stop_reason is None
    ctx.eval(builtin.tokenize("and"))  # the context is free to use meanwhile
    rest = list(gen)  # and the generator goes on from there
    assert len(rest) == 17 and ctx.position == 6 + 1 + 17
    gen = ctx.generate(max_tokens=20, greedy=True)
    next(gen)
    gen.close()
    assert gen.stop_reason == "closed" and list(gen) == []
    with pytest.raises(StopIteration):
        next(gen)
    gen.close()
    # A context reset under a running generator: an error, then the generator is over.
    gen = ctx.generate("and god", max_tokens=5)
    next(gen)
    ctx.reset()
    with pytest.raises(itera.InvalidArgumentError, match="no logits"):
        next(gen)
    assert gen.stop_reason == "error" and list(gen) == []
    # An id the model does not have surfaces when the prompt is fed.
    gen = builtin.generate([4, 3000], max_tokens=5)
    with pytest.raises(itera.InvalidArgumentError, match="3000"):
        next(gen)
    # Dropped without finishing: freed with the generator, nothing else to do.
    for _ in range(50):
        next(builtin.generate("and god", max_tokens=100))


def test_one_generator_from_many_threads(builtin):
    gen = builtin.generate("and god said", max_tokens=120, greedy=True)
    pieces, errors = [], []

    def pull():
        while True:
            try:
                pieces.append(next(gen))
            except StopIteration:
                return
            except RuntimeError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pieces) == len(gen.tokens) == 120
    assert all(e == "generator already executing" for e in errors)


def test_threads_on_two_contexts_equal_one_thread(builtin):
    jobs = [("and god said", 11), ("in the beginning", 22), ("and the lord said unto moses ,", 33), ("and god", 44)]
    want = {job: builtin.complete(job[0], max_tokens=60, seed=job[1]) for job in jobs}
    got = {}

    def work(mine):
        for prompt, seed in mine:
            got[(prompt, seed)] = "".join(builtin.generate(prompt, max_tokens=60, seed=seed))

    threads = [threading.Thread(target=work, args=(jobs[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_the_gil_is_released_while_the_model_runs(builtin):
    batch = builtin.batch(1024)
    tokens = np.full(1024, 4)
    progress = 0
    t = threading.Thread(target=lambda: [batch.eval(tokens) for _ in range(8)])
    t.start()
    while t.is_alive():
        progress += 1  # runs only while the other thread is inside the library without the GIL
    t.join()
    assert progress > 10


def test_bad_arguments(builtin):
    g = builtin.generate
    for kwargs, err in [(dict(max_tokens=-1), ValueError), (dict(max_tokens="5"), TypeError),
                        (dict(max_tokens=2.0), TypeError), (dict(top_k=-1), ValueError), (dict(top_k="3"), TypeError),
                        (dict(temperature=float("nan")), itera.InvalidArgumentError),
                        (dict(temperature=float("inf")), itera.InvalidArgumentError),
                        (dict(top_p=1.5), itera.InvalidArgumentError), (dict(top_p=-0.1), itera.InvalidArgumentError),
                        (dict(temperature="hot"), TypeError), (dict(seed=-1), ValueError), (dict(seed=2**64), ValueError),
                        (dict(seed="1"), TypeError), (dict(seed=1.0), TypeError), (dict(stop=""), ValueError),
                        (dict(stop=["a", ""]), ValueError), (dict(stop=[1]), TypeError), (dict(stop=5), TypeError),
                        (dict(device="gpu"), ValueError), (dict(greedy="yes"), TypeError)]:
        with pytest.raises(err):
            g("and god said", **kwargs)
    with pytest.raises(itera.UnknownTokenError, match="'xyzzy'"):
        g("and xyzzy said")
    assert len(list(g("and xyzzy said", allow_unknown=True, max_tokens=3, greedy=True))) == 3
    for prompt in ("", [], None):
        with pytest.raises(ValueError, match="empty prompt"):
            g(prompt)
    with pytest.raises(TypeError):
        g(4.5)
    with pytest.raises(TypeError):
        g(b"and god")
    with pytest.raises(TypeError):
        g("and god", 5)  # options are keyword-only

"""Model.perplexity: the numbers of `itera-run ppl` (to every digit it prints) and of the C API's
itera_perplexity (bit for bit), on a fixed KJV passage and on the shipped model's held-out text
(models/make_corpus.py, when the `bible` program is installed); with kld_ref, the KL divergence
and top-1 agreement of `ppl --kld-ref` against a q4 conversion; bad arguments."""
import json
import math
import os
import shutil
import sys
import threading

import pytest

import capi
import itera
from conftest import ITERA_CONVERT, ITERA_RUN, ROOT, SANITIZED, run

# Genesis 1:1-10 in the corpus' preprocessing (models/make_corpus.py): 232 tokens, a window of 128
# and a partial second one, one of them <UNK>.
GENESIS = (
    "In the beginning God created the heaven and the earth . And the earth was without form , and void ; and "
    "darkness was upon the face of the deep . And the Spirit of God moved upon the face of the waters . And God "
    "said , Let there be light : and there was light . And God saw the light , that it was good : and God divided "
    "the light from the darkness . And God called the light Day , and the darkness he called Night . And the "
    "evening and the morning were the first day . And God said , Let there be a firmament in the midst of the "
    "waters , and let it divide the waters from the waters . And God made the firmament , and divided the waters "
    "which were under the firmament from the waters which were above the firmament : and it was so . And God "
    "called the firmament Heaven . And the evening and the morning were the second day . And God said , Let the "
    "waters under the heaven be gathered together unto one place , and let the dry land appear : and it was so . "
    "And God called the dry land Earth ; and the gathering together of the waters called he Seas : and God saw "
    "that it was good .\n")
KJV_PT = os.path.join(ROOT, "models", "itera_lite_kjv.pt")
KJV_TOKENIZER = os.path.join(ROOT, "models", "tokenizer_kjv.json")


def itera_run_ppl(model_path, text_path, ref=None, ctx=None):
    cmd = [ITERA_RUN, "ppl", "-m", model_path, "--file", str(text_path), "--json"]
    cmd += ["--kld-ref", ref] if ref else []
    cmd += ["--ctx", str(ctx)] if ctx else []
    r = run(cmd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def assert_same_as_itera_run(got, want):
    """Every field to the digits itera-run prints (ppl, unk_fraction, top1: 6 decimals; kld: 10)."""
    assert (got.tokens, got.scored) == (want["tokens"], want["scored"])
    assert f"{got.ppl:.6f}" == f"{want['ppl']:.6f}" and f"{got.unk_fraction:.6f}" == f"{want['unk_fraction']:.6f}"
    if "kld" in want:
        assert f"{got.kld:.10f}" == f"{want['kld']:.10f}" and f"{got.top1:.6f}" == f"{want['top1']:.6f}"
    else:
        assert got.kld is None and got.top1 is None
    print(f"ppl {got.ppl:.6f} over {got.scored} positions, unk {got.unk_fraction:.4f}"
          + (f", kld {got.kld:.10f}, top1 {got.top1:.6f}" if got.kld is not None else "") + ": as itera-run ppl")


@pytest.fixture(scope="module")
def genesis(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppl") / "genesis.txt"
    path.write_text(GENESIS)
    return path


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """The shipped model's held-out text (models/README.md), made by models/make_corpus.py."""
    if SANITIZED:
        pytest.skip("44,541 tokens through the unoptimized ASan build take minutes; the Genesis cases cover the code")
    if not shutil.which("bible"):
        pytest.skip("models/make_corpus.py needs the bible program (apt-get install bible-kjv)")
    out = tmp_path_factory.mktemp("kjv")
    r = run([sys.executable, os.path.join(ROOT, "models", "make_corpus.py"), str(out)])
    assert r.returncode == 0, r.stderr
    return out / "heldout.txt"


@pytest.fixture(scope="module")
def kjv_q4(tmp_path_factory):
    """The shipped checkpoint at q4, by itera-convert: a model with a KL divergence from the FP32 one."""
    out = tmp_path_factory.mktemp("q4") / "kjv-q4.itl"
    r = run([ITERA_CONVERT, KJV_PT, "--tokenizer", KJV_TOKENIZER, "--quant", "q4", "-o", str(out)])
    assert r.returncode == 0, r.stderr
    return str(out)


def test_genesis_as_itera_run_and_the_c_api(builtin, builtin_path, genesis):
    text = genesis.read_text()
    c_model = capi.Model(builtin_path)
    for ctx in (None, 16, 128):
        got = builtin.perplexity(text, ctx)
        assert isinstance(got, itera.Perplexity) and got == itera.Model(builtin_path).perplexity(text, ctx=ctx)
        assert_same_as_itera_run(got, itera_run_ppl(builtin_path, genesis, ctx=ctx))
        c = capi.perplexity(c_model, text, ctx or 0)
        assert got[:4] == c[:4] and math.isnan(c[4])  # bit for bit
    assert got.unk_fraction > 0 and got.scored == got.tokens - 1 > 128  # two windows


def test_heldout_as_itera_run(builtin, builtin_path, heldout):
    got = builtin.perplexity(heldout.read_text())
    assert got.tokens == 44541  # models/README.md
    assert_same_as_itera_run(got, itera_run_ppl(builtin_path, heldout))


def test_kld_ref_as_itera_run(builtin, builtin_path, genesis, kjv_q4):
    text = genesis.read_text()
    q4 = itera.Model(kjv_q4)
    want = itera_run_ppl(kjv_q4, genesis, ref=builtin_path)
    got = q4.perplexity(text, kld_ref=builtin)
    assert_same_as_itera_run(got, want)
    assert got.kld > 0 and 0.5 < got.top1 < 1
    with open(builtin_path, "rb") as f:
        data = f.read()
    for ref in (builtin_path, data, itera.Model(data)):  # a path or bytes are loaded as a Model
        assert q4.perplexity(text, kld_ref=ref) == got
    c = capi.perplexity(capi.Model(kjv_q4), text, 0, capi.Model(builtin_path))
    assert tuple(got) == c
    same = builtin.perplexity(text, kld_ref=builtin)
    assert same.kld == 0 and same.top1 == 1
    assert got._asdict()["kld"] == got.kld  # a NamedTuple: unpacks, compares, converts to a dict


def test_kld_ref_on_heldout(builtin_path, heldout, kjv_q4):
    got = itera.Model(kjv_q4).perplexity(heldout.read_text(), kld_ref=builtin_path)
    assert_same_as_itera_run(got, itera_run_ppl(kjv_q4, heldout, ref=builtin_path))


def test_bad_arguments(builtin, tiny):
    text = "and god said , let there be light"
    for kwargs, err in [(dict(ctx=0), ValueError), (dict(ctx=-1), ValueError), (dict(ctx=2**40), ValueError),
                        (dict(ctx=129), itera.InvalidArgumentError), (dict(ctx="5"), TypeError),
                        (dict(ctx=5.0), TypeError), (dict(kld_ref=5), TypeError),
                        (dict(kld_ref=b"not a model"), itera.FormatError),
                        (dict(kld_ref="/nonexistent.itl"), itera.FileError), (dict(device="gpu"), ValueError)]:
        with pytest.raises(err):
            builtin.perplexity(text, **kwargs)
    for bad, err in [(5, TypeError), (None, TypeError), (b"and god", TypeError), ("and\0god", ValueError),
                     ("", itera.InvalidArgumentError), ("god", itera.InvalidArgumentError)]:
        with pytest.raises(err):
            builtin.perplexity(bad)
    with pytest.raises(itera.InvalidArgumentError, match="2 are needed"):
        builtin.perplexity("god")
    small = itera.Model(str(tiny / "tiny.itl"))  # vocabulary 12: lacks most of the built-in model's ids
    with pytest.raises(itera.InvalidArgumentError, match="reference"):
        builtin.perplexity(text, ctx=4, kld_ref=small)
    with pytest.raises(itera.NoTokenizerError):
        itera.Model(str(tiny / "tiny_notok.itl")).perplexity("in the beginning")
    closed = itera.Model.builtin()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        closed.perplexity(text)
    with pytest.raises(ValueError, match="closed"):
        builtin.perplexity(text, kld_ref=closed)


def test_the_gil_is_released_while_scoring(builtin):
    text = GENESIS * (4 if SANITIZED else 40)  # 928 or 9,280 tokens
    progress = 0
    t = threading.Thread(target=builtin.perplexity, args=(text,))
    t.start()
    while t.is_alive():
        progress += 1  # runs only while the other thread is inside the library without the GIL
    t.join()
    assert progress > 10


"""
The C API of the Itera runtime (itera.h) for Python; use it through the itera package.
"""

from collections.abc import Iterable, Mapping, Sequence
import os
from typing import Annotated, Any

import numpy
import numpy.typing
from numpy.typing import NDArray

import itera._perplexity


class Model:
    """
    A loaded .itl model: immutable, shared by any number of threads, contexts and batches.

    Model(source, verify_checksum=True) loads `source`: a path (str or os.PathLike; the file is mapped
    read-only), or the bytes of a .itl file (a bytes object is used in place and kept referenced;
    bytearray, memoryview and other buffers are copied once). verify_checksum hashes the whole file
    once and refuses a mismatch. Model.builtin() is the shipped King James Bible model.

    Errors: itera.FileError (cannot open the file), itera.FormatError (corrupt or unsupported),
    TypeError for another type of source. close() (or a `with` block) frees the model once nothing
    made from it is left: contexts, batches and generators keep it alive.
    """

    def __init__(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview, verify_checksum: bool = True) -> None: ...

    @staticmethod
    def builtin() -> Model:
        """
        The built-in model (623,840 parameters, a 3,000-word vocabulary; models/README.md).
        """

    @property
    def vocab_size(self) -> int:
        """
        Token ids are in [0, vocab_size); every logits array has this many entries, by token id.
        """

    @property
    def hidden(self) -> int:
        """Hidden width."""

    @property
    def max_seq_length(self) -> int:
        """
        The context window (past it a context re-runs the last max_seq_length tokens per token).
        """

    @property
    def n_layers(self) -> int:
        """Layers."""

    @property
    def has_tokenizer(self) -> bool:
        """Whether the file has a tokenizer (without one, work with token ids)."""

    @property
    def eos(self) -> int | None:
        """The <EOS> token id, None when the tokenizer has none."""

    @property
    def fingerprint(self) -> int:
        """
        The .itl checksum: equal for the same model content; saved states are tied to it.
        """

    @property
    def path(self) -> str | None:
        """The file the model was loaded from (None otherwise)."""

    @property
    def info(self) -> dict[str, Any]:
        """
        The model as plain dicts and lists, what `itera-run info --json` prints: "vocab_size",
        "hidden", "max_seq_length", "layers" (each {"inner", "state", "conv_kernel", "kind", "top_k",
        "ffn_widths"}), "tensors" (each {"name", "shape", "dtype", "layout", "bytes"}), "parts",
        "parameters", "tensor_bytes", "bits_per_weight", "file_bytes", "tokenizer_tokens", ...
        """

    @property
    def closed(self) -> bool:
        """True after close()."""

    def close(self) -> None:
        """
        Lets the model go: freed now, or when the last context, batch or generator made from it is gone. Using the Model afterwards raises ValueError.
        """

    def __enter__(self) -> Model: ...

    def __exit__(self, *args: object) -> None: ...

    def tokenize(self, text: str, allow_unknown: bool = False) -> list[int]:
        """
        Token ids of `text` as the model's tokenizer splits it (word-level: lower-cased, split on
        white space; character-level: one id per code point). A word the vocabulary lacks raises
        itera.UnknownTokenError naming it, unless allow_unknown maps it to <UNK>. itera.NoTokenizerError
        for a model without a tokenizer.
        """

    def detokenize(self, ids: int | Iterable[int]) -> str:
        """
        The text of token ids (itera.InvalidArgumentError for an id outside [0, vocab_size)).
        """

    def piece(self, id: int, first: bool = False) -> str:
        """
        The text token `id` adds when streamed: word-level models put a space before every word but the first.
        """

    def context(self, device: str = 'cpu') -> Context:
        """
        A new, empty sequence on "cpu", "cuda" (NVIDIA GPU 0) or "auto" (the GPU when one can run
        the model, else the CPU). itera.NoDeviceError (or its subclass itera.NoCudaError for a library
        built without CUDA) when "cuda" cannot be had; the message says why.
        """

    def batch(self, n: int, *, threads: int = 1, device: str = 'cpu') -> Batch:
        """
        n new, empty sequences (1 to 2^20) decoded in lockstep on `threads` CPU threads (1 to
        1024) or on device "cuda" / "auto" (see context()).
        """

    def __repr__(self) -> str: ...

    def __reduce__(self) -> tuple: ...

    def perplexity(self, text: str, ctx: int | None = None, kld_ref: Model | str | os.PathLike[str] | bytes | None = None, *, device: str = 'cpu') -> itera._perplexity.Perplexity:
        """
        Scores `text` as `itera-run ppl` does, with the same numbers (itera_perplexity): the text is
        tokenized whole (words the vocabulary lacks become <UNK> and count in unk_fraction), cut into
        non-overlapping windows of `ctx` tokens (default max_seq_length) that each start from zero state,
        and every position is scored against the token after it. Returns an itera.Perplexity: ppl
        (exp of the mean negative log-likelihood, nats), tokens, scored (tokens - 1), unk_fraction, and
        with `kld_ref` (a Model, or a path or bytes to load one from: typically the FP32 file a quantized
        model came from, `ppl --kld-ref`) kld, the mean KL(reference || model) in nats, and top1, the
        share of positions whose argmaxes agree (both None without a reference). device: "cpu", "cuda"
        or "auto", for both models.

        Errors: ValueError for ctx < 1 or a NUL in the text; itera.InvalidArgumentError for ctx above
        max_seq_length (of either model), a text of fewer than 2 tokens, a reference that lacks one of
        this model's ids; itera.NoTokenizerError; the device errors of context().
        """

    def generate(self, prompt: str | Iterable[int] | None = None, *, max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None, greedy: bool = False, stop: str | Iterable[str] | None = None, allow_unknown: bool = False, device: str | None = None) -> Generator:
        """
        Streams the text generated after `prompt`, one piece per token as it is sampled.

        prompt: text (tokenized; a word the vocabulary lacks raises itera.UnknownTokenError unless
        allow_unknown) or token ids. On a Context, the prompt is fed after what the context holds, and
        None (or empty) continues from its logits. Each step samples with temperature, then top_k, then
        top_p (greedy=True, or temperature 0, takes the most likely token), stops at <EOS> (not passed on)
        or after max_tokens, feeds the token and yields the text it adds (" word" for a word-level
        model). seed makes sampling reproducible (None: a random seed). stop: a string or strings;
        generation ends at the first of them in the text, which is not passed on (pieces that could begin
        one are held back until they cannot). The prompt is fed at the first next(). device (Model only):
        "cpu" (None), "cuda" or "auto", a context of the generator's own. The GIL is released while the
        model runs.
        """

    def generate_ids(self, prompt: str | Iterable[int] | None = None, *, max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None, greedy: bool = False, allow_unknown: bool = False, device: str | None = None) -> Generator:
        """
        As generate(), yielding the generated token ids instead of text (no stop strings).
        Works for models without a tokenizer, with a prompt of token ids.
        """

    def complete(self, prompt: str | Iterable[int] | None = None, *, max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None, greedy: bool = False, stop: str | Iterable[str] | None = None, allow_unknown: bool = False, device: str | None = None) -> str:
        """
        The text generate() would stream, joined: runs to the end without returning to Python.
        """

class Context:
    """
    One sequence of a model (Model.context()): the recurrent state of every layer, so each
    new token costs the same. Use it from one thread at a time (other threads wait for it); any
    number of contexts of one model run in parallel. Picklable, through save() and restore().
    """

    def eval(self, ids: int | Iterable[int], *, logits: bool = True) -> Annotated[NDArray, dict(Any, numpy.dtype[numpy.float32)]] | None:
        """
        Feeds token ids (an int, a sequence of ints or an integer numpy array; a prompt's ids
        run through the model together) and returns the logits [vocab_size] predicting the next token,
        indexed by token id: a new float32 array the caller owns (a copy of the library's, which the next
        call overwrites). logits=False skips the output head and returns None (cheaper, for tokens whose
        prediction is not needed). itera.InvalidArgumentError for an id the model does not have (the
        context is then unchanged).
        """

    @property
    def logits(self) -> Annotated[NDArray, dict(Any, numpy.dtype[numpy.float32)]] | None:
        """
        A copy of the last logits (also after restore()); None after reset() or an eval(logits=False).
        """

    @property
    def position(self) -> int:
        """
        Tokens the state covers (at most max_seq_length; past it the last max_seq_length are re-run per token).
        """

    @property
    def device(self) -> str:
        """"cpu" or "cuda": where it runs ("auto" resolved)."""

    @property
    def model(self) -> Model:
        """The Model it was made from (kept alive, also after Model.close())."""

    def reset(self) -> None:
        """Forgets the sequence: as new."""

    def save(self) -> bytes:
        """
        The whole state as bytes: the window of tokens, the conv and SSM state and the last logits,
        tied to the model's fingerprint. A context restored from them continues exactly as this one would.
        """

    def restore(self, state: bytes | bytearray | memoryview) -> None:
        """
        Replaces the state with one save() returned, from any source: the reader checks every
        field and a checksum. itera.ModelMismatchError for a state of another model, itera.FormatError
        for damaged or truncated bytes; the context is unchanged on error.
        """

    def __reduce__(self) -> tuple: ...

    def __repr__(self) -> str: ...

    def generate(self, prompt: str | Iterable[int] | None = None, *, max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None, greedy: bool = False, stop: str | Iterable[str] | None = None, allow_unknown: bool = False, device: str | None = None) -> Generator:
        """
        Streams the text generated after `prompt`, one piece per token as it is sampled.

        prompt: text (tokenized; a word the vocabulary lacks raises itera.UnknownTokenError unless
        allow_unknown) or token ids. On a Context, the prompt is fed after what the context holds, and
        None (or empty) continues from its logits. Each step samples with temperature, then top_k, then
        top_p (greedy=True, or temperature 0, takes the most likely token), stops at <EOS> (not passed on)
        or after max_tokens, feeds the token and yields the text it adds (" word" for a word-level
        model). seed makes sampling reproducible (None: a random seed). stop: a string or strings;
        generation ends at the first of them in the text, which is not passed on (pieces that could begin
        one are held back until they cannot). The prompt is fed at the first next(). device (Model only):
        "cpu" (None), "cuda" or "auto", a context of the generator's own. The GIL is released while the
        model runs.
        """

    def generate_ids(self, prompt: str | Iterable[int] | None = None, *, max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None, greedy: bool = False, allow_unknown: bool = False, device: str | None = None) -> Generator:
        """
        As generate(), yielding the generated token ids instead of text (no stop strings).
        Works for models without a tokenizer, with a prompt of token ids.
        """

    def complete(self, prompt: str | Iterable[int] | None = None, *, max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None, greedy: bool = False, stop: str | Iterable[str] | None = None, allow_unknown: bool = False, device: str | None = None) -> str:
        """
        The text generate() would stream, joined: runs to the end without returning to Python.
        """

class Batch:
    """
    n independent sequences decoded together (Model.batch()): each step reads every weight
    once for all of them. Each sequence gives exactly the logits a Context fed the same tokens would
    (bit for bit on the CPU), whatever else is in the batch. One thread at a time; the batch itself
    runs on `threads` threads.
    """

    def eval(self, tokens: Iterable[int]) -> Annotated[NDArray, dict(Any, numpy.dtype[numpy.float32)]]:
        """
        Feeds tokens[i] to sequence i, for every i, and returns the logits [n, vocab_size] (a new
        array). itera.InvalidArgumentError for an id outside the vocabulary: no sequence changes.
        """

    def run(self, feeds: Mapping[int, int | Iterable[int]] | Iterable[tuple[int, int | Iterable[int]]]) -> Annotated[NDArray, dict(Any, numpy.dtype[numpy.float32)]]:
        """
        Continuous batching: feeds some sequences any number of tokens together ({seq: ids} or
        (seq, ids) pairs, each sequence at most once) and returns the logits after each feed's last token,
        one row per feed in the order given. The other sequences are untouched.
        """

    def logits(self, i: int) -> Annotated[NDArray, dict(Any, numpy.dtype[numpy.float32)]] | None:
        """
        A copy of sequence i's logits after the last call that fed it; None if the last call did not.
        """

    def position(self, i: int) -> int:
        """Tokens sequence i's state covers."""

    def reset(self, i: int) -> None:
        """Sequence i starts over; the others are untouched."""

    def __len__(self) -> int: ...

    @property
    def size(self) -> int:
        """The number of sequences."""

    @property
    def threads(self) -> int:
        """CPU threads a step runs on."""

    @property
    def device(self) -> str:
        """"cpu" or "cuda"."""

    @property
    def model(self) -> Model: ...

    def __repr__(self) -> str: ...

class Generator:
    """
    The iterator generate() and generate_ids() return. close() ends it early; stop_reason says why it ended: "eos", "length", "stop", "closed" or "error" (None while running).
    """

    def __iter__(self) -> Generator: ...

    def __next__(self) -> Any: ...

    def close(self) -> None:
        """Ends the generation (a context of its own is freed)."""

    @property
    def tokens(self) -> list[int]:
        """The token ids generated so far."""

    @property
    def stop_reason(self) -> str | None: ...

def convert(checkpoint: bytes, output: bytes, *, tokenizer_json: str | None, config_json: str | None, top_k: int, quant: str | None, keep: Sequence[str], precision: Sequence[str], calib_text: str | None, calib_tokens: int, score_tokens: int, target_size: int, prune_ratio: float, prune_scope: str | None, prune_importance: str | None, prune_uniform: bool, trim_vocab: bool, layout: str | None, moe_empty_identity: bool, source_name: str, options_text: str) -> tuple[str, str]:
    """
    itera_convert() on the bytes of a torch.save checkpoint, the .itl file written to `output`
    (os.fsencode of a path, written to a temporary file next to it and renamed over it, as itera-convert
    does); returns (the --report JSON, the summary lines). The fields are itera_convert_params'; use
    itera.convert, which takes the CLI's options as Python values. The GIL is released throughout.
    """

class Sampler:
    """
    Draws token ids from logits as itera-run and itera-server do.

    Sampler(*, temperature=0.8, top_k=40, top_p=0.95, seed=None, greedy=False): greedy (or
    temperature <= 0) takes the most likely id; otherwise softmax at the temperature over the top_k
    largest logits (0: all), cut to the smallest set whose probability reaches top_p, one draw from a
    stream seeded by seed (None: a random seed). The same settings and seed give the same ids as
    `itera-run --seed` and itera-server on the same logits.
    """

    def __init__(self, *, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None, greedy: bool = False) -> None: ...

    @property
    def greedy(self) -> bool:
        """Whether sample() is the argmax (greedy=True or temperature <= 0)."""

    def sample(self, logits: numpy.typing.NDArray[numpy.float32]) -> int:
        """
        The next token id from one row of float32 logits (a 1-D C-contiguous array, e.g. a row of
        Batch.run's result). Advances the seeded stream. NaN logits raise itera.InvalidArgumentError.
        """

def version() -> str:
    """The library's version ("0.2.0")."""

def device_available(device: str) -> bool:
    """
    Whether contexts and batches can be made on "cpu", "cuda" or "auto" (always for "cpu" and
    "auto"). Model.context(device="cuda") raises the reason when it cannot.
    """

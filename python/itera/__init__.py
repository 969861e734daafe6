"""Itera: run Itera-Lite language models (.itl files) from Python at the C runtime's speed.

    import itera
    model = itera.Model.builtin()                  # or itera.Model("model.itl"), itera.Model(data)
    print(model.complete("and god said", max_tokens=20, seed=1))
    for piece in model.generate("and the lord said", max_tokens=30, greedy=True):
        print(piece, end="", flush=True)
    ctx = model.context()                          # one sequence; device="cuda" or "auto" for a GPU
    logits = ctx.eval(model.tokenize("and god"))   # numpy float32 [vocab_size]
    print(model.perplexity(open("heldout.txt").read()).ppl)
    itera.convert("model.pt", "model-q4.itl", tokenizer="tokenizer.json", quant="q4")  # or a state dict

Errors are itera.Error subclasses mirroring the C API's ITERA_ERR_* codes; the GIL is released
while the library computes. docs/python.md is the guide.
"""
from ._errors import (BufferTooSmallError, Error, FileError, FormatError, InternalError,
                      InvalidArgumentError, ModelMismatchError, NoCudaError, NoDeviceError,
                      NoTokenizerError, OutOfMemoryError, UnknownTokenError)
from ._checkpoint import checkpoint_bytes
from ._convert import convert
from ._itera import Batch, Context, Generator, Model, Sampler, device_available, version
from ._perplexity import Perplexity

__version__ = version()

__all__ = [
    "Batch", "BufferTooSmallError", "Context", "Error", "FileError", "FormatError", "Generator",
    "InternalError", "InvalidArgumentError", "Model", "ModelMismatchError", "NoCudaError",
    "NoDeviceError", "NoTokenizerError", "OutOfMemoryError", "Perplexity", "Sampler", "UnknownTokenError",
    "checkpoint_bytes", "convert", "device_available", "version",
]

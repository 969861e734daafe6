"""The C API itself (the build's libitera.so) through ctypes: the reference the binding's results
must equal bit for bit, reached without any of the binding's code."""
import ctypes
import os

import numpy as np

LIB = ctypes.CDLL(os.environ["ITERA_LIB"])
c_float_p = ctypes.POINTER(ctypes.c_float)


class SamplerParams(ctypes.Structure):
    _fields_ = [("greedy", ctypes.c_int), ("temperature", ctypes.c_float), ("top_k", ctypes.c_int32),
                ("top_p", ctypes.c_float), ("seed", ctypes.c_uint64)]


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.c_char_p, ctypes.c_void_p)
LIB.itera_last_error.restype = ctypes.c_char_p
LIB.itera_model_vocab_size.argtypes = [ctypes.c_void_p]
LIB.itera_model_load_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
LIB.itera_model_free.argtypes = [ctypes.c_void_p]
LIB.itera_context_new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
LIB.itera_context_free.argtypes = [ctypes.c_void_p]
LIB.itera_eval.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(c_float_p)]
LIB.itera_eval_tokens.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32,
                                  ctypes.POINTER(c_float_p)]
LIB.itera_sampler_default_params.restype = SamplerParams
LIB.itera_generate.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_int32,
                               ctypes.POINTER(SamplerParams), CALLBACK, ctypes.c_void_p,
                               ctypes.POINTER(ctypes.c_int32)]


def check(rc):
    if rc != 0:
        raise RuntimeError(f"C API error {rc}: {LIB.itera_last_error().decode()}")


class Model:
    def __init__(self, path):
        self.handle = ctypes.c_void_p()
        check(LIB.itera_model_load_file(os.fsencode(path), None, ctypes.byref(self.handle)))
        self.vocab = LIB.itera_model_vocab_size(self.handle)

    def __del__(self):
        LIB.itera_model_free(self.handle)

    def context(self):
        return Context(self)


class Context:
    def __init__(self, model):
        self.model = model  # outlives the context
        self.handle = ctypes.c_void_p()
        check(LIB.itera_context_new(model.handle, None, ctypes.byref(self.handle)))

    def __del__(self):
        LIB.itera_context_free(self.handle)

    def eval(self, token):
        """The logits after feeding one token, copied."""
        out = c_float_p()
        check(LIB.itera_eval(self.handle, token, ctypes.byref(out)))
        return np.ctypeslib.as_array(out, shape=(self.model.vocab,)).copy()

    def eval_tokens(self, tokens):
        ids = (ctypes.c_int32 * len(tokens))(*tokens)
        out = c_float_p()
        check(LIB.itera_eval_tokens(self.handle, ids, len(tokens), ctypes.byref(out)))
        return np.ctypeslib.as_array(out, shape=(self.model.vocab,)).copy()

    def generate(self, prompt, n, greedy=False, temperature=0.8, top_k=40, top_p=0.95, seed=0):
        """itera_generate: the (token, piece) pairs its callback saw."""
        params = LIB.itera_sampler_default_params()
        params.greedy, params.temperature, params.top_k, params.top_p, params.seed = (
            int(greedy), temperature, top_k, top_p, seed)
        seen = []

        def on_token(token, piece, _):
            seen.append((token, piece.decode() if piece is not None else None))
            return 0

        ids = (ctypes.c_int32 * len(prompt))(*prompt)
        count = ctypes.c_int32()
        check(LIB.itera_generate(self.handle, ids, len(prompt), n, ctypes.byref(params), CALLBACK(on_token), None,
                                 ctypes.byref(count)))
        assert count.value == len(seen)
        return seen

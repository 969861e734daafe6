#!/usr/bin/python3
"""Writes real torch.save checkpoints plus expected.json for tests/test_pt_reader.cpp.

Usage: /usr/bin/python3 tests/pt/make_pt_fixtures.py OUTDIR
Then:  ITERA_PT_FIXTURES=OUTDIR <test binary>

Every file is loaded back with torch.load and compared with what was saved, so the expected
values are what PyTorch itself reads.
"""
import collections
import json
import os
import sys
import types
import zipfile

import torch

DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
          torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
          torch.uint8: "u8", torch.bool: "bool", torch.qint8: "qint8"}

# A stand-in for upstream's pickled `models.config.IteraLiteConfig`: pickle names the class
# by module and qualified name, so it has to live in an importable module of that name.
config_module = types.ModuleType("models.config")


class IteraLiteConfig:
    pass


IteraLiteConfig.__module__ = "models.config"
config_module.IteraLiteConfig = IteraLiteConfig
sys.modules["models"] = types.ModuleType("models")
sys.modules["models.config"] = config_module


def plain_state_dict():
    g = torch.Generator().manual_seed(1234)
    base = torch.randn(3, 5, generator=g)
    grid = torch.randn(4, 6, generator=g)
    tied = torch.randn(2, 3, generator=g)
    sd = collections.OrderedDict()
    sd["f32.weight"] = torch.randn(3, 4, generator=g)
    sd["f16.weight"] = torch.tensor([1.5, -2.25, 6e-8, 65504.0, -0.0, 1e-5, 3.140625]).half()  # 6e-8: subnormal
    sd["bf16.weight"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["f64.buffer"] = torch.randn(4, generator=g).double()
    sd["i64.counts"] = torch.tensor([0, -1, 2**40, -(2**40)], dtype=torch.int64)
    sd["i32.ids"] = torch.tensor([[7, -8], [2**30, -(2**31)]], dtype=torch.int32)
    sd["i16.ids"] = torch.tensor([-32768, 32767, 5], dtype=torch.int16)
    sd["i8.ids"] = torch.tensor([-128, 127, 0, -3], dtype=torch.int8)
    sd["u8.ids"] = torch.tensor([0, 255, 17], dtype=torch.uint8)
    sd["bool.mask"] = torch.tensor([True, False, True])
    sd["transposed"] = base.t()             # strides (1, 5): not contiguous
    sd["slice"] = grid[1:3]                 # storage offset 6
    sd["strided"] = grid[:, 1::2]           # offset 1, strides (6, 2); same storage as "slice"
    sd["tied.a"] = tied
    sd["tied.b"] = tied                     # the same tensor twice
    sd["tied.row"] = tied[1]                # a view into it
    sd["scalar"] = torch.tensor(2.5)        # 0-d
    sd["empty"] = torch.zeros(0, 7)
    return sd


def small_state_dict():
    g = torch.Generator().manual_seed(99)
    return collections.OrderedDict([("embedding.weight", torch.randn(4, 3, generator=g)),
                                    ("norm.bias", torch.randn(3, generator=g))])


def quantized_state_dict():
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3, bias=False))
    return torch.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8).state_dict()


def describe_tensors(sd):
    """The tensors the reader must produce: dequantized packed Linears, no qparams/dtype entries."""
    packed = "._packed_params._packed_params"
    modules = {k[: -len(packed)] for k in sd if k.endswith(packed)}
    out, first_of_storage = [], {}
    for name, value in sd.items():
        if name.endswith(packed):
            weight, bias = value
            entries = [(name[: -len(packed)] + ".weight", weight)]
            if bias is not None:
                entries.append((name[: -len(packed)] + ".bias", bias))
        elif isinstance(value, torch.Tensor) and name.rsplit(".", 1)[0] not in modules:
            entries = [(name, value)]
        else:
            continue
        for n, t in entries:
            t = t.detach()
            values = t.dequantize() if t.is_quantized else t
            shares = None
            if t.numel() > 0 and not t.is_quantized:
                shares = first_of_storage.setdefault(t.storage().data_ptr(), n)
                shares = None if shares == n else shares
            out.append({"name": n, "dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "storage_offset": t.storage_offset(), "shares_storage_with": shares,
                        "values": values.float().reshape(-1).tolist()})
    return out


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() \
            and a.storage_offset() == b.storage_offset() and \
            bool(((a.dequantize() == b.dequantize()) if a.is_quantized else (a == b)).all())
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, IteraLiteConfig):
        return vars(a) == vars(b)
    return a == b or (a != a and b != b)


def save(outdir, name, obj, **kwargs):
    path = os.path.join(outdir, name)
    torch.save(obj, path, **kwargs)
    assert same(obj, torch.load(path)), name  # what torch reads back is what we expect
    return path


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name), data, compress_type=compression)


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned')",))


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    files, errors = {}, {}

    sd = plain_state_dict()
    for protocol in (1, 2, 3, 4, 5):
        name = "state_dict.pt" if protocol == 2 else "state_dict_p%d.pt" % protocol
        save(outdir, name, sd, pickle_protocol=protocol)
        files[name] = {"tensors": describe_tensors(sd), "config": None}

    config = {"vocab_size": 16, "hidden_size": 8, "moe_layers": [1, 3], "layer_norm_eps": 1e-5,
              "use_flash_attn": False, "name": "tiny", "nested": {"a": None, "b": (1, 2)},
              "big": 2**40, "neg": -7}
    small = small_state_dict()
    save(outdir, "wrapped.pt", {"model_state_dict": small, "config": config, "compression_ratio": 3.8,
                                "mixed_precision_metadata": {"ppl": float("inf"), "delta": float("nan")}})
    files["wrapped.pt"] = {"tensors": describe_tensors(small), "config": config}

    obj = IteraLiteConfig()
    obj.__dict__.update({"vocab_size": 2000, "hidden_size": 64, "moe_layers": [1], "dropout": 0.1,
                         "gradient_checkpointing": False})
    save(outdir, "config_object.pt", {"model_state_dict": small, "config": obj,
                                      "quantization_info": {"scales": {"embedding.weight": 0.5}}})
    files["config_object.pt"] = {"tensors": describe_tensors(small), "config": vars(obj)}

    qsd = quantized_state_dict()
    save(outdir, "quantized.pt", qsd)
    files["quantized.pt"] = {"tensors": describe_tensors(qsd), "config": None}

    # {'weight': os.system('echo pwned')} in an otherwise valid archive.
    evil = (b"\x80\x02}q\x00X\x06\x00\x00\x00weightq\x01cos\nsystem\nq\x02"
            b"X\x0a\x00\x00\x00echo pwnedq\x03\x85q\x04Rq\x05s.")
    write_zip(os.path.join(outdir, "malicious.pt"), [("malicious/data.pkl", evil), ("malicious/version", b"3\n")])
    errors["malicious.pt"] = "unsupported pickle global 'os.system' (itera-convert never executes pickle code)"

    # The same through Python's own pickler (protocol 4: STACK_GLOBAL, FRAME, MEMOIZE).
    import pickle
    write_zip(os.path.join(outdir, "malicious_eval.pt"),
              [("archive/data.pkl", pickle.dumps({"weight": CallsEval()}, protocol=4))])
    errors["malicious_eval.pt"] = "unsupported pickle global 'builtins.eval' (itera-convert never executes pickle code)"

    # A real checkpoint re-zipped with deflate.
    with zipfile.ZipFile(os.path.join(outdir, "wrapped.pt")) as z:
        entries = [(n, z.read(n)) for n in z.namelist()]
    write_zip(os.path.join(outdir, "compressed.pt"), entries, zipfile.ZIP_DEFLATED)
    errors["compressed.pt"] = "zip entry 'wrapped/data.pkl' is compressed (method 8)"

    with open(os.path.join(outdir, "expected.json"), "w") as f:
        json.dump({"files": files, "errors": errors}, f, indent=1)
    print("wrote %d checkpoints and %d bad files to %s" % (len(files), len(errors), outdir))


if __name__ == "__main__":
    main()

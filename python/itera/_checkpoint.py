"""A state dict as the bytes of a torch.save checkpoint, written without torch (itera.checkpoint_bytes).

The converter reads torch.save's zip format natively (docs/converter.md): `archive/data.pkl`, a
pickle whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
calls over persistent ids `('storage', torch.<T>Storage, key, 'cpu', numel)`, and
`archive/data/<key>`, each storage's little-endian bytes, STORED. This module writes exactly that
from numpy arrays or torch tensors, so a state dict needs neither torch nor a temporary file, and
the bytes are the same on every run, machine and torch version (torch.save's are not: it names the
archive after the file and newer versions add a serialization id). torch.load reads them back.
"""
from __future__ import annotations

import io
import struct
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

# numpy dtype -> torch storage type (docs/converter.md lists the ones the converter reads).
_STORAGES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}
_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so that the bytes do not depend on when they were made


def _is_torch_tensor(value):
    module = type(value).__module__
    return (module == "torch" or module.startswith("torch.")) and hasattr(value, "detach")


def _as_array(name, value):
    """(C-contiguous little-endian numpy array, storage type name) of one state dict value."""
    if _is_torch_tensor(value):
        torch = sys.modules["torch"]  # loaded, since one of its tensors is here
        if value.is_quantized or value.is_sparse:
            raise TypeError(f"state dict entry {name!r}: quantized and sparse tensors are not supported "
                            "(torch.save the checkpoint and pass its bytes)")
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits as int16
            return np.asarray(t.view(torch.int16).numpy(), dtype="<i2", order="C"), "BFloat16Storage"
        value = t.numpy()
    if not isinstance(value, np.ndarray):
        hint = " (for a checkpoint dict, pass its 'model_state_dict' and config=)" if isinstance(value, Mapping) else ""
        raise TypeError(f"state dict entry {name!r} must be a numpy array or a torch tensor, "
                        f"not {type(value).__name__}{hint}")
    storage = _STORAGES.get(value.dtype.newbyteorder("="))
    if storage is None:
        raise TypeError(f"state dict entry {name!r}: unsupported dtype {value.dtype} "
                        f"(one of {', '.join(sorted(str(d) for d in _STORAGES))})")
    return np.asarray(value, dtype=value.dtype.newbyteorder("<"), order="C"), storage


# ---- the pickle (protocol 2), opcode by opcode ----

def _int(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])  # BININT1
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)  # BININT2
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)  # BININT
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _str(s):
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _tuple(items):
    return b")" if not items else b"(" + b"".join(items) + b"t"  # EMPTY_TUPLE, or MARK ... TUPLE


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _tensor(key, storage, array):
    """_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict()), as torch.save writes it."""
    stride, step = [], 1
    for n in reversed(array.shape):
        stride.insert(0, step)
        step *= n
    storage_id = _tuple([_str("storage"), _global("torch", storage), _str(key), _str("cpu"), _int(array.size)])
    args = _tuple([storage_id + b"Q",  # BINPERSID
                   _int(0), _tuple([_int(n) for n in array.shape]), _tuple([_int(s) for s in stride]),
                   b"\x89",  # NEWFALSE: requires_grad
                   _global("collections", "OrderedDict") + b")R"])  # backward hooks: OrderedDict()
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"  # REDUCE


def _entry(archive, name, data, align=1):
    """One STORED entry; with align, a local extra field (id 0x4246, as torch's) puts data on that boundary."""
    info = zipfile.ZipInfo(name, date_time=_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 0
    info.external_attr = 0o600 << 16
    if align > 1:
        data_at = archive.fp.tell() + 30 + len(name.encode()) + 4  # local header, name, extra header
        pad = -data_at % align
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
    archive.writestr(info, data)


def checkpoint_bytes(state_dict: Mapping[str, Any]) -> bytes:
    """The bytes of a torch.save checkpoint of `state_dict` (str -> numpy array or torch tensor),
    which itera.convert and itera-convert read and torch.load loads. torch is not needed for numpy
    arrays. TypeError for anything but such a mapping."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"a state dict must be a mapping of names to arrays, not {type(state_dict).__name__}")
    entries = []
    pickle = bytearray(b"\x80\x02}")  # PROTO 2, EMPTY_DICT
    if state_dict:
        pickle += b"("  # MARK
    for key, (name, value) in enumerate(state_dict.items()):
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be str, not {type(name).__name__} ({name!r})")
        array, storage = _as_array(name, value)
        pickle += _str(name) + _tensor(str(key), storage, array)
        entries.append((f"archive/data/{key}", array.tobytes()))
    if state_dict:
        pickle += b"u"  # SETITEMS
    pickle += b"."  # STOP
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        _entry(archive, "archive/data.pkl", bytes(pickle))
        _entry(archive, "archive/byteorder", b"little")
        for name, data in entries:
            _entry(archive, name, data, align=64)
        _entry(archive, "archive/version", b"3\n")
    return out.getvalue()

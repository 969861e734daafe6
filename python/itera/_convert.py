"""itera.convert: a PyTorch checkpoint (a .pt path, its bytes, or a state dict) into a .itl file,
with itera-convert's options (docs/converter.md), through libitera_convert's itera_convert()."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Union


from . import _itera
from ._checkpoint import checkpoint_bytes
from ._errors import FileError

_MOE_EMPTY = ("error", "identity")
_Path = Union[str, "os.PathLike[str]"]
_Rules = Union[str, Iterable[str], Mapping[str, str], None]


def _read(path, what, text):
    try:
        if text:
            with open(path, encoding="utf-8") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {os.fsdecode(path)!r} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise FileError(f"cannot read {what} {os.fsdecode(path)!r}: {e.strerror or e}") from None


def _is_path(value):
    return isinstance(value, (str, os.PathLike))


def _json_text(value, name):
    """(JSON text, how the options text spells it) of a path to a JSON file or a dict."""
    if value is None:
        return None, None
    if _is_path(value):
        return _read(value, f"the {name} file", True), os.fsdecode(value)
    if isinstance(value, Mapping):
        return json.dumps(value), f"<{name} dict>"
    raise TypeError(f"{name} must be a path (str or os.PathLike) or a dict, not {type(value).__name__}")


def _rules(value, name, join_mapping):
    """A list of str from a str, a sequence of str, or a mapping {glob: dtype} (one map joined by
    commas for --precision, one rule each for --keep)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        pairs = []
        for glob, dtype in value.items():
            if not isinstance(glob, str) or not isinstance(dtype, str):
                raise TypeError(f"{name}: a mapping must map str globs to str dtypes")
            pairs.append(f"{glob}={dtype}")
        return [",".join(pairs)] if join_mapping else pairs
    if isinstance(value, (bytes, bytearray)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a str, a sequence of str or a dict, not {type(value).__name__}")
    out = list(value)
    if not all(isinstance(v, str) for v in out):
        raise TypeError(f"{name} must hold str rules")
    return out


def _int(value, name, low, high):
    if value is None:
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):  # int, numpy integers
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = value.__index__()
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _str(value, name):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    return value


def _bool(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value


def _source(source):
    """(checkpoint bytes, the source's file name or "")."""
    if _is_path(source):
        return _read(source, "the checkpoint", False), os.path.basename(os.fsdecode(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), ""
    if isinstance(source, Mapping):
        return checkpoint_bytes(source), ""
    raise TypeError("source must be a .pt path (str or os.PathLike), the bytes of one, or a state dict, "
                    f"not {type(source).__name__}")


def convert(source: _Path | bytes | bytearray | memoryview | Mapping[str, Any], output: _Path, *,
            tokenizer: _Path | Mapping[str, Any] | None = None, config: _Path | Mapping[str, Any] | None = None,
            top_k: int | None = None, quant: str | None = None, keep: _Rules = None, precision: _Rules = None,
            calib: _Path | None = None, calib_tokens: int | None = None, score_tokens: int | None = None,
            target_size: int | None = None, prune: float | None = None, prune_scope: str | None = None,
            prune_importance: str | None = None, prune_uniform: bool = False, trim_vocab: bool = True,
            layout: str | None = None, moe_empty: str = "error", source_name: str | None = None) -> dict[str, Any]:
    """Converts a PyTorch checkpoint into the .itl file `output`, as itera-convert does (the same
    file byte for byte for the same checkpoint bytes, options and provenance), and returns the
    --report JSON as a dict (every tensor's dtype, bytes and error; "pruning", "budget" when used).

    source: a .pt path (str or os.PathLike), the bytes of one (bytes, bytearray, memoryview), or a
        state dict {name: numpy array or torch tensor} (written as checkpoint bytes by
        itera.checkpoint_bytes, without torch; torch is never imported by itera). The checkpoint
        is parsed natively: no pickle code runs.
    output: the .itl path, written to a temporary file next to it and renamed over it.
    The options are itera-convert's (docs/converter.md), as Python values:
        tokenizer: --tokenizer, a path to the JSON file or the tokenizer as a dict
        config: --config, a path or a dict (upstream IteraLiteConfig keys)
        top_k: --top-k (1 to 2^20)
        quant: --quant, "fp32", "fp16", "q8", "q4", "nf4", "q3" or "q2"
        keep: --keep, a "GLOB=DTYPE" rule, a list of them, or a dict {glob: dtype}
        precision: --precision, a "GLOB=DTYPE,..." map, a list of them, or a dict (one map)
        calib: --calib, a path to the calibration text
        calib_tokens, score_tokens, target_size (bytes): --calib-tokens, --score-tokens, --target-size
        prune, prune_scope, prune_importance, prune_uniform: --prune RATIO, --prune-scope,
            --prune-importance, --prune-uniform
        trim_vocab=False: --no-trim-vocab; layout: --layout "rows16" or "row_major";
        moe_empty: --moe-empty "error" or "identity"
    source_name: the checkpoint's name recorded in the file's provenance (default: the path's
        file name, "" for bytes and state dicts); the options are recorded as itera-convert
        spells them (paths as given, a dict as <tokenizer dict>), without the source and output.

    The GIL is released while the converter runs. Errors: TypeError and ValueError for arguments of
    the wrong type or value, itera.FileError for a file that cannot be read or written,
    itera.InvalidArgumentError (a ValueError) for options the converter refuses (an unknown
    dtype, a malformed rule, contradicting options), itera.FormatError for a checkpoint it cannot
    convert with them (not a torch.save zip, a refused pickle, another layout, a tokenizer that
    disagrees with the weights).
    """
    if not _is_path(output):
        raise TypeError(f"output must be a path (str or os.PathLike), not {type(output).__name__}")
    spelled = []  # the options as itera-convert's command line spells them (provenance)
    tokenizer_json, shown = _json_text(tokenizer, "tokenizer")
    spelled += ["--tokenizer", shown] if shown else []
    config_json, shown = _json_text(config, "config")
    spelled += ["--config", shown] if shown else []
    top_k = _int(top_k, "top_k", 1, 1 << 20)
    spelled += ["--top-k", str(top_k)] if top_k is not None else []
    quant = _str(quant, "quant")
    spelled += ["--quant", quant] if quant is not None else []
    keep = _rules(keep, "keep", False)
    for rule in keep:
        spelled += ["--keep", rule]
    precision = _rules(precision, "precision", True)
    for rule in precision:
        spelled += ["--precision", rule]
    calib_text = None
    if calib is not None:
        if not _is_path(calib):
            raise TypeError(f"calib must be a path to the calibration text, not {type(calib).__name__}")
        calib_text = _read(calib, "the calibration text", True)
        spelled += ["--calib", os.fsdecode(calib)]
    calib_tokens = _int(calib_tokens, "calib_tokens", 1, 1 << 30)
    spelled += ["--calib-tokens", str(calib_tokens)] if calib_tokens is not None else []
    score_tokens = _int(score_tokens, "score_tokens", 1, 1 << 30)
    spelled += ["--score-tokens", str(score_tokens)] if score_tokens is not None else []
    target_size = _int(target_size, "target_size", 1, 1 << 40)
    spelled += ["--target-size", str(target_size)] if target_size is not None else []
    if prune is not None:
        if isinstance(prune, bool) or not isinstance(prune, (int, float)):
            raise TypeError(f"prune must be a number (the fraction of weights to remove), not {type(prune).__name__}")
        if not 0 <= prune <= 0.95:  # NaN too
            raise ValueError(f"prune must be in [0, 0.95], got {prune}")
        spelled += ["--prune", repr(float(prune))]
    for flag, value, name in (("--prune-scope", prune_scope, "prune_scope"),
                              ("--prune-importance", prune_importance, "prune_importance"),
                              ("--layout", layout, "layout")):
        spelled += [flag, value] if _str(value, name) is not None else []
    spelled += ["--prune-uniform"] if _bool(prune_uniform, "prune_uniform") else []
    spelled += ["--no-trim-vocab"] if not _bool(trim_vocab, "trim_vocab") else []
    if not isinstance(moe_empty, str):
        raise TypeError(f"moe_empty must be a str, not {type(moe_empty).__name__}")
    if moe_empty not in _MOE_EMPTY:
        raise ValueError(f"moe_empty must be 'error' or 'identity', not {moe_empty!r}")
    spelled += ["--moe-empty", moe_empty] if moe_empty != "error" else []
    _str(source_name, "source_name")
    data, name = _source(source)
    report, _summary = _itera.convert(
        data, os.fsencode(output), tokenizer_json=tokenizer_json, config_json=config_json, top_k=top_k or 0,
        quant=quant, keep=keep, precision=precision, calib_text=calib_text,
        calib_tokens=16384 if calib_tokens is None else calib_tokens,
        score_tokens=2048 if score_tokens is None else score_tokens, target_size=target_size or 0,
        prune_ratio=float(prune or 0.0), prune_scope=prune_scope, prune_importance=prune_importance,
        prune_uniform=prune_uniform, trim_vocab=trim_vocab, layout=layout, moe_empty_identity=moe_empty == "identity",
        source_name=name if source_name is None else source_name, options_text=" ".join(spelled))
    return json.loads(report)

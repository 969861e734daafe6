"""The exceptions of the itera package: itera.Error and one subclass per ITERA_ERR_* code of the C
API (runtime/include/itera.h), each carrying the library's one-line message."""


class Error(Exception):
    """An error the Itera library reported. `code` is its ITERA_ERR_* value, `code_name` its name,
    str(error) the library's message."""

    code = 0
    code_name = "ITERA_ERR_UNKNOWN_CODE"


class InvalidArgumentError(Error, ValueError):
    """A value the library refuses: a token id outside the vocabulary, a sampling parameter out of
    range, a window or size out of bounds."""

    code, code_name = 1, "ITERA_ERR_INVALID_ARGUMENT"


class FileError(Error, OSError):
    """A file cannot be opened or written: missing, unreadable, not a regular file. The message names
    the path and the reason."""

    code, code_name = 2, "ITERA_ERR_IO"


class FormatError(Error):
    """A corrupt or unsupported model file, saved state or checkpoint; a model that computes NaN
    logits."""

    code, code_name = 3, "ITERA_ERR_FORMAT"


class UnknownTokenError(Error, ValueError):
    """Text holds a word the vocabulary lacks (the message quotes it); allow_unknown=True maps such
    words to <UNK>."""

    code, code_name = 4, "ITERA_ERR_UNKNOWN_TOKEN"


class OutOfMemoryError(Error, MemoryError):
    """An allocation failed."""

    code, code_name = 5, "ITERA_ERR_OUT_OF_MEMORY"


class InternalError(Error):
    """A bug in the library: please report it with the message."""

    code, code_name = 6, "ITERA_ERR_INTERNAL"


class BufferTooSmallError(Error):
    """A buffer was too small (the package sizes its buffers, so this is not expected)."""

    code, code_name = 7, "ITERA_ERR_BUFFER_TOO_SMALL"


class ModelMismatchError(Error, ValueError):
    """A saved state restored into a context of another model (another fingerprint)."""

    code, code_name = 8, "ITERA_ERR_MODEL_MISMATCH"


class NoTokenizerError(Error):
    """The model file has no tokenizer: work with token ids (generate_ids, eval)."""

    code, code_name = 9, "ITERA_ERR_NO_TOKENIZER"


class NoDeviceError(Error):
    """device="cuda" and no usable GPU; the message says why."""

    code, code_name = 10, "ITERA_ERR_NO_DEVICE"


class NoCudaError(NoDeviceError):
    """device="cuda" with a library built without CUDA support."""

    code, code_name = 11, "ITERA_ERR_NO_CUDA"


BY_CODE = {cls.code: cls for cls in (InvalidArgumentError, FileError, FormatError, UnknownTokenError,
                                     OutOfMemoryError, InternalError, BufferTooSmallError,
                                     ModelMismatchError, NoTokenizerError, NoDeviceError, NoCudaError)}

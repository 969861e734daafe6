"""What a pickled Model or Context names to rebuild itself (pickle refers to functions by name,
which it cannot do for the extension's own functions)."""
from ._itera import Model, _context_from_state


def builtin_model():
    return Model.builtin()


def context(model, device, state):
    return _context_from_state(model, device, state)

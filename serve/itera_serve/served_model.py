"""The model a replica serves and what is read once from it (server/served_model.cpp)."""
import itera


class ServedModel:
    def __init__(self, path, name=None):
        """path: a .itl file, or "builtin" for the shipped model."""
        self.model = itera.Model.builtin() if path == "builtin" else itera.Model(path)
        if not self.model.has_tokenizer:
            raise ValueError(f"{path}: the model has no tokenizer: the deployment serves text")
        self.name = name or ("itera-kjv" if path == "builtin" else path.rsplit("/", 1)[-1])
        self.vocab_size = self.model.vocab_size
        self.eos = self.model.eos
        self.pieces = [self.model.piece(i).encode() for i in range(self.vocab_size)]
        self.readable = self._readable_ids()

    def _readable_ids(self):
        # A trimmed vocabulary drops ids: the library refuses them and gives them -inf logits. Feed
        # the first id it accepts and read the others from its logits, so a prompt of ids is checked
        # before it reaches the batch, where one bad id would fail every sequence's step.
        probe = self.model.context()
        for i in range(self.vocab_size):
            try:
                logits = probe.eval(i)
            except itera.Error:
                continue
            readable = [False] * i + [bool(x != float("-inf")) for x in logits[i:].tolist()]
            readable[i] = True
            return readable
        return [False] * self.vocab_size

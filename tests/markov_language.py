"""The synthetic language the CLI drivers train their small reference models on: pseudo-words,
each followed by one of a few others with fixed probabilities (a Markov chain, so a trained model
has a known, low perplexity), its word tokenizer, and the short training loop that fits
tests/reference/itera_lite.py's IteraLite to it."""
import json
import random

import torch
from itera_lite import IteraLite  # tests/reference: the drivers put it on sys.path

SPECIALS = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"]


class MarkovLanguage:
    def __init__(self, words, successors, weights):
        self.words, self.successors, self.weights = words, successors, weights
        self.tokens = SPECIALS + words
        self.token_id = {t: i for i, t in enumerate(self.tokens)}

    def text(self, n, seed):
        """n words of the chain, from a random first word."""
        rng = random.Random(seed)
        word, out = rng.choice(self.words), []
        for _ in range(n):
            out.append(word)
            word = rng.choices(self.successors[word], self.weights)[0]
        return out

    def ids(self, words):
        return [self.token_id[w] for w in words]

    def write_tokenizer(self, path):
        with open(path, "w") as f:
            json.dump({"vocab_size": len(self.tokens), "token_to_id": self.token_id,
                       "id_to_token": {str(i): t for i, t in enumerate(self.tokens)}}, f)


def pseudo_word_language(n_tokens):
    """SPECIALS, four-letter pseudo-words and '.': n_tokens tokens; each word is followed by one of
    4 others with probabilities .6 .25 .1 .05 (entropy 1.03 nats)."""
    rng = random.Random(7)
    words = set()
    while len(words) < n_tokens - len(SPECIALS) - 1:
        words.add("".join(rng.choice(s) for s in ("bdfgklmnprstvz", "aeiou") * 2))
    words = sorted(words) + ["."]
    successors = {w: random.Random(11 + i).sample(words, 4) for i, w in enumerate(words)}
    return MarkovLanguage(words, successors, (0.6, 0.25, 0.1, 0.05))


def train(cfg, tied, ids, steps, batch, lr):
    """IteraLite(cfg) trained from seed 0 on random windows of ids; returns (model, losses)."""
    torch.manual_seed(0)
    model = IteraLite(cfg, tied=tied)
    ctx, rows = cfg["max_seq_length"], cfg["vocab_size"]
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        at = torch.randint(0, len(data) - ctx - 1, (batch,))
        x = torch.stack([data[i:i + ctx] for i in at])
        y = torch.stack([data[i + 1:i + ctx + 1] for i in at])
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, rows), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses

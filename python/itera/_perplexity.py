"""itera.Perplexity: what Model.perplexity returns (the fields of `itera-run ppl --json`)."""
from typing import NamedTuple, Optional


class Perplexity(NamedTuple):
    """The score of a text (Model.perplexity), as `itera-run ppl --json` prints it.

    ppl: exp(mean negative log-likelihood of each next token), in nats
    tokens: tokens of the text (words the vocabulary lacks count as <UNK>)
    scored: positions scored, tokens - 1
    unk_fraction: share of the tokens that are <UNK>
    kld: with kld_ref, mean KL(reference || model) in nats over the scored positions; else None
    top1: with kld_ref, share of the positions whose argmaxes agree; else None
    """

    ppl: float
    tokens: int
    scored: int
    unk_fraction: float
    kld: Optional[float] = None
    top1: Optional[float] = None

"""The C runtime's sampler (runtime/sampler.cpp, itera_sampler_sample) in Python, step for step, so
that a request sampled from the batch's logits here picks the tokens itera-server and
`itera-run --seed` pick: splitmix64 from the seed, temperature, top-k (ties by id), top-p, one
uniform draw. The arithmetic is the C++'s: float32 parameters, double probabilities summed in
order, libm's exp (math.exp). The package does not expose the sampler (docs/python.md), and a
request's sampling runs on logits the batch made, so it cannot be a per-request generator."""
import math

import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _f32(x):
    return float(np.float32(x))


class Sampler:
    """One request's sampler: greedy, or temperature / top_k / top_p with its own seeded stream."""

    def __init__(self, *, greedy, temperature, top_k, top_p, seed):
        self.greedy = greedy
        self.temperature = _f32(temperature)
        self.top_k = top_k
        self.top_p = _f32(top_p)
        self.state = (seed ^ _GOLDEN) & _MASK

    @property
    def is_greedy(self):
        """Always the most likely token (the argmax), as greedy=True or temperature <= 0."""
        return self.greedy or self.temperature <= 0.0

    def uniform(self):
        self.state = (self.state + _GOLDEN) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        return (z >> 11) * 2.0**-53

    def sample(self, logits):
        """The next token id from float32 logits [vocab]; ValueError on NaN (as the C API)."""
        if np.isnan(logits).any():
            raise ValueError("the model produced NaN logits (non-finite weights?)")
        if self.is_greedy:
            return int(np.argmax(logits))  # the first of equal maxima, as the C++ argmax
        n = len(logits)
        keep = self.top_k if 0 < self.top_k < n else n
        # largest first, equal logits in id order (a stable sort of the negated logits)
        order = np.argsort(-logits, kind="stable")[:keep].tolist()
        values = logits[order].tolist()  # float32 -> exact doubles
        top = values[0]
        prob = [math.exp((v - top) / self.temperature) for v in values]
        total = 0.0
        for p in prob:
            total += p
        if self.top_p < 1.0:
            cumulative = 0.0
            for i, p in enumerate(prob):
                cumulative += p / total
                if cumulative >= self.top_p:
                    keep = i + 1
                    break
            total = 0.0
            for p in prob[:keep]:
                total += p
        r = self.uniform() * total
        for i in range(keep):
            r -= prob[i]
            if r < 0.0:
                return order[i]
        return order[keep - 1]

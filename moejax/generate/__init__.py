"""moejax.generate: text from a trained checkpoint — the quickest look at what a run learned.

Modules: ``sampling`` (greedy, temperature, top-k, top-p over logits), ``generation`` (a batch of
prompts continued through the model's key/value cache, ``moejax.model.decoding``), ``cli``
(``moejax generate``).
"""

from moejax.generate.generation import Generated, NonFiniteLogits, generate
from moejax.generate.sampling import Sampling, sample_tokens

__all__ = ["Generated", "NonFiniteLogits", "Sampling", "generate", "sample_tokens"]

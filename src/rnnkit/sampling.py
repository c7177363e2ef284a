"""Text generation from a character language model: prime once on the prompt, then step one token at a time.

``generate`` runs ONE forward pass over the prompt (B=1, T=len(prompt)) to build the recurrent state, then feeds
each sampled character back through ``model.step`` carrying that state, so each new character costs one step.
Sampling uses only the ``torch.Generator`` passed in, never the global RNG.

An empty prompt starts from a newline when the vocabulary holds one, else from the vocabulary's first character
(the smallest code point); the start character is not part of the output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from rnnkit.data import Vocab
from rnnkit.data.vocab import UNKNOWN
from rnnkit.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["filter_logits", "generate", "sample_text", "start_text"]


def _check(temperature: float, top_k: int, top_p: float, length: int | None = None) -> None:
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
        raise ValueError(f"length must be an integer >= 0, got {length!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def filter_logits(logits: Tensor, *, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus; logits (..., V) -> (..., V).

    The nucleus is the smallest set of highest-probability tokens whose total probability is >= ``top_p``.
    """
    _check(1.0, top_k, top_p)
    out = logits.clone()
    V = out.size(-1)
    if 0 < top_k < V:
        kth = out.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = out.sort(dim=-1, descending=True)  # (..., V)
        probs = sorted_logits.softmax(dim=-1)  # (..., V)
        mass_before = probs.cumsum(dim=-1) - probs  # (..., V) mass of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # (..., V) already reached p without this token
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # (..., V) back to vocabulary order
        out = out.masked_fill(drop, float("-inf"))
    return out


def _pick(logits: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> Tensor:
    """logits (1, V) -> next token (1,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (1,)
    # float64, and the best logit shifted to 0 before dividing: a tiny temperature or top_p (down to 1e-300) then
    # sends the other logits to -inf, never to inf - inf or 0 / 0
    logits = logits.double()
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # (1, V), <= 0
    probs = filter_logits(scaled, top_k=top_k, top_p=top_p).softmax(dim=-1)  # (1, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (1,)


def start_text(vocab: Vocab) -> str:
    """The context an empty prompt starts from: a newline if the vocabulary has one, else its first character."""
    return "\n" if "\n" in vocab else vocab.decode([0])


@torch.no_grad()
def generate(
    model: nn.Module,
    vocab: Vocab,
    prompt: str,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """Yield ``length`` characters continuing ``prompt`` (the prompt itself is not yielded).

    Args:
        model: a CharLM-like module with ``forward(tokens (B, T), state) -> (logits (B, T, V), state)`` and
            ``step(token (B,), state) -> (logits (B, V), state)``; it is switched to eval mode.
        temperature: divides the logits; 0 is greedy (argmax, no randomness).
        top_k: keep only the k most likely characters (0 = off). top_p: nucleus mass in (0, 1].
        generator: the only source of randomness (None: a fresh generator seeded 0, so output is reproducible).
    Raises:
        DataError: a prompt character is not in the vocabulary. ValueError: a bad argument, named.
    """
    _check(temperature, top_k, top_p, length)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    missing = vocab.missing(prompt)
    if missing:
        raise DataError(f"prompt characters not in the model's vocabulary: {''.join(sorted(set(missing)))!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    model.eval()
    device = next(model.parameters()).device
    context = prompt or start_text(vocab)
    tokens = torch.tensor([vocab.encode(context)], dtype=torch.long, device=device)  # (1, T)
    logits, state = model(tokens)  # (1, T, V)
    banned = vocab.index.get(UNKNOWN)  # the unknown symbol stands for unseen characters: never emit it
    logits = logits[:, -1].float().cpu()  # (1, V)
    for _ in range(length):
        if banned is not None:
            logits[:, banned] = float("-inf")
        token = _pick(logits, temperature, top_k, top_p, generator)  # (1,)
        yield vocab.decode(token.tolist())
        logits, state = model.step(token.to(device), state)  # (1, V)
        logits = logits.float().cpu()


def sample_text(model: nn.Module, vocab: Vocab, prompt: str, length: int, **kwargs) -> str:
    """``generate`` joined into one string."""
    return "".join(generate(model, vocab, prompt, length, **kwargs))

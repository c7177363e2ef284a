"""Text generation from a language model: prime once on the prompt, then step one token at a time.

``generate`` runs ONE forward pass over the prompt (B=1, T=prompt tokens) to build the recurrent state, then feeds
each sampled token back through ``model.step`` carrying that state, so each new token costs one step. Sampling uses
only the ``torch.Generator`` passed in, never the global RNG. ``beam_search`` keeps the ``beam`` likeliest
continuations instead, as one batch of rows, and returns the likeliest of exactly ``length`` tokens.

Both take the run's tokenizer (``rnnkit.data.tokens``; a character ``Vocab`` also works) and yield decoded text as it
becomes whole: a BPE piece can end inside a UTF-8 character, whose bytes wait until it completes.

An empty prompt starts from a newline when the vocabulary holds one, else from its first token; the start token is
not part of the output. The unknown symbol (U+FFFD, standing for characters the training text lacked) is never
generated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from rnnkit.data import Vocab
from rnnkit.data.tokens import Tokenizer, as_tokenizer
from rnnkit.errors import DataError
from rnnkit.precision import at_least_fp32
from rnnkit.sequence import map_state

log = logging.getLogger(__name__)

__all__ = [
    "beam_search",
    "best_continuation",
    "check_prompt",
    "filter_logits",
    "generate",
    "sample_text",
    "start_text",
]


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


def start_text(vocab: Vocab | Tokenizer) -> str:
    """The context an empty prompt starts from: a newline if the vocabulary has one, else its first token."""
    return as_tokenizer(vocab).start_text()


def check_prompt(vocab: Vocab | Tokenizer, prompt: str) -> None:
    """DataError naming the characters of ``prompt`` the vocabulary cannot represent; TypeError for a non-str."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    missing = as_tokenizer(vocab).missing(prompt)
    if missing:
        raise DataError(f"prompt characters not in the model's vocabulary: {''.join(sorted(set(missing)))!r}")


def _prime(model: nn.Module, tokenizer: Tokenizer, prompt: str) -> tuple[Tensor, object]:
    """One forward pass over the prompt (or the start text): the last step's logits (1, V), and the state."""
    model.eval()
    device = next(model.parameters()).device
    tokens = torch.tensor([tokenizer.encode(prompt or tokenizer.start_text())], dtype=torch.long, device=device)
    logits, state = model(tokens)  # (1, T, V)
    return logits[:, -1], state  # (1, V)


@torch.no_grad()
def generate(
    model: nn.Module,
    vocab: Vocab | Tokenizer,
    prompt: str,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """Yield the text of ``length`` tokens continuing ``prompt`` (the prompt itself is not yielded).

    Args:
        model: a CharLM-like module with ``forward(tokens (B, T), state) -> (logits (B, T, V), state)`` and
            ``step(token (B,), state) -> (logits (B, V), state)``; it is switched to eval mode.
        vocab: the run's tokenizer, or a character ``Vocab``.
        temperature: divides the logits; 0 is greedy (argmax, no randomness).
        top_k: keep only the k most likely tokens (0 = off). top_p: nucleus mass in (0, 1].
        generator: the only source of randomness (None: a fresh generator seeded 0, so output is reproducible).
    Raises:
        DataError: a prompt character is not in the vocabulary. ValueError: a bad argument, named.
    """
    _check(temperature, top_k, top_p, length)
    tokenizer = as_tokenizer(vocab)
    check_prompt(tokenizer, prompt)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    logits, state = _prime(model, tokenizer, prompt)  # (1, V)
    banned = tokenizer.unknown_id

    def tokens() -> Iterator[int]:
        nonlocal logits, state
        logits = logits.float().cpu()
        for _ in range(length):
            if banned is not None:
                logits[:, banned] = float("-inf")
            token = _pick(logits, temperature, top_k, top_p, generator)  # (1,)
            yield int(token)
            logits, state = model.step(token.to(device), state)  # (1, V)
            logits = logits.float().cpu()

    yield from tokenizer.stream(tokens())


def sample_text(model: nn.Module, vocab: Vocab | Tokenizer, prompt: str, length: int, **kwargs) -> str:
    """``generate`` joined into one string."""
    return "".join(generate(model, vocab, prompt, length, **kwargs))


# --- beam search ----------------------------------------------------------------------------------------------------


def _beam_tokens(model: nn.Module, logits: Tensor, state, length: int, beam: int, banned: int | None,
                 result: dict) -> Iterator[int]:  # fmt: skip
    """The likeliest ``length``-token continuation, token by token as soon as every live beam agrees on it.

    logits (1, V) and state come from priming on the context. The beam is kept as K rows of one batch: at each
    step the K x V continuations are scored by their total log-probability, the best K survive (topk over the
    flattened (K, V) grid), and the state rows follow their origins. A prefix shared by all K live beams is final
    (every later hypothesis extends one of them), so it is yielded at once; the rest of the best is yielded at the
    end. ``result`` receives ``tokens`` (the best continuation) and ``score`` (its total log-probability, nats).
    """
    device = logits.device
    V = logits.size(-1)
    # (K,) total log-probability of each live beam; one row to start
    scores = torch.zeros(1, device=device, dtype=at_least_fp32(logits).dtype)
    history = torch.zeros(1, 0, dtype=torch.long)  # (K, t) the tokens of each live beam
    emitted = 0
    for t in range(length):
        if t > 0:
            logits, state = model.step(history[:, -1].to(device), state)  # (K, V)
        logp = torch.log_softmax(at_least_fp32(logits), dim=-1)  # (K, V) fp32 under bf16 autocast, fp64 for fp64
        if banned is not None:
            logp[:, banned] = float("-inf")
        total = (scores.unsqueeze(1) + logp).view(-1)  # (K*V,) every one-token extension of every beam
        k = min(beam, int(torch.isfinite(total).sum()))
        scores, flat = total.topk(k)  # (K,) best first
        origin, token = (flat // V).cpu(), (flat % V).cpu()  # (K,) the beam each extends, and the new token
        state = map_state(lambda s, rows=origin: s.index_select(1, rows.to(s.device)), state)  # (L, K, H) follow
        history = torch.cat([history[origin], token.unsqueeze(1)], dim=1)  # (K, t+1)
        while emitted <= t and bool((history[:, emitted] == history[0, emitted]).all()):
            yield int(history[0, emitted])
            emitted += 1
    best = history[0].tolist() if length else []
    yield from best[emitted:]
    result["tokens"], result["score"] = best, float(scores[0]) if length else 0.0


@torch.no_grad()
def beam_search(model: nn.Module, vocab: Vocab | Tokenizer, prompt: str, length: int, *, beam: int,
                result: dict | None = None) -> Iterator[str]:  # fmt: skip
    """Yield the text of the likeliest continuation of exactly ``length`` tokens after ``prompt``, by beam search.

    The score of a continuation is the sum of its tokens' log-probabilities, not normalised by length: every
    hypothesis has exactly ``length`` tokens, so dividing by the token count would rank them the same, and dividing
    by characters would favour long tokens over likely ones. With ``beam`` >= V^(length-1) the search is exhaustive
    (exact); ``beam=1`` is greedy decoding. Text is yielded as soon as all beams agree on it. ``result``, when given,
    receives ``tokens`` (the ids of the continuation) and ``score`` (its log-probability in nats).
    """
    _check(1.0, 0, 1.0, length)
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    tokenizer = as_tokenizer(vocab)
    check_prompt(tokenizer, prompt)
    logits, state = _prime(model, tokenizer, prompt)  # (1, V)
    out = {} if result is None else result
    yield from tokenizer.stream(_beam_tokens(model, logits, state, length, beam, tokenizer.unknown_id, out))


def best_continuation(model: nn.Module, vocab: Vocab | Tokenizer, prompt: str, length: int, *,
                      beam: int) -> tuple[list[int], float]:  # fmt: skip
    """``beam_search`` run to the end: the ids of the continuation and its total log-probability (nats)."""
    result: dict = {}
    for _ in beam_search(model, vocab, prompt, length, beam=beam, result=result):
        pass
    return result["tokens"], result["score"]

"""CTC decoding and scoring: greedy, prefix beam search with shallow fusion of a character LM, CER and WER.

Connectionist temporal classification (Graves et al. 2006) gives each frame t a distribution y_t over the symbols
plus a blank (id 0 here). A label sequence l has probability the sum over every frame alignment a that collapses to
l (merge repeats, then drop blanks)::

    p(l | x) = sum_{a: B(a) = l} prod_t y_t[a_t]

Greedy decoding collapses the most likely symbol of each frame. Prefix beam search (Hannun et al. 2014) keeps the K
best prefixes, each with the probability of its alignments ending in a blank (p_b) and in its last symbol (p_nb),
updated frame by frame::

    extend l by c != last(l):  p_nb(l+c) += y_t[c] (p_b(l) + p_nb(l))
    extend l by c == last(l):  p_nb(l+c) += y_t[c] p_b(l)           (a repeat needs a blank between)
    stay:                      p_nb(l)   += y_t[last(l)] p_nb(l),     p_b(l) += y_t[blank] (p_b(l) + p_nb(l))

With shallow fusion a prefix is ranked by

    score(l) = log p_ctc(l) + alpha log p_lm(l) + beta |l|

where p_lm is a character LM (an rnnkit LM run), whose state is carried along each prefix, and beta an insertion
bonus that offsets the LM's preference for short outputs. At the end each prefix also pays alpha log p_lm(newline):
an LM trained on one transcript a line knows where a sentence ends. Without pruning (beam wide enough) p_b + p_nb
is exactly p(l | x), which the tests check against enumeration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CharLMScorer", "Hypothesis", "collapse", "edit_distance", "error_rates", "greedy_decode",
           "prefix_beam_search"]  # fmt: skip

NEG_INF = -math.inf


def logsumexp(*xs: float) -> float:
    m = max(xs)
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(sum(math.exp(x - m) for x in xs))


def collapse(ids: Sequence[int], blank: int = 0) -> list[int]:
    """B(a): merge repeated symbols, then drop blanks."""
    out, previous = [], None
    for i in ids:
        if i != previous and i != blank:
            out.append(i)
        previous = i
    return out


def greedy_decode(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """The collapsed best path of each row: log_probs (B, T, V+1), lengths (B,) -> B lists of symbol ids."""
    best = log_probs.argmax(-1)  # (B, T)
    return [collapse(best[b, : int(lengths[b])].tolist(), blank) for b in range(best.size(0))]


@dataclass
class Hypothesis:
    """A decoded prefix: its symbols, log p_ctc, alpha-weighted LM log-probability, and the fused score."""

    ids: tuple[int, ...]
    ctc: float
    lm: float
    score: float


class CharLMScorer:
    """Shallow fusion with an rnnkit character LM: log p_lm(c | prefix) for every CTC symbol c, batched over prefixes.

    ``symbols``: the CTC symbols (id 1.. ; id 0 is the blank), each a single character; a character the LM's
    vocabulary lacks is scored as its unknown symbol (U+FFFD). A prefix's LM state is computed once, when the
    prefix is first extended, by one LM step from its parent's state.
    """

    def __init__(self, model, vocab, symbols: Sequence[str], start: str = "\n") -> None:
        from rnnkit.data.vocab import UNKNOWN

        def lm_id(c: str) -> int:
            if c in vocab.index:
                return vocab.index[c]
            if UNKNOWN in vocab.index:
                return vocab.index[UNKNOWN]
            raise ValueError(f"the LM's vocabulary holds neither {c!r} nor the unknown symbol")

        if any(len(s) != 1 for s in symbols):
            raise ValueError("LM fusion needs single-character symbols (--tokens chars)")
        self.model = model
        self.to_lm = torch.tensor([0] + [lm_id(c) for c in symbols])  # (V+1,) CTC id -> LM id (the blank unused)
        self.end = vocab.index.get("\n")
        self.start = vocab.index.get(start, None)
        self.cache: dict[tuple[int, ...], tuple[Tensor, object]] = {}  # prefix -> (log p_lm over CTC ids, state)

    @torch.no_grad()
    def _step(self, lm_ids: list[int], states: list) -> tuple[Tensor, list]:
        from rnnkit.sequence import map_state

        state = None if states[0] is None else map_state(lambda *ts: torch.cat(ts, dim=-2), *states)  # (L, n, H)
        logits, state = self.model.step(torch.tensor(lm_ids), state)  # (n, V_lm)
        log_p = torch.log_softmax(logits.float(), -1)  # (n, V_lm)
        rows = [map_state(lambda t, i=i: t[..., i : i + 1, :], state) for i in range(len(lm_ids))]
        return log_p, rows

    def prepare(self, prefixes: list[tuple[int, ...]]) -> None:
        """Compute (in one batched LM step) the distributions of the prefixes not yet cached."""
        todo = [p for p in dict.fromkeys(prefixes) if p not in self.cache]
        if not todo:
            return
        if () in todo:
            todo.remove(())
            if self.start is None:
                log_p, state = torch.full((int(self.model.vocab_size),), -math.log(self.model.vocab_size)), None
            else:
                lp, rows = self._step([self.start], [None])
                log_p, state = lp[0], rows[0]
            self.cache[()] = (log_p, state)
        if not todo:
            return
        parents = [self.cache[p[:-1]] for p in todo]  # a prefix's parent was extended before it
        lp, rows = self._step([int(self.to_lm[p[-1]]) for p in todo], [s for _, s in parents])
        for p, log_p, state in zip(todo, lp, rows, strict=True):
            self.cache[p] = (log_p, state)

    def log_probs(self, prefix: tuple[int, ...]) -> Tensor:
        """log p_lm(c | prefix) for each CTC id c (V+1,); the blank's entry is meaningless."""
        return self.cache[prefix][0][self.to_lm]

    def end_log_prob(self, prefix: tuple[int, ...]) -> float:
        return 0.0 if self.end is None else float(self.cache[prefix][0][self.end])


def prefix_beam_search(log_probs: Tensor, beam: int, *, blank: int = 0, lm: CharLMScorer | None = None,
                       lm_weight: float = 0.0, insertion_bonus: float = 0.0, min_log_prob: float = -12.0,
                       n_best: int = 1) -> list[Hypothesis]:  # fmt: skip
    """CTC prefix beam search over one utterance's log_probs (T, V+1); the ``n_best`` best, best first.

    ``min_log_prob``: a symbol whose frame log-probability is below it is not tried as an extension at that frame
    (``-inf`` tries all: then with ``beam`` at least the number of prefixes the search is exact).
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be (T, V+1), got shape {tuple(log_probs.shape)}")
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    fused = lm is not None and lm_weight != 0.0
    y = log_probs.double().tolist()  # T lists of V+1 floats: the inner loop is Python
    # prefix -> [log p_b, log p_nb]; lm_score[prefix] = alpha * log p_lm(prefix)
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG_INF]}
    lm_score: dict[tuple[int, ...], float] = {(): 0.0}

    def rank(p: tuple[int, ...]) -> float:
        b, nb = beams[p]
        return logsumexp(b, nb) + lm_score[p] + insertion_bonus * len(p)

    for y_t in y:
        if fused:
            lm.prepare(list(beams))
        tried = [c for c, v in enumerate(y_t) if c != blank and v >= min_log_prob]
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(p: tuple[int, ...], which: int, value: float, into=nxt) -> None:
            if value == NEG_INF:  # no alignment reaches p this way (a repeat without a blank between)
                return
            entry = into.setdefault(p, [NEG_INF, NEG_INF])
            entry[which] = logsumexp(entry[which], value)

        for p, (b, nb) in beams.items():
            total = logsumexp(b, nb)
            add(p, 0, y_t[blank] + total)  # stay, emitting a blank
            if p:
                add(p, 1, y_t[p[-1]] + nb)  # stay, repeating the last symbol
            lm_next = lm.log_probs(p) if fused else None  # (V+1,)
            for c in tried:
                q = (*p, c)
                add(q, 1, y_t[c] + (b if p and c == p[-1] else total))
                if q not in lm_score:
                    lm_score[q] = lm_score[p] + (lm_weight * float(lm_next[c]) if fused else 0.0)
        beams = nxt
        if len(beams) > beam:
            kept = sorted(beams, key=rank, reverse=True)[:beam]
            beams = {p: beams[p] for p in kept}
    if fused:
        lm.prepare(list(beams))
    out = []
    for p, (b, nb) in beams.items():
        ctc = logsumexp(b, nb)
        lm_total = lm_score[p] + (lm_weight * lm.end_log_prob(p) if fused else 0.0)
        out.append(Hypothesis(p, ctc, lm_total, ctc + lm_total + insertion_bonus * len(p)))
    out.sort(key=lambda h: h.score, reverse=True)
    return out[:n_best]


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, z in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != z)))
        previous = current
    return previous[-1]


def error_rates(hypotheses: Sequence[str], references: Sequence[str],
                words: Callable[[str], list[str]] = str.split) -> dict[str, float]:  # fmt: skip
    """Corpus CER and WER: edits summed over all utterances over the summed reference length (characters, words).

    cer = sum_i d(hyp_i, ref_i) / sum_i |ref_i|          (characters, spaces included)
    wer = sum_i d(words(hyp_i), words(ref_i)) / sum_i |words(ref_i)|
    """
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"need one or more hypotheses, one per reference, got {len(hypotheses)} and {len(references)}")
    chars = sum(edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True))
    word_edits = sum(edit_distance(words(h), words(r)) for h, r in zip(hypotheses, references, strict=True))
    n_chars = sum(len(r) for r in references)
    n_words = sum(len(words(r)) for r in references)
    return {"cer": chars / max(n_chars, 1), "wer": word_edits / max(n_words, 1), "n": len(references)}

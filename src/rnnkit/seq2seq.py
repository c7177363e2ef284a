"""Encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015), greedy and beam-search decoding.

    source ids (B, S) --embedding--> rnnkit.RNN (bidirectional, lengths) --> memory m_1..m_S (B, S, K*H)
    bridge:      s_0 = tanh(W_b [h_fwd_S ; h_bwd_1])                       (every decoder layer starts from it)
    decoder step t (D = K*H units):
        x_t  = [E_tgt y_{t-1} ; h~_{t-1}]                                   (input feeding: last attentional vector)
        h_t  = cells(x_t, state_{t-1})                                      (a stack of rnnkit cells)
        a_t  = softmax_s score(h_t, m_s) over the valid source steps        (dot: h.m, general: h.W m,
                                                                             bahdanau: v.tanh(W_q h + W_k m))
        c_t  = sum_s a_ts m_s
        h~_t = tanh(W_c [c_t ; h_t]);  logits_t = W_o h~_t                  (or tied: E_tgt (P h~_t))

The attention reads the current decoder state (Luong's order) for every score function. Token ids: 0 padding,
1 unknown, 2 <s>, 3 </s> (``TokenVocab`` with specials ("<s>", "</s>")).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells import Cell, LSTMState, cell_spec
from rnnkit.recurrent import RNN
from rnnkit.sequence import lengths_to_mask

__all__ = [
    "ATTENTIONS",
    "BOS",
    "EOS",
    "PAD",
    "Attention",
    "Hypothesis",
    "Seq2Seq",
    "alignment",
    "beam_search",
    "greedy",
]

PAD, UNK, BOS, EOS = 0, 1, 2, 3
ATTENTIONS = ("dot", "general", "bahdanau")


class Attention(nn.Module):
    """Scores of a query (B, D) against memory (B, S, M), softmax over the valid steps, and the context (B, M)."""

    def __init__(self, kind: str, query_size: int, memory_size: int) -> None:
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"kind must be one of {', '.join(ATTENTIONS)}, got {kind!r}")
        if kind == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention needs query_size == memory_size, got {query_size} and {memory_size}")
        self.kind = kind
        self.w_k = None if kind == "dot" else nn.Linear(memory_size, query_size, bias=kind == "bahdanau")
        self.w_q = nn.Linear(query_size, query_size, bias=False) if kind == "bahdanau" else None
        self.v = nn.Linear(query_size, 1, bias=False) if kind == "bahdanau" else None

    def keys(self, memory: Tensor) -> Tensor:
        """What the scores compare the query with, computed once per source batch: (B, S, D)."""
        return memory if self.w_k is None else self.w_k(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, D), keys (B, S, D), memory (B, S, M), mask (B, S) bool -> weights (B, S), context (B, M)."""
        if self.kind == "bahdanau":
            e = self.v(torch.tanh(self.w_q(query).unsqueeze(1) + keys)).squeeze(-1)  # (B, S)
        else:
            e = (keys @ query.unsqueeze(-1)).squeeze(-1)  # (B, S)
        a = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=-1)  # (B, S), 0 on padding
        return a, (a.unsqueeze(-1) * memory).sum(1)


@dataclass
class Memory:
    """The encoded source batch: memory (B, S, M), attention keys (B, S, D), mask (B, S)."""

    memory: Tensor
    keys: Tensor
    mask: Tensor

    def repeat(self, k: int) -> Memory:
        return Memory(*(t.repeat_interleave(k, dim=0) for t in (self.memory, self.keys, self.mask)))


class Seq2Seq(nn.Module):
    """Encoder (embedding, rnnkit.RNN) -> attention decoder (a stack of cells, input feeding); see the module doc."""

    def __init__(self, source_vocab: int, target_vocab: int, *, mode: str = "lstm", embedding_size: int = 64,
                 hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = True, decoder_layers: int = 1,
                 attention: str = "general", input_feeding: bool = True, tie_embeddings: bool = False,
                 dropout: float = 0.0, backend: str = "auto", encoder_options: dict | None = None) -> None:  # fmt: skip
        super().__init__()
        self.spec = cell_spec(mode)
        K = 2 if bidirectional else 1
        D = K * hidden_size  # the decoder is as wide as the memory, so dot attention always applies
        self.mode, self.K, self.D, self.input_feeding = self.spec.name, K, D, input_feeding
        self.src_embed = nn.Embedding(source_vocab, embedding_size, padding_idx=PAD)
        self.encoder = RNN(mode, embedding_size, hidden_size, num_layers, dropout=dropout, bidirectional=bidirectional,
                           backend=backend, **(encoder_options or {}))  # fmt: skip
        self.tgt_embed = nn.Embedding(target_vocab, embedding_size, padding_idx=PAD)
        self.bridge = nn.Linear(D, D)
        sizes = [embedding_size + (D if input_feeding else 0)] + [D] * (decoder_layers - 1)
        self.cells = nn.ModuleList(Cell(mode, size, D) for size in sizes)
        self.attention = Attention(attention, D, D)
        self.combine = nn.Linear(2 * D, D, bias=False)
        self.drop = nn.Dropout(dropout)
        self.tie = tie_embeddings
        if tie_embeddings:
            self.project = nn.Linear(D, embedding_size, bias=False)
            self.out_bias = nn.Parameter(torch.zeros(target_vocab))
        else:
            self.out = nn.Linear(D, target_vocab)

    # --- encoder and one decoder step -----------------------------------------------------------------------------

    def encode(self, source: Tensor, lengths: Tensor) -> tuple[Memory, Any]:
        """source (B, S) ids, lengths (B,) -> the memory and the decoder's first state."""
        memory, state = self.encoder(self.drop(self.src_embed(source)), lengths=lengths)  # (B, S, D)
        h = state.h if isinstance(state, tuple) else state  # (L*K, B, H)
        s0 = torch.tanh(self.bridge(torch.cat(list(h[-self.K :]), dim=-1)))  # (B, D)
        layers = [LSTMState(s0, torch.zeros_like(s0)) if self.spec.has_cell else s0 for _ in self.cells]
        mask = lengths_to_mask(lengths.to(memory.device), memory.size(1))  # (B, S)
        return Memory(memory, self.attention.keys(memory), mask), (layers, torch.zeros_like(s0))

    def step(self, previous: Tensor, state, memory: Memory) -> tuple[Tensor, Any, Tensor]:
        """previous (B,) token ids -> logits (B, V), the next state, attention weights (B, S)."""
        layers, feed = state
        x = self.tgt_embed(previous)  # (B, E)
        if self.input_feeding:
            x = torch.cat([x, feed], dim=-1)
        new_layers = []
        for cell, s in zip(self.cells, layers, strict=True):
            x, s = cell(self.drop(x), s)  # (B, D)
            new_layers.append(s)
        a, c = self.attention(x, memory.keys, memory.memory, memory.mask)
        h_tilde = torch.tanh(self.combine(torch.cat([c, x], dim=-1)))  # (B, D)
        return self.logits(self.drop(h_tilde)), (new_layers, h_tilde), a

    def logits(self, h: Tensor) -> Tensor:
        if self.tie:
            return F.linear(self.project(h), self.tgt_embed.weight, self.out_bias)
        return self.out(h)

    def forward(self, source: Tensor, lengths: Tensor, target_in: Tensor) -> Tensor:
        """Teacher forcing: target_in (B, T) starts with <s> -> logits (B, T, V) for the next tokens."""
        memory, state = self.encode(source, lengths)
        out = []
        for t in range(target_in.size(1)):
            logits, state, _ = self.step(target_in[:, t], state, memory)
            out.append(logits)
        return torch.stack(out, dim=1)


class EncoderGraph(nn.Module):
    """Export graph: source (B, S), lengths (B,) -> memory, keys (B, S, D), mask (B, S), h0 [c0] (Ld, B, D), feed0."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        memory, (layers, feed) = self.model.encode(source, lengths)
        return (memory.memory, memory.keys, memory.mask, *_stack_layers(layers), feed)


class DecoderGraph(nn.Module):
    """Export graph, one decoder step: previous (B,), h0 [c0] (Ld, B, D), feed0 (B, D), memory, keys, mask
    -> logits (B, V), hn [cn], feed (B, D), attention (B, S)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, previous: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        n = 2 if self.model.spec.has_cell else 1
        parts, (feed, memory, keys, mask) = rest[:n], rest[n:]
        layers = [LSTMState(parts[0][k], parts[1][k]) if n == 2 else parts[0][k] for k in range(len(self.model.cells))]
        logits, (layers, feed), a = self.model.step(previous, (layers, feed), Memory(memory, keys, mask))
        return (logits, *_stack_layers(layers), feed, a)


def _stack_layers(layers: list) -> tuple[Tensor, ...]:
    """The decoder's per-layer states as (Ld, B, D) tensors: (h, c) for LSTM cells, (h,) else."""
    if isinstance(layers[0], tuple):
        return torch.stack([s.h for s in layers]), torch.stack([s.c for s in layers])
    return (torch.stack(layers),)


def reorder(state, index: Tensor):
    """The decoder state of the rows ``index`` (beam search's bookkeeping)."""
    layers, feed = state
    pick = [LSTMState(s.h[index], s.c[index]) if isinstance(s, LSTMState) else s[index] for s in layers]
    return pick, feed[index]


@dataclass
class Hypothesis:
    tokens: list[int]  # without <s>, ending with </s> when it finished
    score: float  # sum of log-probabilities of the tokens
    normalised: float  # score / len(tokens) ** alpha, what the ranking uses


@torch.no_grad()
def greedy(model: Seq2Seq, source: Tensor, lengths: Tensor, max_length: int) -> list[Hypothesis]:
    """The most likely next token at every step, up to </s> or ``max_length`` tokens; one hypothesis a row."""
    memory, state = model.encode(source, lengths)
    B = source.size(0)
    previous = torch.full((B,), BOS, dtype=torch.long, device=source.device)
    tokens, scores = [[] for _ in range(B)], [0.0] * B
    done = [False] * B
    for _ in range(max_length):
        logits, state, _ = model.step(previous, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1)
        best = logp.argmax(-1)
        for b, (token, lp) in enumerate(zip(best.tolist(), logp.gather(1, best[:, None])[:, 0].tolist(), strict=True)):
            if not done[b]:
                tokens[b].append(token)
                scores[b] += lp
                done[b] = token == EOS
        if all(done):
            break
        previous = best
    return [Hypothesis(t, s, s / max(len(t), 1)) for t, s in zip(tokens, scores, strict=True)]


@torch.no_grad()
def alignment(model: Seq2Seq, source: Tensor, max_length: int) -> tuple[list[int], Tensor]:
    """Greedy output of one source (S,) and its attention weights (T, S): row t is where step t looked."""
    memory, state = model.encode(source.unsqueeze(0), torch.tensor([source.numel()]))
    previous, tokens, rows = torch.tensor([BOS]), [], []
    for _ in range(max_length):
        logits, state, a = model.step(previous, state, memory)
        previous = logits.argmax(-1)
        tokens.append(int(previous))
        rows.append(a[0])
        if tokens[-1] == EOS:
            break
    return tokens, torch.stack(rows)


@torch.no_grad()
def beam_search(model: Seq2Seq, source: Tensor, lengths: Tensor, beam: int, max_length: int, *, alpha: float = 1.0,
                n_best: int = 1) -> list[list[Hypothesis]]:  # fmt: skip
    """Batched beam search: the ``n_best`` hypotheses of each row, best first, ranked by score / length**alpha.

    The encoder runs once per batch; each step scores the beam x vocabulary continuations of every row at once. A
    hypothesis ends at </s> when that ending is among the step's best ``beam`` candidates; a row stops when it holds
    ``beam`` finished ones and its best live hypothesis, normalised by its length so far, ranks below the beam-th of
    them (the rule of Hugging Face's ``BeamHypotheses``: an early, unlikely ending cannot stop a row whose live
    beam is far better); at ``max_length`` its live beams are taken as they are.
    """
    if beam < 1 or n_best < 1 or n_best > beam:
        raise ValueError(f"need 1 <= n_best <= beam, got beam={beam}, n_best={n_best}")
    B, device = source.size(0), source.device
    memory, state = model.encode(source, lengths)
    memory = memory.repeat(beam)
    state = reorder(state, torch.arange(B, device=device).repeat_interleave(beam))
    scores = torch.full((B, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis to start with
    previous = torch.full((B * beam,), BOS, dtype=torch.long, device=device)
    history = [[[] for _ in range(beam)] for _ in range(B)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_length):
        logits, state, _ = model.step(previous, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*beam, V)
        V = logp.size(-1)
        total = (scores.unsqueeze(-1) + logp.view(B, beam, V)).view(B, -1)  # (B, beam*V)
        top, idx = total.topk(min(2 * beam, total.size(1)), dim=-1)  # enough to refill the beam past </s>
        top_l, origin_l, token_l = top.tolist(), (idx // V).tolist(), (idx % V).tolist()
        new_scores = torch.full((B, beam), float("-inf"), device=device)
        new_origin = torch.zeros(B, beam, dtype=torch.long)
        new_token = torch.full((B, beam), PAD, dtype=torch.long)
        new_history = [[[] for _ in range(beam)] for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            k = 0
            for rank, (score, origin, token) in enumerate(zip(top_l[b], origin_l[b], token_l[b], strict=True)):
                if score == float("-inf"):
                    break
                seq = [*history[b][origin], token]
                if token == EOS:
                    if rank < beam:  # an ending counts only among the step's best ``beam`` candidates
                        finished[b].append(Hypothesis(seq, score, score / len(seq) ** alpha))
                else:
                    new_scores[b, k], new_origin[b, k], new_token[b, k] = score, origin, token
                    new_history[b][k] = seq
                    k += 1
                if k == beam:
                    break
            if k == 0:
                done[b] = True
            elif len(finished[b]) >= beam:  # done once no live hypothesis ranks above the beam-th finished one
                kth = sorted((h.normalised for h in finished[b]), reverse=True)[beam - 1]
                done[b] = max(top for top in new_scores[b, :k].tolist()) / (t + 1) ** alpha <= kth
        if all(done):
            break
        if t == max_length - 1:
            for b in range(B):
                if not done[b]:
                    for k in range(beam):
                        s = new_scores[b, k].item()
                        if s > float("-inf"):
                            seq = new_history[b][k]
                            finished[b].append(Hypothesis(seq, s, s / len(seq) ** alpha))
            break
        rows = (torch.arange(B).unsqueeze(1) * beam + new_origin).view(-1).to(device)
        state = reorder(state, rows)
        scores, history = new_scores, new_history
        scores[torch.tensor(done, device=device)] = float("-inf")
        previous = new_token.view(-1).to(device)
    return [sorted(f, key=lambda h: -h.normalised)[:n_best] for f in finished]

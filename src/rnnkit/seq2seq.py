"""Encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015), greedy and beam-search decoding.

    source ids (B, S) --embedding--> rnnkit.RNN (bidirectional, lengths) --> memory m_1..m_S (B, S, K*H)
    bridge:      s_0 = tanh(W_b [h_fwd_S ; h_bwd_1])                       (every decoder layer starts from it)
    decoder step t (D = K*H units):
        x_t  = [E_tgt y_{t-1} ; h~_{t-1}]    with input feeding, else E_tgt y_{t-1}
        h_t  = decoder(x_t, state_{t-1})                                    (an rnnkit.RNN of Ld layers)
        a_t  = softmax_s score(h_t, m_s) over the valid source steps        (dot: h.m, general: h.W m,
                                                                             bahdanau: v.tanh(W_q h + W_k m))
        c_t  = sum_s a_ts m_s
        h~_t = tanh(W_c [c_t ; h_t]);  logits_t = W_o h~_t                  (or tied: E_tgt (P h~_t))

The attention reads the current decoder state (Luong's order) for every score function. Without input feeding
(``input_feeding=False``) nothing in h_t depends on an earlier attention, so teacher forcing runs the decoder RNN
over the whole target in one call (the fused engine) and the attention for all t as batched products:

    H  = decoder(E_tgt Y_in, s_0)          (B, T, D)
    A  = softmax_S(score(H, M))            (B, T, S)   dot/general: one bmm; bahdanau: (B, t, S, D) chunks of T
    C  = A M                               (B, T, D)
    H~ = tanh(W_c [C ; H])                 (B, T, D)

With input feeding, x_t needs h~_{t-1}, so training steps one token at a time (``forward_steps``), as decoding
always does. Both compute the same logits (tests/test_seq2seq.py). Token ids: 0 padding, 1 unknown, 2 <s>, 3 </s>
(``TokenVocab`` with specials ("<s>", "</s>")).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rnnkit.cells import LSTMState, cell_spec
from rnnkit.kernels.step import can_fast
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

# Bahdanau's scores go through a (B, t, S, D) tensor: queries are taken this many elements at a time, and under
# autograd each chunk is recomputed in the backward pass rather than kept (checkpointing), so the memory stays
# bounded at any T (the step-by-step decoder kept one (B, S, D) tensor a step).
ADDITIVE_CHUNK = 2**22


class Attention(nn.Module):
    """Scores of queries (B, T, D) or (B, D) against memory (B, S, M), softmax over the valid steps, and the
    contexts (B, T, M) or (B, M)."""

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
        """query (B, T, D) or (B, D), keys (B, S, D), memory (B, S, M), mask (B, S) bool
        -> weights (B, T, S), context (B, T, M) (without the T axis for a (B, D) query)."""
        one = query.dim() == 2
        q = query.unsqueeze(1) if one else query  # (B, T, D)
        e = self.additive(q, keys) if self.kind == "bahdanau" else q @ keys.transpose(1, 2)  # (B, T, S)
        a = torch.softmax(e.float().masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)  # (B, T, S), 0 on pads
        c = a.to(memory.dtype) @ memory  # (B, T, M)
        return (a.squeeze(1), c.squeeze(1)) if one else (a, c)

    def additive(self, q: Tensor, keys: Tensor) -> Tensor:
        """Bahdanau's e_ts = v . tanh(W_q q_t + k_s): q (B, T, D), keys (B, S, D) -> (B, T, S), in chunks of T."""
        B, T, D = q.shape
        wq = self.w_q(q)  # (B, T, D)
        step = max(1, ADDITIVE_CHUNK // max(1, B * keys.size(1) * D))
        if step >= T:
            return self._scores(wq, keys)
        recompute = torch.is_grad_enabled() and (wq.requires_grad or keys.requires_grad)
        parts = [checkpoint(self._scores, part, keys, use_reentrant=False) if recompute else self._scores(part, keys)
                 for part in wq.split(step, dim=1)]  # fmt: skip
        return torch.cat(parts, dim=1)

    def _scores(self, wq: Tensor, keys: Tensor) -> Tensor:
        return self.v(torch.tanh(wq.unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)  # (B, t, S, D) -> (B, t, S)


@dataclass
class Memory:
    """The encoded source batch: memory (B, S, M), attention keys (B, S, D), mask (B, S)."""

    memory: Tensor
    keys: Tensor
    mask: Tensor

    def repeat(self, k: int) -> Memory:
        return Memory(*(t.repeat_interleave(k, dim=0) for t in (self.memory, self.keys, self.mask)))


class Seq2Seq(nn.Module):
    """Encoder (embedding, rnnkit.RNN) -> attention decoder (rnnkit.RNN, optional input feeding); see the module doc.

    The decoder's state is ``(hidden, feed)``: ``hidden`` in ``rnnkit.RNN``'s layout, (Ld, B, D) or an
    ``LSTMState`` of two, and ``feed`` the last attentional vector h~ (B, D).
    """

    def __init__(self, source_vocab: int, target_vocab: int, *, mode: str = "lstm", embedding_size: int = 64,
                 hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = True, decoder_layers: int = 1,
                 attention: str = "general", input_feeding: bool = True, tie_embeddings: bool = False,
                 dropout: float = 0.0, backend: str = "auto", encoder_options: dict | None = None) -> None:  # fmt: skip
        super().__init__()
        self.spec = cell_spec(mode)
        K = 2 if bidirectional else 1
        D = K * hidden_size  # the decoder is as wide as the memory, so dot attention always applies
        self.mode, self.K, self.D, self.input_feeding = self.spec.name, K, D, input_feeding
        self.decoder_layers = decoder_layers
        self.src_embed = nn.Embedding(source_vocab, embedding_size, padding_idx=PAD)
        self.encoder = RNN(mode, embedding_size, hidden_size, num_layers, dropout=dropout, bidirectional=bidirectional,
                           backend=backend, **(encoder_options or {}))  # fmt: skip
        self.tgt_embed = nn.Embedding(target_vocab, embedding_size, padding_idx=PAD)
        self.bridge = nn.Linear(D, D)
        # registered where the stack of cells was, so the parameters keep their order (an optimiser's state)
        self.decoder = RNN(mode, embedding_size + (D if input_feeding else 0), D, decoder_layers, dropout=dropout,
                           backend=backend)  # fmt: skip
        self.attention = Attention(attention, D, D)
        self.combine = nn.Linear(2 * D, D, bias=False)
        self.drop = nn.Dropout(dropout)
        self.tie = tie_embeddings
        if tie_embeddings:
            self.project = nn.Linear(D, embedding_size, bias=False)
            self.out_bias = nn.Parameter(torch.zeros(target_vocab))
        else:
            self.out = nn.Linear(D, target_vocab)
        self.register_load_state_dict_pre_hook(_cells_to_decoder)

    # --- encoder and one decoder step -----------------------------------------------------------------------------

    def encode(self, source: Tensor, lengths: Tensor) -> tuple[Memory, Any]:
        """source (B, S) ids, lengths (B,) -> the memory and the decoder's first state (hidden, feed)."""
        memory, state = self.encoder(self.drop(self.src_embed(source)), lengths=lengths)  # (B, S, D)
        h = state.h if isinstance(state, tuple) else state  # (L*K, B, H)
        s0 = torch.tanh(self.bridge(torch.cat(list(h[-self.K :]), dim=-1)))  # (B, D)
        h0 = s0.unsqueeze(0).expand(self.decoder_layers, -1, -1).contiguous()  # (Ld, B, D)
        hidden = LSTMState(h0, torch.zeros_like(h0)) if self.spec.has_cell else h0
        mask = lengths_to_mask(lengths.to(memory.device), memory.size(1))  # (B, S)
        return Memory(memory, self.attention.keys(memory), mask), (hidden, torch.zeros_like(s0))

    def step(self, previous: Tensor, state, memory: Memory) -> tuple[Tensor, Any, Tensor]:
        """previous (B,) token ids -> logits (B, V), the next state, attention weights (B, S): one call per token
        does the decoder RNN's step, the attention and the output layer for the whole batch (beams included)."""
        hidden, feed = state
        x = self.tgt_embed(previous)  # (B, E)
        if self.input_feeding:
            x = torch.cat([x, feed], dim=-1)  # (B, E + D)
        y, hidden = self._decoder_step(self.drop(x), hidden)  # (B, D)
        h_tilde, a = self.attend(y, memory)  # (B, D), (B, S)
        return self.logits(self.drop(h_tilde)), (hidden, h_tilde), a

    def _decoder_step(self, x: Tensor, hidden):
        """One step of every decoder layer: the fast single step (``RNN.step``) without autograd, else the cell's
        equations layer by layer with dropout between them (autograd's graph per step)."""
        rnn = self.decoder
        if not isinstance(rnn, RNN):  # export: the torch.nn twin (rnnkit.export.to_torch_modules)
            out, hidden = rnn(x.unsqueeze(1), hidden)
            return out.squeeze(1), hidden
        if can_fast(rnn, x, hidden):
            return rnn.step(x, hidden)
        has_cell = self.spec.has_cell
        layers = []
        for k in range(rnn.num_layers):
            s = LSTMState(hidden.h[k], hidden.c[k]) if has_cell else hidden[k]
            x, s = self.spec.step(self.drop(x) if k else x, s, rnn.layer_params(k), **rnn.options)  # (B, D)
            layers.append(s)
        if has_cell:
            return x, LSTMState(torch.stack([s.h for s in layers]), torch.stack([s.c for s in layers]))
        return x, torch.stack(layers)

    def attend(self, y: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """Decoder outputs y (B, T, D) or (B, D) -> h~ = tanh(W_c [c ; y]) of the same shape, and the weights."""
        a, c = self.attention(y, memory.keys, memory.memory, memory.mask)  # (B, [T,] S), (B, [T,] D)
        return torch.tanh(self.combine(torch.cat([c.to(y.dtype), y], dim=-1))), a

    def logits(self, h: Tensor) -> Tensor:
        if self.tie:
            return F.linear(self.project(h), self.tgt_embed.weight, self.out_bias)
        return self.out(h)

    def forward(self, source: Tensor, lengths: Tensor, target_in: Tensor) -> Tensor:
        """Teacher forcing: target_in (B, T) starts with <s> -> logits (B, T, V) for the next tokens. Without input
        feeding, the whole target at once; with it, one step at a time (``forward_steps``)."""
        if self.input_feeding:
            return self.forward_steps(source, lengths, target_in)
        memory, (hidden, _) = self.encode(source, lengths)
        x = self.drop(self.tgt_embed(target_in))  # (B, T, E)
        y, _ = self.decoder(x, hidden)  # (B, T, D): rnnkit.RNN's engine over the whole target
        h_tilde, _ = self.attend(y, memory)  # (B, T, D)
        return self.logits(self.drop(h_tilde))  # (B, T, V)

    def forward_steps(self, source: Tensor, lengths: Tensor, target_in: Tensor) -> Tensor:
        """Teacher forcing through ``step``, one token at a time (what decoding runs): logits (B, T, V)."""
        memory, state = self.encode(source, lengths)
        out = []
        for t in range(target_in.size(1)):
            logits, state, _ = self.step(target_in[:, t], state, memory)
            out.append(logits)
        return torch.stack(out, dim=1)


def _cells_to_decoder(module: Seq2Seq, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the decoder was an ``rnnkit.RNN`` name its layers ``cells.{k}.{kind}``: read
    them as ``decoder.{kind}_l{k}`` (the same tensors, in the same order)."""
    old = f"{prefix}cells."
    for key in [k for k in state_dict if k.startswith(old)]:
        layer, _, kind = key[len(old) :].partition(".")
        state_dict[f"{prefix}decoder.{kind}_l{layer}"] = state_dict.pop(key)


class EncoderGraph(nn.Module):
    """Export graph: source (B, S), lengths (B,) -> memory, keys (B, S, D), mask (B, S), h0 [c0] (Ld, B, D), feed0."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        memory, (hidden, feed) = self.model.encode(source, lengths)
        return (memory.memory, memory.keys, memory.mask, *_parts(hidden), feed)


class DecoderGraph(nn.Module):
    """Export graph, one decoder step: previous (B,), h0 [c0] (Ld, B, D), feed0 (B, D), memory, keys, mask
    -> logits (B, V), hn [cn], feed (B, D), attention (B, S)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, previous: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        n = 2 if self.model.spec.has_cell else 1
        parts, (feed, memory, keys, mask) = rest[:n], rest[n:]
        hidden = LSTMState(*parts) if n == 2 else parts[0]
        logits, (hidden, feed), a = self.model.step(previous, (hidden, feed), Memory(memory, keys, mask))
        return (logits, *_parts(hidden), feed, a)


def _parts(hidden) -> tuple[Tensor, ...]:
    """The decoder's hidden state as (Ld, B, D) tensors: (h, c) for LSTM cells, (h,) else."""
    return (hidden.h, hidden.c) if isinstance(hidden, tuple) else (hidden,)


def reorder(state, index: Tensor):
    """The decoder state of the rows ``index`` (beam search's bookkeeping)."""
    hidden, feed = state
    pick = LSTMState(hidden.h[:, index], hidden.c[:, index]) if isinstance(hidden, tuple) else hidden[:, index]
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
    B, device = source.size(0), source.device
    previous = torch.full((B,), BOS, dtype=torch.long, device=device)
    tokens = torch.full((B, max(max_length, 1)), PAD, dtype=torch.long, device=device)
    scores = torch.zeros(B, dtype=torch.float64, device=device)  # summed as Python floats were: in float64
    length = torch.zeros(B, dtype=torch.long, device=device)
    live = torch.ones(B, dtype=torch.bool, device=device)
    for t in range(max_length):
        logits, state, _ = model.step(previous, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        best = logp.argmax(-1)  # (B,)
        tokens[:, t] = torch.where(live, best, PAD)
        scores += torch.where(live, logp.gather(1, best[:, None])[:, 0].double(), 0.0)
        length += live
        live &= best != EOS
        if not bool(live.any()):
            break
        previous = best
    rows = zip(tokens.tolist(), length.tolist(), scores.tolist(), strict=True)
    return [Hypothesis(t[:n], s, s / max(n, 1)) for t, n, s in rows]


@torch.no_grad()
def alignment(model: Seq2Seq, source: Tensor, max_length: int) -> tuple[list[int], Tensor]:
    """Greedy output of one source (S,) and its attention weights (T, S): row t is where step t looked."""
    memory, state = model.encode(source.unsqueeze(0), torch.tensor([source.numel()]))
    previous, tokens, rows = torch.tensor([BOS], device=source.device), [], []
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

    The beams live in tensors (B, beam, ...), as in OpenNMT-py's ``BeamSearch``: a step is one ``model.step`` on
    all B * beam hypotheses and a few batched selections, with no Python loop over rows or hypotheses. Every
    hypothesis of step t has t + 1 tokens, so the finished ones of a step share one length.
    """
    if beam < 1 or n_best < 1 or n_best > beam:
        raise ValueError(f"need 1 <= n_best <= beam, got beam={beam}, n_best={n_best}")
    B, device = source.size(0), source.device
    memory, state = model.encode(source, lengths)
    memory = memory.repeat(beam)
    state = reorder(state, torch.arange(B, device=device).repeat_interleave(beam))
    inf = float("-inf")
    scores = torch.full((B, beam), inf, device=device)
    scores[:, 0] = 0.0  # one live hypothesis to start with
    previous = torch.full((B * beam,), BOS, dtype=torch.long, device=device)
    history = torch.zeros(B, beam, 0, dtype=torch.long, device=device)  # (B, beam, t) tokens so far
    done = torch.zeros(B, dtype=torch.bool, device=device)
    kth = torch.full((B, beam), inf, dtype=torch.float64, device=device)  # best ``beam`` finished, normalised
    ended: list[tuple[Tensor, Tensor, Tensor]] = []  # per batch of endings: tokens (B, n, t+1), score, normalised
    for t in range(max_length):
        logits, state, _ = model.step(previous, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*beam, V)
        V = logp.size(-1)
        total = (scores.unsqueeze(-1) + logp.view(B, beam, V)).view(B, -1)  # (B, beam*V)
        top, idx = total.topk(min(2 * beam, total.size(1)), dim=-1)  # (B, C): enough to refill the beam past </s>
        origin, token = idx // V, idx % V  # (B, C)
        seqs = torch.cat([history.gather(1, origin.unsqueeze(-1).expand(-1, -1, t)), token.unsqueeze(-1)], -1)
        valid = (top > inf) & ~done.unsqueeze(1)  # (B, C)
        eos = token == EOS
        norm = top.double() / (t + 1) ** alpha  # (B, C), in float64 as Python's floats were
        finish = valid & eos & (torch.arange(top.size(1), device=device) < beam)  # (B, C): ranks < beam end
        live = valid & ~eos
        keep = live & (live.cumsum(1) <= beam)  # the first ``beam`` live candidates, in rank order
        ended.append((seqs[:, :beam], top[:, :beam], torch.where(finish[:, :beam], norm[:, :beam], inf)))
        kth = torch.cat([kth, ended[-1][2]], dim=1).topk(beam, dim=1).values  # (B, beam)
        slot = (~keep).to(torch.uint8).argsort(dim=1, stable=True)[:, :beam]  # (B, beam): kept ones first
        filled = keep.gather(1, slot)
        new_scores = torch.where(filled, top.gather(1, slot), inf)  # (B, beam)
        new_origin = torch.where(filled, origin.gather(1, slot), 0)
        new_token = torch.where(filled, token.gather(1, slot), PAD)
        history = seqs.gather(1, slot.unsqueeze(-1).expand(-1, -1, t + 1))  # (B, beam, t+1)
        # a row is done once no live hypothesis ranks above its beam-th finished one (or none is left)
        best_live = new_scores.max(1).values.double() / (t + 1) ** alpha  # (B,)
        done |= ~filled[:, 0] | ((kth[:, -1] > inf) & (best_live <= kth[:, -1]))
        if bool(done.all()):
            break
        if t == max_length - 1:  # the live beams of the rows still searching, as they are
            open_ = filled & ~done.unsqueeze(1)
            ended.append((history, new_scores, torch.where(open_, new_scores.double() / (t + 1) ** alpha, inf)))
            break
        rows = (torch.arange(B, device=device).unsqueeze(1) * beam + new_origin).view(-1)
        state = reorder(state, rows)
        scores = new_scores.masked_fill(done.unsqueeze(1), inf)
        previous = new_token.view(-1)
    return _best(ended, B, n_best)


def _best(ended: list[tuple[Tensor, Tensor, Tensor]], B: int, n_best: int) -> list[list[Hypothesis]]:
    """The ``n_best`` finished hypotheses of each row by normalised score, ties in the order they ended."""
    if not ended:
        return [[] for _ in range(B)]
    width = max(seqs.size(-1) for seqs, _, _ in ended)
    tokens = torch.cat([F.pad(seqs, (0, width - seqs.size(-1)), value=PAD) for seqs, _, _ in ended], 1)  # (B, N, W)
    lengths = torch.cat([torch.full(s.shape, seqs.size(-1)) for seqs, s, _ in ended], 1)  # (B, N)
    scores = torch.cat([s for _, s, _ in ended], 1)  # (B, N)
    norm = torch.cat([n for _, _, n in ended], 1)  # (B, N), -inf where no hypothesis ended
    order = norm.argsort(dim=1, descending=True, stable=True)[:, :n_best]  # (B, n_best)
    picked = [x.cpu().gather(1, order.cpu()).tolist() for x in (lengths, scores, norm)]
    rows = tokens.cpu().gather(1, order.cpu().unsqueeze(-1).expand(-1, -1, width)).tolist()
    return [[Hypothesis(seq[:n], s, z) for seq, n, s, z in zip(*row, strict=True) if z > float("-inf")]
            for row in zip(rows, *picked, strict=True)]  # fmt: skip

"""The greedy and beam search of rnnkit before its beams became tensors: per-row, per-hypothesis Python loops over
``model.step``, kept as the oracle the batched search in ``rnnkit.seq2seq`` must reproduce (tests/test_seq2seq.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.seq2seq import BOS, EOS, PAD, Hypothesis, Seq2Seq, reorder


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

"""Sequence to sequence: the training step stepping the decoder one token at a time against the parallel decoder.

``python benchmarks/seq2seq_speed.py [--shapes g2p,sentence] [--repeats 7] [--threads 2] [--precision fp32,bf16]``

Each shape is a batch of random token pairs of a realistic size: ``g2p`` (64 words of 4-12 letters to 3-11 phones,
vocabularies 30 and 42, as CMUdict) and ``sentence`` (64 sentences of 100-200 characters each side, vocabularies
of 80). The model is ``rnnkit train seq2seq``'s at its defaults (a bidirectional LSTM encoder of 128, a decoder
LSTM of 256, general attention, dropout 0.2, label smoothing 0.1, Adam); a training step is forward, loss, backward
and the optimiser's step. Three decoders are timed, interleaved in one process (one step of each in turn,
``--repeats`` rounds after a warm-up step each), and the medians reported with target tokens/s:

    before            input feeding, one token at a time, the encoder on torch.nn's kernels: the model and the
                      engine before the parallel decoder (``auto`` then ran a padded LSTM batch on torch.nn)
    steps, feeding    input feeding, one token at a time (``--input-feeding true``)
    steps             no input feeding, still one token at a time (``Seq2Seq.forward_steps``)
    parallel          no input feeding, the decoder RNN over the whole target, attention as batched products

``ratio`` is each row's tokens/s over the first row's. Under ``--precision bf16`` the steps run under bf16
autocast (on a CPU without avx512_bf16 or AMX it is emulated and slow; its rows say so). A greedy and a beam-5
decoding of the batch are timed the same way (target tokens written per second).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from min_scan import interleaved_medians  # benchmarks/ is the script's folder, on sys.path
from rnnkit.data.labelled import LengthBuckets
from rnnkit.precision import bf16_supported
from rnnkit.seq2seq import BOS, EOS, PAD, Seq2Seq, beam_search, greedy
from rnnkit.sequence import pad_sequences
from rnnkit.tasks.seq2seq import Seq2SeqModelConfig, Seq2SeqTrainConfig

# name -> (batch, source lengths, target lengths, source vocabulary, target vocabulary)
SHAPES = {"g2p": (64, (4, 12), (3, 11), 30, 42), "sentence": (64, (100, 200), (100, 200), 80, 80)}
VARIANTS = ("before", "steps, feeding", "steps", "parallel")


def batch(name: str, seed: int = 0, size: int = 0):
    """Random pairs of ``SHAPES[name]`` as training meets them: source (B, S), lengths (B,), target <s> ... </s>
    (B, T + 2). The task batches pairs of similar source lengths (``LengthBuckets``: pools of 50 batches sorted by
    length), so this is the middle batch of such a pool."""
    B, (s_lo, s_hi), (t_lo, t_hi), vs, vt = SHAPES[name]
    B = size or B
    g = torch.Generator().manual_seed(seed)
    pool = LengthBuckets.POOL * B
    n = torch.randint(s_lo, s_hi + 1, (pool,), generator=g).sort().values[pool // 2 - B // 2 :][:B].tolist()
    noise = [int(torch.randint(-1 - k // 10, 2 + k // 10, (1,), generator=g)) for k in n]  # targets near sources
    m = [min(max(k + e, t_lo), t_hi) for k, e in zip(n, noise, strict=True)]
    src = [torch.randint(4, vs, (k,), generator=g) for k in n]
    tgt = [torch.cat([torch.tensor([BOS]), torch.randint(4, vt, (k,), generator=g), torch.tensor([EOS])]) for k in m]
    x, lengths = pad_sequences(src)
    return x, lengths, pad_sequences(tgt)[0]


def model(name: str, variant: str) -> Seq2Seq:
    """``rnnkit train seq2seq``'s model at its defaults, with or without input feeding."""
    m = Seq2SeqModelConfig()
    _, _, _, vs, vt = SHAPES[name]
    torch.manual_seed(0)
    return Seq2Seq(vs, vt, mode=m.mode, embedding_size=m.embedding_size, hidden_size=m.hidden_size,
                   num_layers=m.num_layers, bidirectional=m.bidirectional, decoder_layers=m.decoder_layers,
                   attention=m.attention, input_feeding=variant in ("before", "steps, feeding"), dropout=m.dropout,
                   backend="native" if variant == "before" else m.backend)  # fmt: skip


def train_step(net: Seq2Seq, variant: str, data, precision: torch.dtype) -> Callable[[], None]:
    """One training step as the task takes it (forward, label-smoothed loss, backward, Adam)."""
    x, lengths, y = data
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    forward = net.forward_steps if variant != "parallel" else net.forward
    smoothing = Seq2SeqTrainConfig().label_smoothing
    cast = torch.autocast("cpu", dtype=precision) if precision != torch.float32 else contextlib.nullcontext()

    def step() -> None:
        with cast:
            logits = forward(x, lengths, y[:, :-1]).float()  # (B, T, V)
            loss = F.cross_entropy(logits.transpose(1, 2), y[:, 1:], ignore_index=PAD, label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="g2p,sentence", help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median reported; default 7)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16 (default fp32)")
    p.add_argument("--no-decode", action="store_true", help="time the training step only")
    p.add_argument("--batch", type=int, default=0, help="pairs per batch instead of the shape's 64 (quick checks)")
    args = p.parse_args(argv)
    shapes = args.shapes.split(",")
    for s in shapes:
        if s not in SHAPES:
            p.error(f"--shapes: unknown shape {s!r}; expected some of {', '.join(SHAPES)}")
    precisions = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for name in args.precision.split(","):
        if name not in precisions:
            p.error(f"--precision: expected fp32 or bf16, got {name!r}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, medians of {args.repeats} interleaved steps; "
          f"bf16 in hardware: {bf16_supported('cpu')}")  # fmt: skip
    print(f"{'shape':9} {'precision':9} {'decoder':15} {'ms/step':>9} {'tokens/s':>10} {'ratio':>7}")
    for shape in shapes:
        data = batch(shape, size=args.batch)
        tokens = int((data[2][:, 1:] != PAD).sum())
        for prec in args.precision.split(","):
            fns = {v: train_step(model(shape, v), v, data, precisions[prec]) for v in VARIANTS}
            t = interleaved_medians(fns, args.repeats)
            for v in VARIANTS:
                print(f"{shape:9} {prec:9} {v:15} {t[v] * 1e3:9.1f} {tokens / t[v]:10.0f} "
                      f"{t[VARIANTS[0]] / t[v]:6.2f}x", flush=True)  # fmt: skip
        if args.no_decode:
            continue
        x, lengths, y = data
        limit = y.size(1) - 1
        nets = {v: model(shape, v).eval() for v in ("before", "parallel")}
        fns = {}
        for v, net in nets.items():
            fns[f"greedy, {v}"] = partial(greedy, net, x, lengths, limit)
            fns[f"beam 5, {v}"] = partial(beam_search, net, x, lengths, 5, limit)
        t = interleaved_medians(fns, max(3, args.repeats // 2))
        for name, seconds in t.items():
            print(f"{shape:9} {'fp32':9} {name:22} {seconds * 1e3:9.1f} ms/batch (up to {limit} tokens a row)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

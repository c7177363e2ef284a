"""Greedy text from a character LM exported to ONNX, with onnxruntime and NumPy alone: no torch, no rnnkit.

    rnnkit export --run RUN --format onnx --out lm.onnx
    python examples/onnx_sample.py lm.onnx RUN/vocab.json --prompt "def " --length 200

prints the text ``rnnkit sample --run RUN --prompt "def " --length 200 --temperature 0`` prints (the test suite
checks that they agree). The exported graph is ``tokens (B, T), h0 [c0] -> logits (B, T, V), hn [cn]``: the
prompt goes in once, then each chosen character with the state the previous call returned, as rnnkit's sampler
does. An empty prompt starts after a newline (the vocabulary's first character if it has none), and the unknown
symbol U+FFFD is never chosen, both as in ``rnnkit sample``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort

UNKNOWN = "\ufffd"


def greedy(session: ort.InferenceSession, chars: list[str], prompt: str, length: int) -> str:
    """``length`` characters after ``prompt``, each the most likely next one."""
    index = {c: i for i, c in enumerate(chars)}
    context = prompt or ("\n" if "\n" in index else chars[0])
    missing = sorted({c for c in context if c not in index})
    if missing:
        raise SystemExit(f"onnx_sample: error: prompt characters not in the vocabulary: {''.join(missing)!r}")
    # the state inputs (h0, and c0 for an LSTM) are (L, batch, H): zeros for one row
    state = {i.name: np.zeros((i.shape[0], 1, i.shape[2]), np.float32) for i in session.get_inputs()[1:]}
    tokens = np.array([[index[c] for c in context]], np.int64)  # (1, T)
    banned = index.get(UNKNOWN)
    out = []
    for _ in range(length):
        logits, *new_state = session.run(None, {"tokens": tokens, **state})  # logits (1, T, V)
        state = dict(zip(state, new_state, strict=True))  # outputs hn [cn] in the order of h0 [c0]
        last = logits[0, -1]  # (V,)
        if banned is not None:
            last[banned] = -np.inf
        token = int(last.argmax())
        out.append(chars[token])
        tokens = np.array([[token]], np.int64)  # (1, 1)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the .onnx file rnnkit export wrote")
    p.add_argument("vocab", help="the run's vocab.json")
    p.add_argument("--prompt", default="", help="text to continue (default: empty)")
    p.add_argument("--length", type=int, default=200, help="characters to generate (default: 200)")
    args = p.parse_args(argv)
    with open(args.vocab, encoding="utf-8") as f:
        chars = json.load(f)["chars"]
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    sys.stdout.write(greedy(session, chars, args.prompt, args.length) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

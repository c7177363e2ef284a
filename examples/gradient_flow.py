"""The vanishing-gradient picture: ||dL/dh_t|| of a last-step loss for Elman, LSTM and GRU on one sequence.

    .venv/bin/python examples/gradient_flow.py --seq-len 100 --hidden-size 64 --seeds 0 1 2 --out gradient_flow.png

Prints each mode's vanishing factor ||dL/dh_0|| / ||dL/dh_{T-1}|| per seed and writes the first seed's curves
as a PNG.
"""

from __future__ import annotations

import argparse
import logging

from rnnkit.diagnostics import compare_gradient_flow, plot_gradient_flow, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=100, help="time steps T")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden units H")
    parser.add_argument("--input-size", type=int, default=16, help="input features D")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences B")
    parser.add_argument("--forget-bias", type=float, default=1.0, help="LSTM forget-gate bias")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one model and input per seed")
    parser.add_argument("--out", default="gradient_flow.png", help="PNG path (curves of the first seed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    first = None
    print(f"vanishing factor ||dL/dh_0|| / ||dL/dh_T-1||, T={args.seq_len}, H={args.hidden_size}")
    for seed in args.seeds:
        curves = compare_gradient_flow(
            input_size=args.input_size,
            hidden_size=args.hidden_size,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            seed=seed,
            forget_bias=args.forget_bias,
        )
        first = first or curves
        print(f"seed {seed}: " + "  ".join(f"{mode} {ratio:.2e}" for mode, ratio in summary(curves).items()))
    path = plot_gradient_flow(first, args.out, title=f"Gradient flow, T={args.seq_len}, H={args.hidden_size}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

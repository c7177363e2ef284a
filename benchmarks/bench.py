"""Side-by-side timings of rnnkit's backends and torch.nn: ``python benchmarks/bench.py [--quick] ...``.

The same table as ``rnnkit bench``; the logic lives in ``rnnkit.bench``.
"""

from __future__ import annotations

import argparse
import sys

from rnnkit.bench import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), print)


if __name__ == "__main__":
    sys.exit(main())

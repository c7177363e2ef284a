"""``rnnkit.Seq2Seq``: ``rnnkit train seq2seq`` (an attention encoder-decoder) over pairs of strings in memory.

    s2s = rnnkit.Seq2Seq(max_steps=300).fit(sources, targets)    # lists of strings
    s2s.predict(sources, beam=5)                                 # a list of strings

``fit`` writes the pairs into the run folder as the task's ``source<TAB>target`` lines (``RUN/data/train.tsv``, and
``val.tsv`` for ``validation_data``) and trains on them; strings are cut into characters or, with
``source_tokens="space"`` / ``target_tokens="space"``, whitespace-separated symbols (the task's keywords).
"""

from __future__ import annotations

from pathlib import Path

from rnnkit.data.pairs import Pairs, split_tokens
from rnnkit.estimators.base import Estimator
from rnnkit.io import atomic_write
from rnnkit.tasks.seq2seq import EncodedPairs, Seq2SeqTask

__all__ = ["Seq2Seq"]


def _strings(values, name: str) -> list[str]:
    if isinstance(values, str) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
    out = list(values)
    if not out:
        raise ValueError(f"{name} is empty")
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(s).__name__}")
        if not s.strip():
            raise ValueError(f"{name}[{i}] is empty")
        if "\t" in s or s.splitlines() != [s]:
            raise ValueError(f"{name}[{i}] holds a tab or a line break, which the pair files cannot hold: {s!r}")
    return out


def _write_pairs(sources: list[str], targets: list[str], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(f"{s}\t{t}\n" for s, t in zip(sources, targets, strict=True)).encode("utf-8"))
    return str(path.resolve())


def _pairs(sources: list[str], targets: list[str], name: str) -> tuple[list[str], list[str]]:
    sources, targets = _strings(sources, name), _strings(targets, name.replace("sources", "targets"))
    if len(sources) != len(targets):
        raise ValueError(f"{name} and its targets must have the same length, got {len(sources)} and {len(targets)}")
    return sources, targets


class Seq2Seq(Estimator):
    """A sequence-to-sequence model (``rnnkit train seq2seq``): fit on (source, target) string pairs, then write the
    target of new sources with greedy or beam search. The keywords are every flag of ``rnnkit train seq2seq``
    (``help(rnnkit.Seq2Seq.__init__)`` lists them)."""

    Task = Seq2SeqTask

    def fit(self, sources, targets, *, validation_data=None, callbacks=None, out=None, resume: bool = False):
        """Train on ``sources[i] -> targets[i]``; ``validation_data``: (sources, targets) to validate on (else a
        ``val_fraction`` of the distinct sources is held out). Returns the estimator."""
        sources, targets = _pairs(sources, targets, "sources")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (sources, targets)")
            val = _pairs(*validation_data, "validation sources")

        def write(folder: Path) -> dict[str, str | None]:
            return {"data": _write_pairs(sources, targets, folder / "train.tsv"),
                    "val": _write_pairs(*val, folder / "val.tsv") if val is not None else None}  # fmt: skip

        return self._fit_run(write, out=out, resume=resume, callbacks=callbacks)

    def _encode(self, sources) -> EncodedPairs:
        d = self.task_.config.data
        texts = _strings(sources, "sources")
        tokens = [split_tokens(s, d.source_tokens) for s in texts]
        pairs = Pairs(tokens, [[] for _ in texts], list(range(1, len(texts) + 1)), "sources", 0, texts)
        return EncodedPairs(self.task_, pairs)

    def predict(self, sources, *, beam: int = 1, n_best: int = 1) -> list:
        """The target written for each source (greedy, or beam search of width ``beam``): a list of strings, or
        with ``n_best`` > 1 a list of the ``n_best`` best strings of each source, best first."""
        self._check_fitted()
        if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= 64:
            raise ValueError(f"beam must be an integer in [1, 64], got {beam!r}")
        if isinstance(n_best, bool) or not isinstance(n_best, int) or not 1 <= n_best <= beam:
            raise ValueError(f"n_best must be an integer in [1, beam={beam}], got {n_best!r}")
        outputs = self.task_.decode(self.model_, self._encode(sources), beam=beam, n_best=n_best)
        join = "" if self.task_.config.data.target_tokens == "chars" else " "
        texts = [[join.join(o) for o in out] for out in outputs]
        return [t[0] for t in texts] if n_best == 1 else texts

    def score(self, sources, targets, *, beam: int = 1) -> float:
        """Exact match: the share of sources whose output is their target (1 - the task's wer)."""
        sources, targets = _pairs(sources, targets, "sources")
        predicted = self.predict(sources, beam=beam)
        return sum(p == t for p, t in zip(predicted, targets, strict=True)) / len(targets)

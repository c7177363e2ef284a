"""``rnnkit.LanguageModel``: ``rnnkit train lm`` (a character language model) on a text in memory.

    lm = rnnkit.LanguageModel(max_steps=300).fit(text)
    lm.sample("def ", length=200)     # the characters that follow the prompt
    lm.score(text)                    # bits per character

``fit`` writes the text into the run folder (``RUN/data/train.txt``) and trains on it; the task validates on its
last ``val_fraction``. With ``validation_data`` (a text), the file is the text followed by the validation text,
and ``val_fraction`` is set so that exactly the validation text is held out (at most half the file).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rnnkit.estimators.base import Estimator
from rnnkit.io import atomic_write
from rnnkit.metrics import evaluate_text
from rnnkit.sampling import generate
from rnnkit.tasks.language_model import LMTask

__all__ = ["LanguageModel"]


def _text(text, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError(f"{name} is empty")
    return text


class LanguageModel(Estimator):
    """A character language model (``rnnkit train lm``): fit on a text, then sample and score. The keywords are
    every flag of ``rnnkit train lm`` (``help(rnnkit.LanguageModel.__init__)`` lists them)."""

    Task = LMTask

    def fit(self, text, *, validation_data=None, callbacks=None, out=None, resume: bool = False):
        """Train on ``text``; ``validation_data``: a text to validate on (else the last ``val_fraction`` of
        ``text``). Returns the estimator."""
        text = _text(text, "text")
        val = None if validation_data is None else _text(validation_data, "validation_data")
        if val is not None and len(val) > len(text):
            raise ValueError(f"validation_data must not be longer than text, got {len(val)} > {len(text)} characters")
        full = text + (val or "")

        def write(folder: Path) -> dict[str, str | None]:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / "train.txt", full.encode("utf-8"))
            return {"data": str((folder / "train.txt").resolve())}

        saved = self.val_fraction, self.max_chars
        if val is not None:  # the task's split keeps int(len * fraction) characters: the val text exactly
            self.val_fraction, self.max_chars = (len(val) + 0.5) / len(full), 0
        try:
            return self._fit_run(write, out=out, resume=resume, callbacks=callbacks)
        finally:
            self.val_fraction, self.max_chars = saved

    def sample(self, prompt: str = "", length: int = 200, *, temperature: float = 0.8, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0) -> str:  # fmt: skip
        """``length`` characters continuing ``prompt`` (the prompt not included), drawn at ``temperature`` (0:
        greedy), with optional top-k / nucleus (top-p) filtering; the same ``seed`` gives the same text."""
        self._check_fitted()
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be an integer >= 0, got {length!r}")
        self.task_.vocab.encode(prompt)  # a character outside the vocabulary fails here, naming it
        chars = generate(self.model_, self.task_.vocab, prompt, length, temperature=temperature, top_k=top_k,
                         top_p=top_p, generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return "".join(chars)

    def score(self, text) -> float:
        """Bits per character of ``text`` under the model (lower is better; characters the vocabulary lacks are
        scored as its unknown symbol)."""
        self._check_fitted()
        text = _text(text, "text")
        if len(text) < 2:
            raise ValueError("text must hold at least 2 characters (the first is context only)")
        m = evaluate_text(self.model_, self.task_.vocab, text, batch_size=1, bptt=self.task_.config.train.bptt)
        return float(m["bpc"])

"""Task models: a network plus its loss and metrics."""

from rnnkit.tasks.language_model import CharLM, lm_loss

__all__ = ["CharLM", "lm_loss"]

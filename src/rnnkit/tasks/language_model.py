"""Character-level language model: Embedding -> rnnkit.RNN -> dropout -> Linear head.

    tokens (B, T) --embedding--> (B, T, E) --RNN--> (B, T, H) --dropout--> --head--> logits (B, T, V)

The recurrent state is passed in and returned (``None`` means zeros), so a trainer can carry it across
truncated-BPTT chunks and a sampler can prime it on a prompt and then ``step`` one character at a time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import ModelConfig
from rnnkit.errors import ConfigError
from rnnkit.init import init_forget_bias_, init_orthogonal_
from rnnkit.recurrent import RNN

__all__ = ["CharLM", "lm_loss"]

LN2 = math.log(2.0)


class CharLM(nn.Module):
    """A next-character model over a vocabulary of ``vocab_size`` symbols, configured by ``ModelConfig``."""

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        if config.tie_weights and config.embedding_size != config.hidden_size:  # ModelConfig checks it too
            raise ConfigError(
                "tie_weights needs embedding_size == hidden_size, "
                f"got embedding_size={config.embedding_size}, hidden_size={config.hidden_size}"
            )
        self.vocab_size = vocab_size
        self.config = config
        E, H, V = config.embedding_size, config.hidden_size, vocab_size
        self.embedding = nn.Embedding(V, E)
        self.rnn = RNN(
            config.mode,
            E,
            H,
            config.num_layers,
            batch_first=True,
            dropout=config.dropout,
            backend=config.backend,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(H, V)
        if config.tie_weights:
            # Weight tying (Press & Wolf 2016, "Using the Output Embedding to Improve Language Models"):
            # the head's (V, H) weight is the embedding's (V, E) table, E == H.
            self.head.weight = self.embedding.weight
        if config.init == "orthogonal":
            init_orthogonal_(self.rnn)
            if config.mode == "lstm":
                init_forget_bias_(self.rnn, 1.0)  # Jozefowicz et al. 2015

    def forward(self, tokens: Tensor, state=None) -> tuple[Tensor, object]:
        """tokens (B, T) long -> logits (B, T, V), new state."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a (B, T) int64 Tensor, got {got}")
        x = self.embedding(tokens)  # (B, T, E)
        y, state = self.rnn(x, state)  # (B, T, H)
        logits = self.head(self.drop(y))  # (B, T, V)
        return logits, state

    def step(self, token: Tensor, state=None) -> tuple[Tensor, object]:
        """One character for generation: token (B,) long -> logits (B, V), new state (via ``RNN.step``)."""
        if not isinstance(token, Tensor) or token.dim() != 1 or token.dtype != torch.long:
            got = f"{tuple(token.shape)} {token.dtype}" if isinstance(token, Tensor) else type(token).__name__
            raise ValueError(f"token must be a (B,) int64 Tensor, got {got}")
        x_t = self.embedding(token)  # (B, E)
        y_t, state = self.rnn.step(x_t, state)  # (B, H)
        logits = self.head(self.drop(y_t))  # (B, V)
        return logits, state

    def initial_state(self, batch_size: int, device=None):
        """The zero state for ``batch_size`` rows (what ``state=None`` means)."""
        return self.rnn.initial_state(batch_size, device=device)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-character cross-entropy in nats: logits (B, T, V), targets (B, T) -> scalar."""
    V = logits.size(-1)
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))  # (B*T, V) vs (B*T,)

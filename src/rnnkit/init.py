"""Initialisation beyond torch.nn's default, for rnnkit and torch.nn recurrent modules alike.

Both functions find the recurrent weights by their torch.nn names (``weight_hh``, ``weight_hh_l{k}[_reverse]``,
``bias_ih``/``bias_hh``...), so they apply to ``rnnkit.RNN``, the rnnkit cells and ``torch.nn.LSTM``/``GRU``/``RNN``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["INITS", "init_forget_bias_", "init_orthogonal_", "initialise_"]


def _gate_blocks(module: nn.Module, prefix: str):
    for name, p in module.named_parameters():
        if name.rsplit(".", 1)[-1].startswith(prefix):
            yield name, p


def _hidden_size(module: nn.Module, name: str, p: torch.Tensor) -> int:
    # weight_hh is (G*H, H): its second dimension is H; biases are (G*H,) and share H with their weight_hh.
    return (
        p.shape[1]
        if p.dim() == 2
        else module.get_parameter(name.replace("bias_ih", "weight_hh").replace("bias_hh", "weight_hh")).shape[1]
    )


@torch.no_grad()
def init_orthogonal_(module: nn.Module, gain: float = 1.0, generator: torch.Generator | None = None) -> nn.Module:
    """Make each gate's block of every recurrent weight ``W_hh`` (H, H) a random orthogonal matrix.

    Orthogonal recurrent weights keep the norm of a back-propagated gradient through the linear part of each
    step (Saxe et al. 2014; Le et al. 2015 for Elman networks). Returns ``module``.
    """
    found = False
    for _, w in _gate_blocks(module, "weight_hh"):
        H = w.shape[1]
        for block in w.split(H, dim=0):  # one (H, H) block per gate
            a = torch.randn(H, H, generator=generator, dtype=torch.float64)
            q, r = torch.linalg.qr(a)
            q = q * torch.sign(torch.diagonal(r))  # uniform (Haar) distribution over orthogonal matrices
            block.copy_(gain * q)
        found = True
    if not found:
        raise ValueError(f"module must have recurrent weights named weight_hh*, got {type(module).__name__}")
    return module


@torch.no_grad()
def init_forget_bias_(module: nn.Module, value: float = 1.0) -> nn.Module:
    """Set the LSTM forget-gate bias to ``value`` (Jozefowicz et al. 2015: 1.0 helps LSTMs learn long spans).

    torch.nn adds ``bias_ih`` and ``bias_hh``, so the forget slice [H:2H] of ``bias_ih`` gets ``value`` and that
    of ``bias_hh`` gets 0. Returns ``module``.
    """
    biases = list(_gate_blocks(module, "bias_"))
    if not biases:
        raise ValueError(f"module must have LSTM biases named bias_ih*/bias_hh*, got {type(module).__name__}")
    for name, b in biases:  # check them all before writing any, so an error leaves the module as it was
        H = _hidden_size(module, name, b)
        if b.shape[0] != 4 * H:
            raise ValueError(f"init_forget_bias_ needs LSTM biases of size 4H={4 * H}, got {b.shape[0]} for {name}")
    for name, b in biases:
        H = _hidden_size(module, name, b)
        b[H : 2 * H] = value if name.rsplit(".", 1)[-1].startswith("bias_ih") else 0.0
    return module


INITS = ("torch", "orthogonal")


def initialise_(rnn: nn.Module, init: str) -> nn.Module:
    """A task's ``init`` choice on an ``rnnkit.RNN``: ``"torch"`` keeps the cell's default; ``"orthogonal"`` makes
    each gate block of W_hh orthogonal and, for cells with a memory cell (LSTM), sets the forget bias to 1
    (Jozefowicz et al. 2015). Returns ``rnn``."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "orthogonal":
        init_orthogonal_(rnn)
        if rnn.spec.has_cell and rnn.bias:
            init_forget_bias_(rnn, 1.0)
    return rnn

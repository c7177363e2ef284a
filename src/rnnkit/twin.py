"""The torch.nn twin of an ``rnnkit.RNN``: the ``torch.nn.RNN/LSTM/GRU`` with its configuration and weights, and
the wrappers that give it rnnkit's contract.

``rnnkit.RNN`` converts through here (``RNN.to_torch``, ``RNN.from_torch``, ``torch.jit.script(rnn)``), and
``rnnkit.export`` builds its exports on it; this module sits below both and imports neither. It reads the RNN's
``Plan`` (``rnnkit.layers``) and its ``state_dict``, whose names are torch.nn's.

- ``torch_twin(plan, state_dict)``: the ``torch.nn`` module itself;
- ``plan_kwargs(module)``: the ``RNN`` arguments of a ``torch.nn`` module (the way back);
- ``TorchRNN``/``TorchLSTM``: the twin in rnnkit's contract ``output, state = rnn(x, state, lengths)`` (padded
  batches packed for torch.nn, outputs zero past each length, the final state of each row at its own last step),
  scriptable and traceable;
- ``scriptable(rnn)``: an ``rnnkit.RNN`` as a ``TorchRNN``/``TorchLSTM``, or one ``ExportError`` line.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.errors import ExportError
from rnnkit.layers import Plan

__all__ = ["LSTMState", "TorchLSTM", "TorchRNN", "plan_kwargs", "scriptable", "torch_twin"]

TORCH_MODES = ("elman", "lstm", "gru")  # the cells torch.nn has
_MODES = {nn.RNN: "elman", nn.LSTM: "lstm", nn.GRU: "gru"}

# rnnkit.cells.LSTMState under ``from __future__ import annotations`` holds its field types as strings, which
# TorchScript cannot resolve in a NamedTuple (pytorch#95858): the same (h, c) pair, its types given as objects
LSTMState = NamedTuple("LSTMState", [("h", Tensor), ("c", Tensor)])  # noqa: UP014


def torch_twin(
    plan: Plan,
    state_dict: Mapping[str, Tensor],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.RNNBase:
    """A ``torch.nn.RNN/LSTM/GRU`` with ``plan``'s configuration, loaded from ``state_dict``, in ``plan``'s mode.

    ValueError for a cell torch.nn does not have, and for zoneout (torch.nn has no equivalent); the training-only
    regularisers (weight-drop, locked dropout) are left behind, which changes nothing at evaluation.
    """
    cls = plan.spec.torch_module
    if cls is None:
        raise ValueError(f"cell {plan.mode!r} has no torch.nn equivalent (torch.nn has {TORCH_MODES})")
    if plan.zoned:
        raise ValueError(f"zoneout={plan.zoneout} has no torch.nn equivalent; build the RNN with zoneout=0")
    kw: dict[str, Any] = {"nonlinearity": plan.options["nonlinearity"]} if plan.mode == "elman" else {}
    module = cls(
        plan.input_size,
        plan.hidden_size,
        plan.num_layers,
        bias=plan.bias,
        batch_first=plan.batch_first,
        dropout=plan.dropout,
        bidirectional=plan.bidirectional,
        device=device,
        dtype=dtype,
        **kw,
    )
    module.load_state_dict(state_dict)
    return module.train(plan.training)


def plan_kwargs(module: nn.RNNBase) -> dict[str, Any]:
    """The arguments of ``rnnkit.RNN(**plan_kwargs(module))`` with ``module``'s configuration (a torch.nn.RNN, LSTM
    or GRU without projections), device and dtype; TypeError or ValueError naming what does not fit."""
    mode = next((name for cls, name in _MODES.items() if isinstance(module, cls)), None)
    if mode is None:
        raise TypeError(f"module must be a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"module.proj_size must be 0 (projections are not supported), got {module.proj_size}")
    ref = module.weight_ih_l0
    return {
        "mode": mode,
        "input_size": module.input_size,
        "hidden_size": module.hidden_size,
        "num_layers": module.num_layers,
        "bias": module.bias,
        "batch_first": module.batch_first,
        "dropout": float(module.dropout),
        "bidirectional": module.bidirectional,
        "nonlinearity": getattr(module, "nonlinearity", "tanh"),
        "device": ref.device,
        "dtype": ref.dtype,
    }


class TorchRNN(nn.Module):
    """``rnnkit.RNN``'s contract on a ``torch.nn.RNN`` or ``GRU``: ``output, hn = rnn(x, h0=None, lengths=None)``.

    x (B, T, D) (batch_first, else (T, B, D)); h0 (L*K, B, H); lengths (B,) int64 in [1, T]. Outputs past a length
    are zero and hn holds each row's state at its own last step, as in ``rnnkit.RNN``. Scriptable and traceable.
    """

    def __init__(self, module: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = module
        self.batch_first = module.batch_first
        self.mode = "gru" if isinstance(module, nn.GRU) else "elman"

    def forward(self, x: Tensor, state: Optional[Tensor] = None, lengths: Optional[Tensor] = None):  # noqa: UP045
        if lengths is None:
            return self.rnn(x, state)
        T = x.size(1) if self.batch_first else x.size(0)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=False)
        y, hn = self.rnn(packed, state)
        out, _ = pad_packed_sequence(y, batch_first=self.batch_first, total_length=T)  # (B, T, K*H), 0 past lengths
        return out, hn


class TorchLSTM(nn.Module):
    """``rnnkit.RNN``'s contract on a ``torch.nn.LSTM``: ``output, LSTMState(hn, cn) = rnn(x, (h0, c0), lengths)``."""

    def __init__(self, module: nn.LSTM) -> None:
        super().__init__()
        self.rnn = module
        self.batch_first = module.batch_first
        self.mode = "lstm"

    def forward(self, x: Tensor, state: Optional[tuple[Tensor, Tensor]] = None,  # noqa: UP045
                lengths: Optional[Tensor] = None) -> tuple[Tensor, LSTMState]:  # noqa: UP045  # fmt: skip
        if lengths is None:
            out, (h, c) = self.rnn(x, state)
            return out, LSTMState(h, c)
        T = x.size(1) if self.batch_first else x.size(0)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=False)
        y, (h, c) = self.rnn(packed, state)
        out, _ = pad_packed_sequence(y, batch_first=self.batch_first, total_length=T)  # (B, T, K*H), 0 past lengths
        return out, LSTMState(h, c)


def scriptable(rnn: nn.Module, *, script: bool = True) -> nn.Module:
    """The torch.nn twin of an ``rnnkit.RNN`` in rnnkit's contract (``TorchRNN``/``TorchLSTM``), same weights.

    A cell torch.nn has no module for (the table's LayerNorm, min, elman-io and i2h cells) or zoneout goes out as
    the cell's traced step in a scripted loop over time instead (``rnnkit.steploop``, the evaluation model;
    ``script=False``: not yet scripted, for ``torch.jit.script`` to script).
    ExportError, in one line, for anything else ``RNN.to_torch`` refuses.
    """
    plan = rnn.plan()
    if plan.spec.torch_module is None or plan.zoned:
        from rnnkit.steploop import script_loop  # it imports this module's LSTMState

        return script_loop(rnn, script=script)
    try:
        with warnings.catch_warnings():
            # torch.nn warns that dropout does nothing in a one-layer RNN; in rnnkit.RNN it does nothing either
            warnings.filterwarnings("ignore", "dropout option adds dropout", UserWarning)
            module = rnn.to_torch()
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot export RNN({rnn.extra_repr()}): {first}") from e
    wrapper = TorchLSTM(module) if isinstance(module, nn.LSTM) else TorchRNN(module)
    return wrapper.train(rnn.training)

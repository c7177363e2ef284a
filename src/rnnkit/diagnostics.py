"""Gradient flow through time: how the gradient of a late loss reaches the early hidden states.

``gradient_flow(rnn, x)`` runs a single-layer, unidirectional ``rnnkit.RNN`` step by step over ``x``, takes a
loss of the **last** hidden state only, and returns ``||dL/dh_t||`` for every step t::

    h_t = step(x_t, h_{t-1})                      t = 0 .. T-1
    L = loss_fn(h_{T-1})                          default: sum of h_{T-1}, so dL/dh_{T-1} is all ones
    g_{T-1} = dL/dh_{T-1}
    g_t = (dh_{t+1}/dh_t)^T g_{t+1}               the total derivative, through every later step
    curve[t] = ||g_t||                            Frobenius norm over the batch, (B, H)

For an Elman net each backward step multiplies by ``W_hh^T diag(1 - h^2)``, so the curve decays (or grows)
geometrically: the vanishing-gradient problem (Bengio et al. 1994; Pascanu et al. 2013). LSTM's additive cell
path and GRU's ``z * h_{t-1}`` path keep more of it. For LSTM, ``g_t`` is the gradient with respect to the hidden
state h_t; the part that reaches step t through the cell state c_t is not in the curve.

``compare_gradient_flow`` builds Elman, LSTM and GRU of the same size and seed and returns a curve per mode;
``summary`` gives each curve's vanishing factor ``||dL/dh_0|| / ||dL/dh_{T-1}||``; ``plot_gradient_flow`` writes the
picture as a PNG.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnkit.cells import LSTMState
from rnnkit.init import init_forget_bias_
from rnnkit.io import atomic_write
from rnnkit.layers import cell_step, locked_dropout, loop_layer, run_plan
from rnnkit.recurrent import RNN

__all__ = [
    "compare_gradient_flow",
    "curve_names",
    "gradient_flow",
    "model_gradient_flow",
    "plot_gradient_flow",
    "recording",
    "summary",
]

log = logging.getLogger(__name__)


def _sum(h: Tensor) -> Tensor:
    return h.sum()


@contextmanager
def recording(rnn: RNN) -> Iterator[list[list[Tensor]]]:
    """While active, ``rnn`` runs its cell step by step (the loop backend's equations, any cell and regulariser)
    and keeps every step's hidden state h_t, in the autograd graph, in ``records[k]`` (time order; k = layer * K +
    direction, torch.nn's order of h_n). Forward passes while recording append (a batch of TBPTT chunks)."""
    K = rnn.num_directions
    records: list[list[Tensor]] = [[] for _ in range(rnn.num_layers * K)]

    def run(x: Tensor, state, lengths: Tensor | None):
        plan, weights = rnn.plan(), rnn.forward_weights()
        x = locked_dropout(x, rnn.dropout_input, rnn.training)  # (B, T, D)

        def layer(k: int, xt: Tensor, st, mask: Tensor | None, reverse: bool):
            step, seen = cell_step(plan, weights[k]), []

            def recorded(x_t: Tensor, s):
                y, new = step(x_t, s)
                seen.append(new[0] if plan.spec.has_cell else new)  # h_t (B, H): the tensor the next step reads
                return y, new

            out = loop_layer(recorded, xt, st, mask, reverse)
            records[k].extend(seen[::-1] if reverse else seen)  # the reverse direction visits T-1 .. 0
            return out

        out, state = run_plan(plan, x, state, lengths, layer)
        return locked_dropout(out, rnn.dropout_output, rnn.training), state

    rnn._run = run  # an instance attribute over RNN._run, which forward calls
    try:
        yield records
    finally:
        del rnn._run


def _norms(loss: Tensor, hs: list[Tensor]) -> Tensor:
    """||dL/dh|| for each h of ``hs``, float64 on the CPU: squaring a float32 gradient of 1e-20 would underflow to 0
    and hide a nonzero curve. A state the loss does not reach (past a row's length, say) has norm 0."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar Tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
    grads = torch.autograd.grad(loss.reshape(()), hs, allow_unused=True)
    zero = torch.zeros((), dtype=torch.float64)
    return torch.stack([zero if g is None else g.detach().to(device="cpu", dtype=torch.float64).norm() for g in grads])


def gradient_flow(
    rnn: RNN,
    x: Tensor,
    state: Tensor | LSTMState | None = None,
    *,
    loss_fn: Callable[[Tensor], Tensor] = _sum,
    lengths: Tensor | None = None,
) -> Tensor:
    """``||dL/dh_t||`` for t = 0 .. T-1 and every layer and direction, where L = ``loss_fn`` of the top layer's
    final hidden states (the forward direction's h_{T-1}, the reverse direction's h_0).

    Args:
        rnn: any ``rnnkit.RNN`` (any cell, stacked, bidirectional); run step by step with its regularisers in the
            module's mode.
        x: the input sequence in the layout of ``rnn``: (B, T, D) with ``batch_first=True``, else (T, B, D).
        state: the initial state, as for ``rnn.forward`` ((L*K, B, H), or ``(h0, c0)``); ``None`` is zeros.
        loss_fn: maps the top layer's final states (B, K*H), directions side by side, to a scalar; default the sum.
        lengths: (B,) valid lengths, as for ``rnn.forward``.

    Returns:
        A float64 CPU tensor: (T,) for a one-layer unidirectional RNN; (L*K, T) otherwise, row k = layer * K +
        direction (torch.nn's order of h_n). Entry t is the Frobenius norm of dL/dh_t (B, H).
    """
    if not isinstance(rnn, RNN):
        raise TypeError(f"rnn must be an rnnkit.RNN, got {type(rnn).__name__}")
    if not isinstance(x, Tensor) or x.dim() != 3 or x.size(-1) != rnn.input_size:
        layout = "(B, T, D)" if rnn.batch_first else "(T, B, D)"
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must have shape {layout} with D=input_size={rnn.input_size}, got {got}")
    if x.size(1 if rnn.batch_first else 0) == 0:
        raise ValueError(f"x must have at least one time step, got T=0 in shape {tuple(x.shape)}")
    B, K = x.size(0 if rnn.batch_first else 1), rnn.num_directions
    state = rnn.initial_state(B, device=x.device, dtype=x.dtype) if state is None else rnn._check_state(state, B)
    with torch.enable_grad(), recording(rnn) as records:
        # the initial state a leaf that wants grad: the states have a graph even when the parameters are frozen
        state = type(state)(*(p.detach().requires_grad_() for p in state)) if rnn.spec.has_cell else (
            state.detach().requires_grad_())  # fmt: skip
        _, final = rnn(x, state, lengths)
        h_n = final[0] if rnn.spec.has_cell else final  # (L*K, B, H)
        top = torch.cat(list(h_n[-K:]), dim=-1)  # (B, K*H)
        T = len(records[0])
        curves = _norms(loss_fn(top), [h for hs in records for h in hs]).reshape(len(records), T)
    return curves[0] if len(records) == 1 else curves


def curve_names(rnn: RNN, prefix: str = "") -> list[str]:
    """Names of ``gradient_flow``'s rows: "layer 0", "layer 0 reverse", ... (with ``prefix`` before them)."""
    K = rnn.num_directions
    return [f"{prefix}layer {k // K}" + (" reverse" if k % K else "") for k in range(rnn.num_layers * K)]


def model_gradient_flow(model: nn.Module, loss: Callable[[nn.Module], Tensor]) -> dict[str, Tensor]:
    """``||dL/dh_t||`` for every layer and direction of every ``rnnkit.RNN`` in ``model``, L = ``loss(model)``
    (a task's loss on one batch: ``rnnkit gradflow --run``). Name -> (T,), named by the RNN's module path."""
    rnns = [(name, m) for name, m in model.named_modules() if isinstance(m, RNN)]
    if not rnns:
        raise ValueError(f"model holds no rnnkit.RNN ({type(model).__name__})")
    with torch.enable_grad(), ExitStack() as stack:
        records = [stack.enter_context(recording(m)) for _, m in rnns]
        value = loss(model)
        names, hs, sizes = [], [], []
        for (path, rnn), rec in zip(rnns, records, strict=True):
            for name, states in zip(curve_names(rnn, f"{path} " if len(rnns) > 1 else ""), rec, strict=True):
                names.append(name)
                sizes.append(len(states))
                hs.extend(states)
        if not hs:
            raise ValueError("the loss ran no recurrent step")
        flat = _norms(value, hs)
    return dict(zip(names, flat.split(sizes), strict=True))


def compare_gradient_flow(
    modes: Sequence[str] = ("elman", "lstm", "gru"),
    *,
    input_size: int = 16,
    hidden_size: int = 64,
    seq_len: int = 100,
    batch_size: int = 8,
    seed: int = 0,
    forget_bias: float | None = 1.0,
    dtype: torch.dtype = torch.float64,
    loss_fn: Callable[[Tensor], Tensor] = _sum,
    num_layers: int = 1,
    bidirectional: bool = False,
) -> dict[str, Tensor]:
    """Gradient-flow curves of fresh Elman, LSTM and GRU layers on the same random sequence: mode -> (T,), or
    with ``num_layers`` > 1 or ``bidirectional``, "mode layer l[ reverse]" -> (T,) for every layer and direction.

    Each layer gets torch.nn's default initialisation drawn right after ``torch.manual_seed(seed)`` (inside
    ``fork_rng``, so the caller's global RNG is left as it was); the LSTM's forget-gate bias is then set to
    ``forget_bias`` (Jozefowicz et al. 2015) unless it is ``None``. The input is standard normal (B, T, D) from a
    ``torch.Generator`` seeded with ``seed``, the same for every mode. float64 by default: an Elman curve falls by
    ~1e-27 over T=100 steps and ~1e-56 over T=200, past what float32 gradients can hold (~1e-45).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, seq_len, input_size, generator=gen, dtype=dtype)  # (B, T, D)
    curves = {}
    for mode in modes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rnn = RNN(mode, input_size, hidden_size, num_layers, bidirectional=bidirectional, dtype=dtype)
        if rnn.spec.has_cell and forget_bias is not None:
            init_forget_bias_(rnn, forget_bias)
        flow = gradient_flow(rnn, x, loss_fn=loss_fn)
        if flow.dim() == 1:
            curves[mode] = flow
        else:
            curves |= dict(zip(curve_names(rnn, f"{mode} "), flow, strict=True))
    log.info("gradient flow, T=%d H=%d seed=%d: vanishing factors %s", seq_len, hidden_size, seed, summary(curves))
    return curves


def summary(curves: Mapping[str, Tensor]) -> dict[str, float]:
    """Per curve, the vanishing factor ``||dL/dh_0|| / ||dL/dh_{T-1}||`` (< 1 vanishes, > 1 explodes); for a curve
    named "... reverse" (a reverse direction, whose last step is t=0) ``||dL/dh_{T-1}|| / ||dL/dh_0||``.

    Steps whose gradient is exactly zero at either end (padding past every sequence of a batch, a decoder step no
    loss reads) are left out: the factor runs from the first to the last step the loss reaches (0 if none)."""
    factors = {}
    for name, curve in _check_curves(curves).items():
        reached = torch.nonzero(curve).flatten()
        if reached.numel() == 0:
            factors[name] = 0.0
            continue
        first, last = curve[reached[0]], curve[reached[-1]]
        factors[name] = float(last / first if name.endswith("reverse") else first / last)
    return factors


def _check_curves(curves: object) -> dict[str, Tensor]:
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"curves must be a non-empty dict of mode -> (T,) Tensor, got {curves!r:.80}")
    for mode, curve in curves.items():
        if not isinstance(curve, Tensor) or curve.dim() != 1 or curve.numel() == 0:
            got = tuple(curve.shape) if isinstance(curve, Tensor) else type(curve).__name__
            raise ValueError(f"curves[{mode!r}] must be a non-empty 1-D Tensor (T,), got {got}")
    return dict(curves)


def plot_gradient_flow(
    curves: Mapping[str, Tensor],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    loss: str = "loss of the last states",
) -> Path:
    """Write the curves as a PNG (log-scale y) to ``path`` and return it; ``loss`` says what L is, on the y axis.
    A curve named "... reverse" (a reverse direction) is dashed.

    The file is written to a temporary file next to ``path`` and moved over it with ``os.replace``, so an
    existing file is replaced only once the new one is complete.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = _check_curves(curves)
    path = Path(path)
    T = max(c.numel() for c in curves.values())
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    ax = fig.add_subplot()
    factors = summary(curves)
    for mode, curve in curves.items():
        values = curve.detach().double().cpu().numpy()
        if (values <= 0).any():
            log.warning("curve %r has %d non-positive values; the log scale leaves them out", mode, (values <= 0).sum())
        style = "--" if mode.endswith("reverse") else "-"  # a reverse direction dashed, beside its forward one
        ax.plot(range(values.size), values, style, label=f"{mode}   (vanishing factor {factors[mode]:.2g})")
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$" + f"   (L: {loss})")
    ax.set_title(title or f"Gradient flow back through time (T={T})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="vanishing factor: first step over last, in each direction's order", fontsize="small")
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))  # a Figure without pyplot needs no closing
    log.info("wrote gradient-flow plot %s", path)
    return path

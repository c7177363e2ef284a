"""NumPy forward pass and hand-written backpropagation through time for Elman, LSTM and GRU.

The teaching copy of the math and rnnkit's gradient oracle, in the style of karpathy's min-char-rnn: one
equation per line, a shape comment on each line that changes shape, no torch in the math. The model is one
recurrent layer followed by an output layer and softmax cross-entropy::

    h_t = cell(x_t, h_{t-1})            Elman, LSTM or GRU
    y_t = W_hy h_t + b_y                logits (B, V)
    p_t = softmax(y_t)
    loss = -sum_t sum_b log p_t[b, targets[t, b]]

The cell's step and its backward are the NumPy reference of its spec (``rnnkit.cells.classic``: ``CELLS[mode]
.reference``), so this file holds what is around them: the head, the loss and the walk back through time. For
Elman, the step and its backward read::

    a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh          (B, H)
    h_t = tanh(a)
    da = dh_t * (1 - h_t^2)                            dh_t: from y_t and from step t+1
    dW_ih += da^T x_t;  dW_hh += da^T h_{t-1};  db_ih, db_hh += sum_b da
    dx_t = da W_ih;  dh_{t-1} = da W_hh

Conventions:
  - ``x`` is time-major, (T, B, D), so ``x[t]`` is step t (as ``RNN(..., batch_first=False)``).
  - ``targets`` is (T, B) ints in [0, V).
  - The loss is **summed** over time and batch (min-char-rnn's choice): no averaging, so the gradients are plain
    sums of per-step terms. Divide by T * B for the mean.
  - ``params`` has the torch.nn layout and gate order: ``weight_ih`` (G*H, D), ``weight_hh`` (G*H, H),
    ``bias_ih``/``bias_hh`` (G*H,) with G = 1 (Elman), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n), plus the head
    ``weight_hy`` (V, H) and ``bias_y`` (V,).
  - The state is h (B, H) for Elman and GRU and a pair (h, c) for LSTM; ``None`` means zeros.
  - ``backward`` returns the gradient of the loss under each parameter's name, and under ``"x"``, ``"h0"`` (and
    ``"c0"`` for LSTM) for the input and the initial state.

Example::

    params = init_params("lstm", D, H, V, np.random.default_rng(0))
    loss, grads = loss_and_grads("lstm", params, x, None, targets)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnnkit.cells.classic import ELMAN, GRU, LSTM
from rnnkit.cells.spec import NumpyCell

__all__ = ["GATES", "backward", "forward", "init_params", "loss_and_grads", "output", "step"]

GATES = {"elman": 1, "lstm": 4, "gru": 3}
SPECS = {"elman": ELMAN, "lstm": LSTM, "gru": GRU}  # each spec's .reference is its NumPy step and backward
PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hy", "bias_y")
State = Any  # h (B, H), or (h, c) for LSTM


def _check_mode(mode: object) -> str:
    if mode == "rnn":
        return "elman"
    if mode not in GATES:
        raise ValueError(f"mode must be one of {tuple(GATES)} (or 'rnn'), got {mode!r}")
    return mode  # type: ignore[return-value]


def init_params(mode: str, input_size: int, hidden_size: int, vocab_size: int, rng: np.random.Generator) -> dict:
    """Random float64 parameters, uniform in [-1/sqrt(H), 1/sqrt(H)] as torch.nn initialises them."""
    G, D, H, V = GATES[_check_mode(mode)], input_size, hidden_size, vocab_size
    shapes = {
        "weight_ih": (G * H, D),
        "weight_hh": (G * H, H),
        "bias_ih": (G * H,),
        "bias_hh": (G * H,),
        "weight_hy": (V, H),
        "bias_y": (V,),
    }
    bound = 1.0 / np.sqrt(H)
    return {name: rng.uniform(-bound, bound, size=shape) for name, shape in shapes.items()}


def _check_params(mode: str, params: dict) -> int:
    missing = [name for name in PARAM_NAMES if name not in params]
    if missing:
        raise ValueError(f"params must have keys {PARAM_NAMES}, missing {missing}")
    G = GATES[mode]
    H = params["weight_hh"].shape[1]
    if params["weight_hh"].shape != (G * H, H):
        raise ValueError(
            f"params['weight_hh'] must be (G*H, H) with G={G} for {mode!r}, got {params['weight_hh'].shape}"
        )
    return H


def _zero_state(mode: str, B: int, H: int, dtype) -> State:
    h = np.zeros((B, H), dtype=dtype)
    return (h, h.copy()) if SPECS[mode].has_cell else h


# --- one step ---------------------------------------------------------------------------------------------


def _cell(mode: str) -> NumpyCell:
    cell = SPECS[mode].reference
    assert cell is not None, f"the spec of {mode!r} lost its NumPy reference"
    return cell


def step(mode: str, params: dict, x_t: np.ndarray, state: State = None) -> tuple[np.ndarray, State]:
    """One step, ``h_t, state = step(mode, params, x_t, state)``: x_t (B, D) -> h_t (B, H) and the new state.

    The same contract as the rnnkit cells; ``output(params, h_t)`` gives the logits for generation.
    """
    mode = _check_mode(mode)
    H = _check_params(mode, params)
    x_t = np.asarray(x_t)
    if x_t.ndim != 2 or x_t.shape[1] != params["weight_ih"].shape[1]:
        raise ValueError(f"x_t must have shape (B, D={params['weight_ih'].shape[1]}), got {x_t.shape}")
    if state is None:
        state = _zero_state(mode, x_t.shape[0], H, x_t.dtype)
    h, state, _ = _cell(mode).step(params, x_t, state)  # h_t (B, H)
    return h, state


def output(params: dict, h: np.ndarray) -> np.ndarray:
    """The head, ``y = W_hy h + b_y``: h (B, H) -> logits (B, V)."""
    return h @ params["weight_hy"].T + params["bias_y"]  # (B, V)


# --- the whole sequence ------------------------------------------------------------------------------------


def forward(mode: str, params: dict, x: np.ndarray, state: State, targets: np.ndarray) -> tuple[float, dict]:
    """Run the sequence and the loss; returns (loss summed over T and B, cache for ``backward``).

    ``x`` (T, B, D), ``state`` the initial state (``None`` for zeros), ``targets`` (T, B) ints.
    """
    mode = _check_mode(mode)
    H = _check_params(mode, params)
    x = np.asarray(x)
    targets = np.asarray(targets)
    D = params["weight_ih"].shape[1]
    if x.ndim != 3 or x.shape[2] != D:
        raise ValueError(f"x must have shape (T, B, D={D}), got {x.shape}")
    T, B = x.shape[:2]
    if targets.shape != (T, B):
        raise ValueError(f"targets must have shape (T, B)={(T, B)}, got {targets.shape}")
    if state is None:
        state = _zero_state(mode, B, H, x.dtype)
    init = state
    cell = _cell(mode)
    steps, probs = [], []
    loss = 0.0
    rows = np.arange(B)
    for t in range(T):
        h, state, cache = cell.step(params, x[t], state)  # h_t (B, H)
        y = output(params, h)  # (B, V)
        y = y - y.max(axis=1, keepdims=True)  # same softmax, no overflow
        p = np.exp(y) / np.exp(y).sum(axis=1, keepdims=True)  # (B, V)
        loss += -np.log(p[rows, targets[t]]).sum()
        cache["h"] = h
        steps.append(cache)
        probs.append(p)
    return float(loss), {"mode": mode, "steps": steps, "probs": probs, "targets": targets, "init": init}


def backward(mode: str, params: dict, cache: dict) -> dict[str, np.ndarray]:
    """Backpropagation through time: the gradient of ``forward``'s loss under each parameter name and under
    ``"x"`` (T, B, D), ``"h0"`` (B, H) and, for LSTM, ``"c0"`` (B, H)."""
    mode = _check_mode(mode)
    if cache["mode"] != mode:
        raise ValueError(f"mode must match the forward pass ({cache['mode']!r}), got {mode!r}")
    grads = {name: np.zeros_like(params[name]) for name in PARAM_NAMES}
    steps, probs, targets = cache["steps"], cache["probs"], cache["targets"]
    T, B = targets.shape
    rows = np.arange(B)
    cell = _cell(mode)
    dx = np.zeros((T, B, params["weight_ih"].shape[1]), dtype=steps[0]["x"].dtype)
    dh_next = np.zeros_like(steps[0]["h"])  # dL/dh_t through step t+1; zero after the last step
    dstate = (dh_next, np.zeros_like(dh_next)) if SPECS[mode].has_cell else dh_next  # (and dL/dc_t)
    for t in reversed(range(T)):
        s = steps[t]
        dy = probs[t].copy()  # (B, V)  d(-log softmax(y)[k])/dy = p - onehot(k)
        dy[rows, targets[t]] -= 1
        grads["weight_hy"] += dy.T @ s["h"]  # (V, H)
        grads["bias_y"] += dy.sum(axis=0)  # (V,)
        dh = dy @ params["weight_hy"]  # (B, H)  from y_t; the cell adds what comes from step t+1
        dx[t], dstate = cell.backward(params, s, dh, dstate, grads)
    grads["x"] = dx
    if SPECS[mode].has_cell:
        grads["h0"], grads["c0"] = dstate
    else:
        grads["h0"] = dstate
    return grads


def loss_and_grads(
    mode: str, params: dict, x: np.ndarray, state: State, targets: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """``forward`` then ``backward``: (loss, grads)."""
    loss, cache = forward(mode, params, x, state, targets)
    return loss, backward(mode, params, cache)

"""NumPy forward pass and hand-written backpropagation through time for Elman, LSTM and GRU.

The teaching copy of the math and rnnkit's gradient oracle, in the style of karpathy's min-char-rnn: one
equation per line, a shape comment on each line that changes shape, no torch. The model is one recurrent layer
followed by an output layer and softmax cross-entropy::

    h_t = cell(x_t, h_{t-1})            Elman, LSTM or GRU (equations in ``rnnkit.cells``)
    y_t = W_hy h_t + b_y                logits (B, V)
    p_t = softmax(y_t)
    loss = -sum_t sum_b log p_t[b, targets[t, b]]

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

__all__ = ["GATES", "backward", "forward", "init_params", "loss_and_grads", "output", "step"]

GATES = {"elman": 1, "lstm": 4, "gru": 3}
PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hy", "bias_y")
State = Any  # h (B, H), or (h, c) for LSTM


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


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
    return (h, h.copy()) if mode == "lstm" else h


# --- one step ---------------------------------------------------------------------------------------------


def _step(mode: str, p: dict, x: np.ndarray, state: State) -> tuple[State, dict]:
    """One step of the recurrence; returns the new state and what backward needs."""
    if mode == "elman":
        h_prev = state
        a = x @ p["weight_ih"].T + p["bias_ih"] + h_prev @ p["weight_hh"].T + p["bias_hh"]  # (B, H)
        h = np.tanh(a)  # (B, H)
        return h, {"x": x, "h_prev": h_prev, "h": h}
    if mode == "lstm":
        h_prev, c_prev = state
        gates = x @ p["weight_ih"].T + p["bias_ih"] + h_prev @ p["weight_hh"].T + p["bias_hh"]  # (B, 4H)
        a_i, a_f, a_g, a_o = np.split(gates, 4, axis=1)  # 4 x (B, H)
        i = sigmoid(a_i)  # input gate
        f = sigmoid(a_f)  # forget gate
        g = np.tanh(a_g)  # candidate
        o = sigmoid(a_o)  # output gate
        c = f * c_prev + i * g  # (B, H)
        tc = np.tanh(c)
        h = o * tc  # (B, H)
        cache = {"x": x, "h_prev": h_prev, "c_prev": c_prev, "i": i, "f": f, "g": g, "o": o, "tc": tc}
        return (h, c), cache
    # gru: the torch.nn/cuDNN variant, reset applied to (W_hn h + b_hn)
    h_prev = state
    gi = x @ p["weight_ih"].T + p["bias_ih"]  # (B, 3H)
    gh = h_prev @ p["weight_hh"].T + p["bias_hh"]  # (B, 3H)
    i_r, i_z, i_n = np.split(gi, 3, axis=1)  # 3 x (B, H)
    h_r, h_z, h_n = np.split(gh, 3, axis=1)  # 3 x (B, H)
    r = sigmoid(i_r + h_r)  # reset gate
    z = sigmoid(i_z + h_z)  # update gate
    n = np.tanh(i_n + r * h_n)  # candidate
    h = (1 - z) * n + z * h_prev  # (B, H)
    return h, {"x": x, "h_prev": h_prev, "r": r, "z": z, "n": n, "h_n": h_n}


def _step_backward(mode: str, p: dict, s: dict, dh: np.ndarray, dc: np.ndarray | None, grads: dict):
    """Backward through one step: adds the weight gradients into ``grads``; returns (dx, dh_prev, dc_prev)."""
    dc_prev = None
    if mode == "elman":
        da = dh * (1 - s["h"] ** 2)  # (B, H)  tanh' = 1 - tanh^2
        dgi = dgh = da
    elif mode == "lstm":
        i, f, g, o, tc = s["i"], s["f"], s["g"], s["o"], s["tc"]
        do = dh * tc  # h = o * tanh(c)
        dc = dc + dh * o * (1 - tc**2)  # c reaches the loss through h_t and through c_{t+1}
        di = dc * g  # c = f * c_prev + i * g
        df = dc * s["c_prev"]
        dg = dc * i
        dc_prev = dc * f
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=1)  # (B, 4H)
        dgi = dgh = da
    else:
        r, z, n = s["r"], s["z"], s["n"]
        dn = dh * (1 - z)  # h = (1 - z) * n + z * h_prev
        dz = dh * (s["h_prev"] - n)
        da_n = dn * (1 - n**2)  # n = tanh(i_n + r * h_n)
        dr = da_n * s["h_n"]
        da_r = dr * r * (1 - r)
        da_z = dz * z * (1 - z)
        dgi = np.concatenate([da_r, da_z, da_n], axis=1)  # (B, 3H)
        dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)  # (B, 3H)
    grads["weight_ih"] += dgi.T @ s["x"]  # (G*H, D)
    grads["weight_hh"] += dgh.T @ s["h_prev"]  # (G*H, H)
    grads["bias_ih"] += dgi.sum(axis=0)  # (G*H,)
    grads["bias_hh"] += dgh.sum(axis=0)  # (G*H,)
    dx = dgi @ p["weight_ih"]  # (B, D)
    dh_prev = dgh @ p["weight_hh"]  # (B, H)
    if mode == "gru":
        dh_prev = dh_prev + dh * z  # the direct path z * h_prev
    return dx, dh_prev, dc_prev


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
    state, _ = _step(mode, params, x_t, state)
    return (state[0] if mode == "lstm" else state), state


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
    steps, probs = [], []
    loss = 0.0
    rows = np.arange(B)
    for t in range(T):
        state, cache = _step(mode, params, x[t], state)  # h_t (B, H)
        h = state[0] if mode == "lstm" else state
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
    dx = np.zeros((T, B, params["weight_ih"].shape[1]), dtype=steps[0]["x"].dtype)
    dh_next = np.zeros_like(steps[0]["h"])  # dL/dh_t through h_{t+1}; zero after the last step
    dc_next = np.zeros_like(dh_next) if mode == "lstm" else None
    for t in reversed(range(T)):
        s = steps[t]
        dy = probs[t].copy()  # (B, V)  d(-log softmax(y)[k])/dy = p - onehot(k)
        dy[rows, targets[t]] -= 1
        grads["weight_hy"] += dy.T @ s["h"]  # (V, H)
        grads["bias_y"] += dy.sum(axis=0)  # (V,)
        dh = dy @ params["weight_hy"] + dh_next  # (B, H)  from y_t and from step t+1
        dx[t], dh_next, dc_next = _step_backward(mode, params, s, dh, dc_next, grads)
    grads["x"] = dx
    grads["h0"] = dh_next
    if mode == "lstm":
        grads["c0"] = dc_next
    return grads


def loss_and_grads(
    mode: str, params: dict, x: np.ndarray, state: State, targets: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """``forward`` then ``backward``: (loss, grads)."""
    loss, cache = forward(mode, params, x, state, targets)
    return loss, backward(mode, params, cache)

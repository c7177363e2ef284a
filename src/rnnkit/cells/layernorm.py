"""Layer-normalised LSTM and GRU (Ba, Kiros and Hinton 2016), in the form of haste's LayerNormLSTM/LayerNormGRU.

The input and recurrent products are normalised separately over all their G*H gate pre-activations (a gain per
unit, no shift: the gate biases follow the normalisation), and the LSTM's cell is normalised (gain and shift)
before its tanh. Normalising each product makes the gates' scale independent of the weights' scale, which steadies
training of deep and long recurrences.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.spec import CellSpec, LSTMState, NumpyCell, register

__all__ = ["EPS", "LAYERNORM_GRU", "LAYERNORM_LSTM", "layernorm_gru_step", "layernorm_lstm_step"]

EPS = 1e-5


def _ln(a: Tensor, gain: Tensor, shift: Tensor | None = None) -> Tensor:
    """LN(a) = gain * (a - mean(a)) / sqrt(var(a) + eps) (+ shift), over the last axis."""
    # the feature size as an int: a trace records it as a constant (rnnkit.steploop's traced step), which the ONNX
    # exporter needs of layer_norm's shape; it is G*H, fixed by the weights
    return F.layer_norm(a, (int(a.shape[-1]),), gain, shift, EPS)


def _plus(a: Tensor, b: Tensor | None) -> Tensor:
    return a if b is None else a + b


def layernorm_lstm_step(x: Tensor, state: LSTMState, w) -> tuple[Tensor, LSTMState]:
    h, c = state
    gates = _plus(_ln(x @ w["weight_ih"].t(), w["ln_ih_weight"]), w.get("bias_ih"))  # (B, 4H)
    gates = gates + _plus(_ln(h @ w["weight_hh"].t(), w["ln_hh_weight"]), w.get("bias_hh"))  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(_ln(c, w["ln_c_weight"], w["ln_c_bias"]))
    return h, LSTMState(h, c)


def layernorm_gru_step(x: Tensor, h: Tensor, w) -> tuple[Tensor, Tensor]:
    gi = _plus(_ln(x @ w["weight_ih"].t(), w["ln_ih_weight"]), w.get("bias_ih"))  # (B, 3H)
    gh = _plus(_ln(h @ w["weight_hh"].t(), w["ln_hh_weight"]), w.get("bias_hh"))  # (B, 3H)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # 3 x (B, H)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)  # 3 x (B, H)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    h = (1 - z) * n + z * h
    return h, h


# --- NumPy references (float64, hand-written backward) ----------------------------------------------------


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _ln_np(a: np.ndarray, gain: np.ndarray, shift: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """LN(a) = gain * a_hat + shift with a_hat = (a - mean(a)) / sqrt(var(a) + eps) over the last axis."""
    mu = a.mean(axis=-1, keepdims=True)  # (B, 1)
    s = np.sqrt(a.var(axis=-1, keepdims=True) + EPS)  # (B, 1)  biased variance, as F.layer_norm
    a_hat = (a - mu) / s  # (B, N)
    out = gain * a_hat + (0.0 if shift is None else shift)  # (B, N)
    return out, {"a_hat": a_hat, "s": s}


def _ln_np_backward(dout: np.ndarray, gain: np.ndarray, ln: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of ``_ln_np``: (da, dgain, dshift)."""
    a_hat, s = ln["a_hat"], ln["s"]
    da_hat = dout * gain  # (B, N)
    # a_hat's Jacobian removes the mean and the component along a_hat, then scales by 1/s
    da = (da_hat - da_hat.mean(-1, keepdims=True) - a_hat * (da_hat * a_hat).mean(-1, keepdims=True)) / s
    return da, (dout * a_hat).sum(axis=0), dout.sum(axis=0)


def _normed_products(p: dict, x: np.ndarray, h_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """gi = LN(W_ih x; a_ih) + b_ih and gh = LN(W_hh h; a_hh) + b_hh, each (B, G*H), and their LN caches."""
    gi, ln_i = _ln_np(x @ p["weight_ih"].T, p["ln_ih_weight"])  # (B, G*H)
    gh, ln_h = _ln_np(h_prev @ p["weight_hh"].T, p["ln_hh_weight"])  # (B, G*H)
    gi = gi + p["bias_ih"]
    gh = gh + p["bias_hh"]
    return gi, gh, {"x": x, "h_prev": h_prev, "ln_i": ln_i, "ln_h": ln_h}


def _normed_products_backward(p: dict, s: dict, dgi: np.ndarray, dgh: np.ndarray, grads: dict):
    """Backward of ``_normed_products``: adds the weight gradients into ``grads``; returns (dx, dh_prev)."""
    dai, dgain_i, _ = _ln_np_backward(dgi, p["ln_ih_weight"], s["ln_i"])  # (B, G*H)
    dah, dgain_h, _ = _ln_np_backward(dgh, p["ln_hh_weight"], s["ln_h"])  # (B, G*H)
    grads["ln_ih_weight"] += dgain_i
    grads["ln_hh_weight"] += dgain_h
    grads["bias_ih"] += dgi.sum(axis=0)
    grads["bias_hh"] += dgh.sum(axis=0)
    grads["weight_ih"] += dai.T @ s["x"]  # (G*H, D)
    grads["weight_hh"] += dah.T @ s["h_prev"]  # (G*H, H)
    return dai @ p["weight_ih"], dah @ p["weight_hh"]  # (B, D), (B, H)


def _lstm_np_step(p: dict, x: np.ndarray, state: tuple) -> tuple:
    h_prev, c_prev = state
    gi, gh, s = _normed_products(p, x, h_prev)
    a_i, a_f, a_g, a_o = np.split(gi + gh, 4, axis=1)  # 4 x (B, H)
    i = _sigmoid(a_i)
    f = _sigmoid(a_f)
    g = np.tanh(a_g)
    o = _sigmoid(a_o)
    c = f * c_prev + i * g  # (B, H)
    lc, ln_c = _ln_np(c, p["ln_c_weight"], p["ln_c_bias"])
    tc = np.tanh(lc)
    h = o * tc  # (B, H)
    s |= {"c_prev": c_prev, "i": i, "f": f, "g": g, "o": o, "tc": tc, "ln_c": ln_c}
    return h, (h, c), s


def _lstm_np_backward(p: dict, s: dict, dy: np.ndarray, dstate: tuple, grads: dict) -> tuple:
    dh, dc = dstate
    dh = dh + dy  # h_t is both the output and the next step's state
    i, f, g, o, tc = s["i"], s["f"], s["g"], s["o"], s["tc"]
    do = dh * tc  # h = o * tanh(LN(c))
    dlc = dh * o * (1 - tc**2)
    dc_ln, dgain_c, dshift_c = _ln_np_backward(dlc, p["ln_c_weight"], s["ln_c"])
    grads["ln_c_weight"] += dgain_c
    grads["ln_c_bias"] += dshift_c
    dc = dc + dc_ln  # c reaches the loss through h_t and through c_{t+1}
    di = dc * g  # c = f * c_prev + i * g
    df = dc * s["c_prev"]
    dg = dc * i
    dc_prev = dc * f
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=1)  # (B, 4H)
    dx, dh_prev = _normed_products_backward(p, s, da, da, grads)
    return dx, (dh_prev, dc_prev)


def _gru_np_step(p: dict, x: np.ndarray, h_prev: np.ndarray) -> tuple:
    gi, gh, s = _normed_products(p, x, h_prev)
    i_r, i_z, i_n = np.split(gi, 3, axis=1)  # 3 x (B, H)
    h_r, h_z, h_n = np.split(gh, 3, axis=1)  # 3 x (B, H)
    r = _sigmoid(i_r + h_r)
    z = _sigmoid(i_z + h_z)
    n = np.tanh(i_n + r * h_n)
    h = (1 - z) * n + z * h_prev  # (B, H)
    s |= {"r": r, "z": z, "n": n, "h_n": h_n}
    return h, h, s


def _gru_np_backward(p: dict, s: dict, dy: np.ndarray, dh: np.ndarray, grads: dict) -> tuple:
    dh = dh + dy
    r, z, n = s["r"], s["z"], s["n"]
    dn = dh * (1 - z)  # h = (1 - z) * n + z * h_prev
    dz = dh * (s["h_prev"] - n)
    da_n = dn * (1 - n**2)  # n = tanh(i_n + r * h_n)
    da_r = da_n * s["h_n"] * r * (1 - r)
    da_z = dz * z * (1 - z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)  # (B, 3H)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)  # (B, 3H)
    dx, dh_prev = _normed_products_backward(p, s, dgi, dgh, grads)
    return dx, dh_prev + dh * z  # plus the direct path z * h_prev


def _layout(G: int, cell_norm: bool):
    def shapes(D: int, H: int) -> dict[str, tuple[int, ...]]:
        out = {"weight_ih": (G * H, D), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}
        out |= {"ln_ih_weight": (G * H,), "ln_hh_weight": (G * H,)}
        if cell_norm:
            out |= {"ln_c_weight": (H,), "ln_c_bias": (H,)}
        return out

    return shapes


def _ones(p: Tensor, H: int) -> None:
    p.fill_(1.0)


def _zeros(p: Tensor, H: int) -> None:
    p.zero_()


_LN_INIT = {"ln_ih_weight": _ones, "ln_hh_weight": _ones, "ln_c_weight": _ones, "ln_c_bias": _zeros}

LAYERNORM_LSTM = register(
    CellSpec(
        name="layernorm-lstm",
        title="LayerNorm LSTM (Ba et al. 2016; haste's LayerNormLSTM)",
        equations="""[i, f, g, o] = LN(W_ih x_t; a_ih) + b_ih + LN(W_hh h_{t-1}; a_hh) + b_hh
i, f, o = sigmoid(i), sigmoid(f), sigmoid(o);  g = tanh(g)
c_t = f * c_{t-1} + i * g
h_t = o * tanh(LN(c_t; a_c, b_c))
y_t = h_t                  LN(v; a, b) = a * (v - mean(v)) / sqrt(var(v) + 1e-5) + b over the units""",
        parameters=_layout(4, cell_norm=True),
        step=layernorm_lstm_step,
        has_cell=True,
        init=_LN_INIT,
        reference=NumpyCell(_lstm_np_step, _lstm_np_backward),
        aliases=("ln-lstm",),
    )
)

LAYERNORM_GRU = register(
    CellSpec(
        name="layernorm-gru",
        title="LayerNorm GRU (Ba et al. 2016; haste's LayerNormGRU)",
        equations="""[i_r, i_z, i_n] = LN(W_ih x_t; a_ih) + b_ih
[h_r, h_z, h_n] = LN(W_hh h_{t-1}; a_hh) + b_hh
r = sigmoid(i_r + h_r);  z = sigmoid(i_z + h_z)
n = tanh(i_n + r * h_n)
h_t = (1 - z) * n + z * h_{t-1}
y_t = h_t""",
        parameters=_layout(3, cell_norm=False),
        step=layernorm_gru_step,
        init=_LN_INIT,
        reference=NumpyCell(_gru_np_step, _gru_np_backward),
        aliases=("ln-gru",),
    )
)

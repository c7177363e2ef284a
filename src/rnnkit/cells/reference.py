"""The NumPy sequence driver for any cell of the table: forward over time and backpropagation through time.

Each ``CellSpec`` with a NumPy reference (``spec.reference``, a ``NumpyCell``) gives one step and that step's
backward; this module runs them over a whole sequence, in float64, with no torch. It is the teaching copy of BPTT
and the oracle the torch backends are tested against (tests/test_cell_table.py)::

    state = state_0
    for t in range(T):                                     # T-1 .. 0 with reverse=True
        y[t], state, cache[t] = cell.step(p, x[t], state)
    ...
    dstate = dfinal
    for t in reversed(order):                              # the forward order, backwards
        dx[t], dstate = cell.backward(p, cache[t], dy[t], dstate, grads)
    grads["h0"] = dstate                                   # (and "c0")

Conventions: ``x`` is time-major (T, B, D); ``params`` maps each parameter kind of the spec (``weight_ih``, ...)
to an array of the shape ``spec.parameters(D, H)`` gives (all kinds, biases included); a state is h (B, H) or,
for cells with a memory cell (``spec.has_cell``), a pair (h, c); ``None`` means zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnnkit.cells.spec import CellSpec

__all__ = ["backward", "forward", "zero_state"]

State = Any  # h (B, H), or (h, c) for cells with a memory cell


def _numpy_cell(spec: CellSpec):
    if spec.reference is None:
        raise ValueError(f"cell {spec.name!r} has no NumPy reference (CellSpec.reference is None)")
    return spec.reference


def zero_state(spec: CellSpec, batch_size: int, hidden_size: int) -> State:
    h = np.zeros((batch_size, hidden_size))
    return (h, h.copy()) if spec.has_cell else h


def forward(
    spec: CellSpec, params: dict[str, np.ndarray], x: np.ndarray, state: State = None, reverse: bool = False, **options
) -> tuple[np.ndarray, State, dict]:
    """Run the cell over ``x`` (T, B, D); returns (ys (T, B, H), final state, caches for ``backward``).

    With ``reverse``, step T-1 is read first and step 0 last; ``ys[t]`` is still the output at step t.
    """
    cell = _numpy_cell(spec)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, D), got {x.shape}")
    T, B, _ = x.shape
    H = _hidden_size(spec, params, x.shape[2])
    if state is None:
        state = zero_state(spec, B, H)
    order = list(range(T - 1, -1, -1)) if reverse else list(range(T))
    ys = np.zeros((T, B, H))
    steps: list[dict] = [{}] * T  # every slot is written
    for t in order:
        ys[t], state, steps[t] = cell.step(params, x[t], state, **options)  # y_t: (B, H)
    return ys, state, {"order": order, "steps": steps, "B": B, "D": x.shape[2], "H": H}


def backward(
    spec: CellSpec, params: dict[str, np.ndarray], caches: dict, dys: np.ndarray, dfinal: State = None
) -> dict[str, np.ndarray]:
    """Backpropagation through time for ``forward``: the gradient of ``sum(dys * ys) + sum(dfinal * final)``
    under each parameter kind and under ``"x"`` (T, B, D), ``"h0"`` (B, H) and, for cells with a memory cell,
    ``"c0"`` (B, H)."""
    cell = _numpy_cell(spec)
    B, D, H = caches["B"], caches["D"], caches["H"]
    grads = {kind: np.zeros_like(p) for kind, p in params.items()}
    dx = np.zeros((len(caches["steps"]), B, D))
    dstate = zero_state(spec, B, H) if dfinal is None else dfinal  # dL/dstate after the last step read
    for t in reversed(caches["order"]):
        dx[t], dstate = cell.backward(params, caches["steps"][t], dys[t], dstate, grads)
    grads["x"] = dx
    if spec.has_cell:
        grads["h0"], grads["c0"] = dstate
    else:
        grads["h0"] = dstate
    return grads


def _hidden_size(spec: CellSpec, params: dict[str, np.ndarray], D: int) -> int:
    """H from the parameters: the H for which ``spec.parameters(D, H)`` gives the shape of ``weight_ih``."""
    rows = params["weight_ih"].shape[0]
    G = spec.parameters(D, 1)["weight_ih"][0]  # gate blocks of weight_ih: (G*H, D)
    if rows % G or params["weight_ih"].shape[1] != D:
        got = params["weight_ih"].shape
        raise ValueError(f"params['weight_ih'] must have shape ({G}*H, D={D}) for cell {spec.name!r}, got {got}")
    H = rows // G
    expected = spec.parameters(D, H)
    for kind, shape in expected.items():
        if kind not in params or params[kind].shape != shape:
            got = params[kind].shape if kind in params else "missing"
            raise ValueError(f"params[{kind!r}] must have shape {shape} for cell {spec.name!r}, got {got}")
    return H

"""The package surface: what ``import rnnkit`` gives and what it must leave alone."""

from __future__ import annotations

import subprocess
import sys

import rnnkit


def test_import_leaves_the_global_rng_alone():
    # the oneDNN probe in rnnkit.kernels.ops draws random tensors at import; it must use its own generator,
    # or a script that seeds torch before importing rnnkit gets other numbers than one that seeds after
    code = (
        "import torch; torch.manual_seed(0); a = torch.rand(3);"
        "torch.manual_seed(0); import rnnkit, rnnkit.kernels, rnnkit.cli; b = torch.rand(3);"
        "print(bool(torch.equal(a, b)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_public_names_resolve():
    for name in rnnkit.__all__:
        assert getattr(rnnkit, name) is not None, name
    assert rnnkit.gradient_flow.__module__ == "rnnkit.diagnostics"
    assert callable(rnnkit.reference.forward) and callable(rnnkit.reference.backward)

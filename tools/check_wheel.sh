#!/usr/bin/env bash
# Builds torchkron's wheel and installs it into a fresh virtual environment (torch first,
# the CPU build pinned by TORCH_VERSION), then imports it and runs the README's example
# from outside the checkout, so that a missing file in the package (py.typed, a
# subpackage, the CLI) fails here rather than on a user's machine.
#   bash tools/check_wheel.sh            (CI runs it after the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
wheel="$(ls "$work"/dist/torchkron-*.whl)"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
echo "torch==$TORCH_VERSION" > "$work/constraints.txt"
"$work/venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
"$work/venv/bin/python" -m pip install --quiet -c "$work/constraints.txt" "$wheel"

cd "$work"
"$work/venv/bin/python" - <<'PY'
import importlib.resources
import sys

import torch

import torchkron
from torchkron import KronLinear, kronify

assert "site-packages" in torchkron.__file__, torchkron.__file__
assert importlib.resources.files("torchkron").joinpath("py.typed").is_file(), "py.typed missing"
for optional in ("transformers", "peft", "pyfastkron", "triton", "matplotlib"):
    assert optional not in sys.modules, f"import torchkron imported {optional}"

layer = KronLinear(784, 625)
y = layer(torch.randn(32, 784))
assert y.shape == (32, 625)
net = torch.nn.Sequential(torch.nn.Linear(784, 625), torch.nn.ReLU(), torch.nn.Linear(625, 10))
net, report = kronify(net, target=["0"], rank=4)
assert isinstance(net[0], KronLinear), report
w = sum(torch.kron(a, b) for a, b in zip(*net[0].factors))  # rank 4: a sum of 4 products
x = torch.randn(5, 784)
assert torch.allclose(net[0](x), x @ w.T + net[0].bias, atol=1e-4)
print(f"check_wheel: torchkron {torchkron.__version__} from {torchkron.__file__}: example ran")
PY
"$work/venv/bin/torchkron" --help > /dev/null
echo "check_wheel: the torchkron command runs"

"""The Triton impl (torchkron.functional.impls.triton): the fused two-factor kernels
against the float64 torch.kron reference.

Without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here
before the kernels are first built), so sizes stay tiny. With CUDA they run compiled on
the GPU, the half-precision case at a tensor-core size.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from tests.reference import random_factors, reference_weight

HAS_TRITON = importlib.util.find_spec("triton") is not None
ON_CUDA = torch.cuda.is_available()
if HAS_TRITON and not ON_CUDA:
    # Normally done by conftest.py: it must precede the first import of triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torchkron.functional.impls import triton as _triton  # noqa: E402
from torchkron.functional.impls.triton import (  # noqa: E402
    is_available,
    kernel_unsupported_reason,
    kron_linear_triton,
)

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")


def _kernels_runnable() -> str | None:
    """Why the kernels cannot run in this process, or None."""
    if not HAS_TRITON:
        return "needs triton (pip install triton)"
    if ON_CUDA:
        return None
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA and TRITON_INTERPRET is not 1"
    import triton.language.standard

    if type(triton.language.standard.zeros).__name__ != "InterpretedFunction":
        return "triton was imported before TRITON_INTERPRET=1 was set (see conftest.py)"
    return None


needs_kernels = pytest.mark.skipif(_kernels_runnable() is not None, reason=str(_kernels_runnable()))


def _reference(x: torch.Tensor, factors: list[torch.Tensor], bias: torch.Tensor | None):
    y = x @ reference_weight(factors).T
    return y if bias is None else y + bias


def _case(shapes, rank, lead, *, bias=True, dtype=torch.float64, seed=0):
    """float64 leaves on the CPU (for the reference) and their copies for the kernels."""
    factors = random_factors(shapes, rank, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    n_in = shapes[0][1] * shapes[1][1]
    n_out = shapes[0][0] * shapes[1][0]
    x = torch.randn(*lead, n_in, generator=g, dtype=torch.float64)
    b = torch.randn(n_out, generator=g, dtype=torch.float64) if bias else None
    ref = [t.requires_grad_() for t in [x, *factors, *([b] if bias else [])]]
    dev = [t.detach().to(DEVICE, dtype).requires_grad_() for t in ref]
    return ref, dev


def _run(tensors, with_bias):
    x, a, b = tensors[:3]
    return kron_linear_triton(x, [a, b], tensors[3] if with_bias else None)


# (o1, n1), (o2, n2), rank, leading dims: covering both contraction orders, ranks 1-3,
# padding (sizes not multiples of 16), several tiles per dimension (> 64) and 3-D input.
CASES = [
    ([(3, 4), (5, 6)], 1, (3,)),  # transposed order chosen
    ([(5, 2), (3, 7)], 2, (4,)),  # direct order
    ([(4, 4), (4, 4)], 3, (2, 3)),  # tie, leading dims
    ([(2, 66), (70, 3)], 2, (2,)),  # two tiles along n1 and o2
    ([(17, 1), (1, 19)], 1, (5,)),  # unit sizes
]


@needs_kernels
@pytest.mark.parametrize(("shapes", "rank", "lead"), CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_reference_forward_and_all_grads(shapes, rank, lead, with_bias):
    ref, dev = _case(shapes, rank, lead, bias=with_bias)
    y = _run(dev, with_bias)
    y_ref = _reference(ref[0], ref[1:3], ref[3] if with_bias else None)
    assert y.shape == y_ref.shape
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.cpu(), y_ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    got = torch.autograd.grad(y, dev, grad.to(DEVICE))
    want = torch.autograd.grad(y_ref, ref, grad)
    names = ["input", "first factor", "second factor", "bias"]
    for name, g_got, g_want in zip(names, got, want, strict=False):
        torch.testing.assert_close(g_got.cpu(), g_want, rtol=1e-10, atol=1e-10, msg=name)


@needs_kernels
def test_float32_matches_reference():
    ref, dev = _case([(6, 5), (4, 7)], 2, (9,), dtype=torch.float32)
    y = _run(dev, True)
    assert y.dtype == torch.float32
    y_ref = _reference(ref[0], ref[1:3], ref[3])
    torch.testing.assert_close(y.cpu().double(), y_ref, rtol=1e-4, atol=1e-4)
    grad = torch.ones_like(y_ref)
    got = torch.autograd.grad(y, dev, grad.to(DEVICE, torch.float32))
    want = torch.autograd.grad(y_ref, ref, grad)
    for g_got, g_want in zip(got, want, strict=True):
        assert g_got.dtype == torch.float32
        torch.testing.assert_close(g_got.cpu().double(), g_want, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_grads_only_where_required():
    ref, dev = _case([(3, 4), (5, 6)], 2, (3,))
    x, a, b, bias = dev
    x.requires_grad_(False)
    y = kron_linear_triton(x, [a, b], bias)
    y.sum().backward()
    assert x.grad is None
    want = torch.autograd.grad(_reference(*[ref[0].detach()], ref[1:3], ref[3]).sum(), ref[1:])
    for t, g_want in zip([a, b, bias], want, strict=True):
        torch.testing.assert_close(t.grad.cpu(), g_want, rtol=1e-10, atol=1e-10)


@needs_kernels
def test_empty_batch():
    _, (x, a, b, bias) = _case([(3, 4), (5, 6)], 2, (0,))
    y = kron_linear_triton(x, [a, b], bias)
    assert y.shape == (0, 15)
    y.sum().backward()
    assert x.grad.shape == (0, 24)
    assert torch.count_nonzero(a.grad) == 0
    assert torch.count_nonzero(bias.grad) == 0


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    # On the GPU at a real size (tensor cores); in the interpreter tiny.
    shapes, lead = ([(64, 64), (64, 64)], (300,)) if ON_CUDA else ([(5, 6), (7, 3)], (4,))
    ref, dev = _case(shapes, 2, lead, dtype=dtype)
    y = _run(dev, True)
    assert y.dtype == dtype
    y_ref = _reference(ref[0], ref[1:3], ref[3])
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3  # relative to the largest entry
    err = float((y.detach().double().cpu() - y_ref.detach()).abs().max())
    assert err < tol * float(y_ref.detach().abs().max())
    got = torch.autograd.grad(y, dev, torch.ones_like(y))
    want = torch.autograd.grad(y_ref, ref, torch.ones_like(y_ref))
    for g_got, g_want in zip(got, want, strict=True):
        assert g_got.dtype == dtype
        err = float((g_got.double().cpu() - g_want).abs().max())
        assert err < tol * float(g_want.abs().max())


def test_kernels_compile_for_sm90_without_spills():
    # The interpreter runs no compiler: this catches what only Triton's compiler rejects
    # (it once did: a name typed int32 in one branch and int64 in another) and register
    # spills. Needs the ptxas in the triton wheel, not a GPU.
    if not HAS_TRITON:
        pytest.skip("needs triton")
    code = (
        "import json, torch\n"
        "from benchmarks.gpu_compile_check import compile_case\n"
        "rows = compile_case(((32, 32), (32, 32)), 2, torch.bfloat16)\n"
        "print(json.dumps(rows))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0 and "ptxas" in out.stderr:
        pytest.skip(f"no CUDA toolchain in this triton: {out.stderr[-200:]}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["kernel"] for r in rows] == ["forward_kernel", "backward_kernel"]
    for r in rows:
        assert r["REG"] <= 255
        assert r.get("STACK", 0) == 0, r


# ---- what needs no kernel -------------------------------------------------------------


def test_torchkron_imports_and_runs_without_triton():
    # sys.modules["triton"] = None makes every "import triton" fail, as if not installed:
    # so torchkron (and its Triton impl) never import the kernel module on import.
    # (torch._dynamo, which torchkron.functional loads, imports triton by itself when it
    # is installed; that is torch's doing.)
    code = (
        "import sys; sys.modules['triton'] = None; "
        "import torch, torchkron, torchkron.functional.impls.triton as t; "
        "a, b = torch.randn(1, 2, 3), torch.randn(1, 4, 5); "
        "y = torchkron.functional.kron_linear(torch.randn(2, 15), [a, b]); "
        "print(t.is_available(), y.shape)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False torch.Size([2, 8])"


def test_is_available_follows_triton_cuda_and_interpreter(monkeypatch):
    monkeypatch.setattr(_triton, "_triton_importable", lambda: False)
    assert is_available() is False
    monkeypatch.setattr(_triton, "_triton_importable", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert is_available() is True
    monkeypatch.delenv("TRITON_INTERPRET")
    assert is_available() is torch.cuda.is_available()


def test_not_two_factors_names_the_fallback():
    x = torch.randn(2, 24, device=DEVICE)
    three = [torch.randn(1, 2, n, device=DEVICE) for n in (2, 3, 4)]
    expected = (
        "kron_linear_triton: got 3 factor(s), but the Triton kernels handle exactly 2; "
        "use impl='bmm' (or 'auto') instead for any other number."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        kron_linear_triton(x, three)
    one = [torch.randn(1, 3, 24, device=DEVICE)]
    with pytest.raises(ValueError, match="got 1 factor"):
        kron_linear_triton(x, one)


def test_mixed_and_integer_dtypes_are_rejected():
    a, b = torch.randn(1, 2, 3), torch.randn(1, 4, 5)
    x = torch.randn(2, 15, dtype=torch.float64)
    assert kernel_unsupported_reason(x, [a, b]) == (
        "the input, factors and bias have different dtypes (float32, float64); cast them "
        "to one dtype, or use impl='bmm' (or 'auto') instead"
    )
    ints = [torch.ones(1, 2, 3, dtype=torch.int64), torch.ones(1, 4, 5, dtype=torch.int64)]
    assert kernel_unsupported_reason(torch.ones(2, 15, dtype=torch.int64), ints) == (
        "dtype int64 is not supported (float16, bfloat16, float32 and float64 are); "
        "use impl='bmm' (or 'auto') instead"
    )


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a, b = torch.randn(1, 2, 3), torch.randn(1, 4, 5)
    expected = (
        "kron_linear_triton: the tensors are on cpu, but the Triton kernels need CUDA "
        "tensors (or TRITON_INTERPRET=1 for the CPU interpreter); use impl='bmm' (or "
        "'auto') instead."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        kron_linear_triton(torch.randn(2, 15), [a, b])


def test_shape_errors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors pass the device check
    a, b = torch.randn(1, 2, 3, device=DEVICE), torch.randn(1, 4, 5, device=DEVICE)
    expected = (
        "kron_linear_triton: the input has shape (2, 14), but its last dimension must be "
        "in_features=15 (3 x 5); reshape it to (*, 15)."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        kron_linear_triton(torch.randn(2, 14, device=DEVICE), [a, b])
    expected = "kron_linear_triton: bias has shape (7,), but it must be (8,) to match out_features."
    with pytest.raises(ValueError, match=re.escape(expected)):
        kron_linear_triton(torch.randn(2, 15, device=DEVICE), [a, b], torch.zeros(7, device=DEVICE))
    with pytest.raises(ValueError, match="leading"):
        kron_linear_triton(torch.randn(2, 15), [a, torch.randn(2, 4, 5)])


def test_triton_missing_is_a_runtime_error(monkeypatch):
    monkeypatch.setattr(_triton, "_triton_importable", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    a, b = torch.randn(1, 2, 3), torch.randn(1, 4, 5)
    expected = (
        "kron_linear_triton: triton is not installed; pip install triton (or pip install -e "
        "'.[triton]' in a clone of the torchkron repository) or "
        "use impl='bmm' (or 'auto') instead."
    )
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        kron_linear_triton(torch.randn(2, 15), [a, b])


def test_block_sizes_are_powers_of_two_within_bounds():
    assert [_triton._block(n) for n in (1, 16, 17, 25, 64, 65, 4096)] == [
        16,
        16,
        32,
        32,
        64,
        64,
        64,
    ]


def test_gpu_check_dry_run_passes_on_the_cpu(tmp_path, capsys):
    # The correctness part of benchmarks/gpu.sh in its CPU mode: every implementation it
    # checks on the CPU must pass (kron_linear(impl="triton") takes CUDA tensors only and
    # is left to the GPU run; the kernels themselves run in the interpreter).
    from benchmarks import gpu_check

    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "BAD" not in out
    assert " 0 failed" in out

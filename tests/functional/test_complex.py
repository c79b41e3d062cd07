"""Complex dtypes (issue 17): kron_linear refuses them, naming the dtype and the way out
(the hand-written backwards transpose where a complex gradient needs the conjugate
transpose); kron_weight, differentiated by autograd, is correct for them."""

from __future__ import annotations

import pytest
import torch
from tests.reference import reference_weight

from torchkron.functional import IMPLS, kron_linear, kron_weight

WAY_OUT = (
    r"Build the weight with torchkron.functional.kron_weight\(factors\), which is "
    r"differentiable for complex factors, and apply it with "
    r"torch.nn.functional.linear\(x, weight, bias\)"
)


def _complex_factors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, 3, 2, generator=g, dtype=torch.complex128),
        torch.randn(2, 2, 3, generator=g, dtype=torch.complex128),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", ["factors", "input", "bias"])
def test_kron_linear_refuses_complex_naming_dtype_and_fix(impl, which):
    factors = [torch.randn(2, 3, 2, dtype=torch.float64), torch.randn(2, 2, 3, dtype=torch.float64)]
    x = torch.randn(4, 6, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    if which == "factors":
        factors = _complex_factors()
        what = "factor 0 torch.complex128, factor 1 torch.complex128"
    elif which == "input":
        x = x.to(torch.complex64)
        what = "input torch.complex64"
    else:
        bias = bias.to(torch.complex128)
        what = "bias torch.complex128"
    msg = rf"^kron_linear: complex dtypes are not supported \(got {what}\)\. {WAY_OUT}"
    with pytest.raises(TypeError, match=msg):
        kron_linear(x, factors, bias, impl=impl)


def test_kron_weight_is_correct_and_differentiable_for_complex_factors():
    factors = [f.requires_grad_() for f in _complex_factors(1)]
    torch.testing.assert_close(
        kron_weight(factors), reference_weight([f.detach() for f in factors])
    )
    assert torch.autograd.gradcheck(lambda *fs: kron_weight(list(fs)), tuple(factors))


def test_the_way_out_named_in_the_message_has_correct_gradients():
    factors = [f.requires_grad_() for f in _complex_factors(2)]
    x = torch.randn(4, 6, dtype=torch.complex128, requires_grad=True)
    bias = torch.randn(6, dtype=torch.complex128, requires_grad=True)

    def f(x, b, *fs):
        return torch.nn.functional.linear(x, kron_weight(list(fs)), b)

    assert torch.autograd.gradcheck(f, (x, bias, *factors))

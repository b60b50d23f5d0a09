"""Kernels against exact expected values, and one suite every registered method passes."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from raymerge.methods import REGISTRY, get_method
from raymerge.methods.linear import linear
from raymerge.methods.task_arithmetic import task_arithmetic

A = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
B = torch.tensor([[3.0, 2.0], [-1.0, 0.5]])
BASE = torch.tensor([[1.0, 1.0], [1.0, 1.0]])


def test_linear_exact():
    out = linear(None, [A, B], [{"weight": 1.0}, {"weight": 3.0}], {"normalize": True})
    assert_close(out, torch.tensor([[2.5, 1.0], [0.0, 0.5]]), rtol=0, atol=0)
    out = linear(None, [A, B], [{"weight": 1.0}, {"weight": 3.0}], {"normalize": False})
    assert_close(out, torch.tensor([[10.0, 4.0], [0.0, 2.0]]), rtol=0, atol=0)


def test_linear_zero_weight_sum_is_an_error():
    with pytest.raises(ValueError, match="sum to zero"):
        linear(None, [A, B], [{"weight": 1.0}, {"weight": -1.0}], {"normalize": True})


def test_task_arithmetic_exact():
    # deltas: A-1 = [[0,-3],[2,-0.5]], B-1 = [[2,1],[-2,-0.5]]
    p = [{"weight": 1.0}, {"weight": 0.5}]
    out = task_arithmetic(BASE, [A, B], p, {"normalize": False, "lambda": 1.0})
    assert_close(out, torch.tensor([[2.0, -1.5], [2.0, 0.25]]), rtol=0, atol=0)
    out = task_arithmetic(BASE, [A, B], p, {"normalize": True, "lambda": 2.0})
    # mixed = [[1,-2.5],[1,-0.75]] / 1.5 * 2 + 1
    assert_close(out, torch.tensor([[1 + 4 / 3, 1 - 10 / 3], [1 + 4 / 3, 0.0]]), rtol=0, atol=1e-6)


def test_task_arithmetic_does_not_modify_inputs():
    a, b, base = A.clone(), B.clone(), BASE.clone()
    task_arithmetic(
        base, [a, b], [{"weight": 1.0}, {"weight": 1.0}], {"normalize": True, "lambda": 3.0}
    )
    assert torch.equal(a, A) and torch.equal(b, B) and torch.equal(base, BASE)


def _params(method, n):
    wide = {p.name: p.default for p in method.params if p.scope == "global"}
    per = [
        {p.name: (1.0 if p.required else p.default) for p in method.params if p.scope == "model"}
        for _ in range(n)
    ]
    return wide, per


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("shape", [(), (0, 4), (5,), (3, 7)])
def test_every_method_merging_a_model_with_itself_returns_it(name, shape):
    method = get_method(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    base = x.clone() if method.base == "required" else None
    wide, per = _params(method, 3)
    out = method.kernel(base, [x.clone(), x.clone(), x.clone()], per, wide)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_close(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_has_a_paper_and_typed_params(name):
    m = get_method(name)
    assert m.reference.startswith("https://arxiv.org/")
    assert m.kernel.__doc__
    assert all(p.type in (float, int, bool) for p in m.params)


def test_unknown_method_names_the_options():
    with pytest.raises(KeyError, match="valid: linear, task_arithmetic"):
        get_method("nope")


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_kernels_match_on_gpu(name):
    method = get_method(name)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(64, 33, generator=g) for _ in range(3)]
    base = torch.randn(64, 33, generator=g)
    wide, per = _params(method, 3)
    cpu = method.kernel(base, xs, per, wide)
    gpu = method.kernel(base.cuda(), [x.cuda() for x in xs], per, wide)
    assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)

"""Kernels against exact expected values, chunk invariance, and one suite every method passes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from raymerge.methods import REGISTRY, get_method, merge_piece, merge_whole, piece_stats
from raymerge.methods.base import PieceInfo, combine, stat_unit
from raymerge.methods.rng import UniformStream


def defaults(name: str, n: int, **over) -> tuple[dict, list[dict]]:
    """Fully resolved parameters: defaults, required ones set to 1, then overrides."""
    m = get_method(name)
    wide = {p.name: p.default for p in m.params if p.scope == "global"}
    per = [
        {p.name: (1.0 if p.required else p.default) for p in m.params if p.scope == "model"}
        for _ in range(n)
    ]
    if m.param("t"):
        wide["t"] = 0.5
    for k, v in over.items():
        if k in wide or (m.param(k) and m.param(k).scope == "global"):
            wide[k] = v
        else:
            for d in per:
                d[k] = v
    return wide, per


def run(name, base, xs, per, wide, **kw):
    return merge_whole(name, base, xs, per, wide, **kw)


def test_linear_exact():
    a = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    b = torch.tensor([[3.0, 2.0], [-1.0, 0.5]])
    wide, per = defaults("linear", 2)
    per[1]["weight"] = 3.0
    assert_close(
        run("linear", None, [a, b], per, wide),
        torch.tensor([[2.5, 1.0], [0.0, 0.5]]),
        rtol=0,
        atol=0,
    )
    wide["normalize"] = False
    assert_close(
        run("linear", None, [a, b], per, wide),
        torch.tensor([[10.0, 4.0], [0.0, 2.0]]),
        rtol=0,
        atol=0,
    )


def test_task_arithmetic_exact():
    base = torch.ones(2, 2)
    a = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    b = torch.tensor([[3.0, 2.0], [-1.0, 0.5]])
    wide, per = defaults("task_arithmetic", 2)
    per[1]["weight"] = 0.5
    assert_close(
        run("task_arithmetic", base, [a, b], per, wide),
        torch.tensor([[2.0, -1.5], [2.0, 0.25]]),
        rtol=0,
        atol=0,
    )
    wide.update(normalize=True, **{"lambda": 2.0})
    expected = torch.tensor([[1 + 4 / 3, 1 - 10 / 3], [1 + 4 / 3, 0.0]])
    assert_close(run("task_arithmetic", base, [a, b], per, wide), expected, rtol=0, atol=1e-6)


def test_ties_exact():
    base = torch.zeros(4)
    x1 = torch.tensor([1.0, -2.0, 3.0, 0.5])
    x2 = torch.tensor([-1.0, 1.0, 2.0, -4.0])
    wide, per = defaults("ties", 2, density=0.5)
    # trimmed: [0,-2,3,0], [0,0,2,-4]; elected [+,-,+,-]; disjoint mean
    assert_close(
        run("ties", base, [x1, x2], per, wide), torch.tensor([0.0, -2.0, 2.5, -4.0]), rtol=0, atol=0
    )
    wide["normalize"] = False
    assert_close(
        run("ties", base, [x1, x2], per, wide), torch.tensor([0.0, -2.0, 5.0, -4.0]), rtol=0, atol=0
    )


def test_ties_keeps_all_ties_at_the_cutoff():
    base = torch.zeros(6)
    x = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5, -3.0])
    wide, per = defaults("ties", 1, density=0.5)  # k = 3; cutoff |2| ties three ways: 4 kept
    assert_close(
        run("ties", base, [x], per, wide),
        torch.tensor([0.0, 2.0, 2.0, 2.0, 0.0, -3.0]),
        rtol=0,
        atol=0,
    )


def test_breadcrumbs_exact():
    base = torch.zeros(10)
    x = torch.arange(1.0, 11.0)
    wide, per = defaults("breadcrumbs", 1, density=0.5, gamma=0.2)  # keep ascending ranks [3, 8)
    expected = torch.tensor([0, 0, 0, 4, 5, 6, 7, 8, 0, 0], dtype=torch.float32)
    assert_close(run("breadcrumbs", base, [x], per, wide), expected, rtol=0, atol=0)


def test_slerp_exact():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # orthogonal as whole tensors
    wide, per = defaults("slerp", 1, t=0.5)
    s = math.sqrt(0.5)
    expected = torch.tensor([[s, 2 * s], [0.0, 0.0]])
    assert_close(run("slerp", a, [b], per, wide), expected, rtol=0, atol=1e-6)
    c = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # collinear with a: plain lerp
    expected = torch.tensor([[1.5, 0.0], [0.0, 0.0]])
    assert_close(run("slerp", a, [c], per, wide), expected, rtol=0, atol=1e-6)
    wide["t"] = 0.0
    assert_close(run("slerp", a, [b], per, wide), a, rtol=0, atol=1e-7)
    wide["t"] = 1.0
    assert_close(run("slerp", a, [b], per, wide), b, rtol=0, atol=1e-6)


def test_model_stock_exact():
    base = torch.zeros(2)
    wide, per = defaults("model_stock", 2)
    out = run("model_stock", base, [torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])], per, wide)
    cos = 2 / (2 * math.sqrt(2))
    t = 2 * cos / (1 + cos)
    assert_close(out, torch.tensor([1.5 * t, 0.5 * t]), rtol=0, atol=1e-6)
    out = run("model_stock", base, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], per, wide)
    assert_close(out, base, rtol=0, atol=0)  # orthogonal offsets: t = 0


def test_passthrough_scale():
    x = torch.tensor([1.0, -2.0])
    wide, per = defaults("passthrough", 1)
    assert_close(run("passthrough", None, [x], per, wide), x, rtol=0, atol=0)
    per[0]["scale"] = 0.5
    assert_close(run("passthrough", None, [x], per, wide), x * 0.5, rtol=0, atol=0)


def test_dare_properties():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 7, generator=g)
    xs = [base + torch.randn(300, 7, generator=g) for _ in range(2)]
    wide, per = defaults("dare_linear", 2, density=1.0)
    ta_wide, ta_per = defaults("task_arithmetic", 2)
    assert_close(
        run("dare_linear", base, xs, per, wide),
        run("task_arithmetic", base, xs, ta_per, ta_wide),
        rtol=0,
        atol=0,
    )
    wide, per = defaults("dare_ties", 2, density=0.3)
    one = run("dare_ties", base, xs, per, wide, tensor_name="w", seed=1)
    assert torch.equal(one, run("dare_ties", base, xs, per, wide, tensor_name="w", seed=1))
    assert not torch.equal(one, run("dare_ties", base, xs, per, wide, tensor_name="w", seed=2))
    assert not torch.equal(one, run("dare_ties", base, xs, per, wide, tensor_name="v", seed=1))
    wide["rescale"] = False
    kept = (
        (
            run("dare_linear", base, xs[:1], per[:1], {**wide, "normalize": False}, tensor_name="w")
            != base
        )
        .float()
        .mean()
    )
    assert 0.25 < kept < 0.35  # Bernoulli(density) keep rate


def test_ties_density_1_one_model_is_base_plus_delta():
    base = torch.randn(5, 3)
    x = torch.randn(5, 3)
    wide, per = defaults("ties", 1)
    assert_close(run("ties", base, [x], per, wide), x, rtol=0, atol=1e-6)


def test_uniform_stream_is_chunk_invariant():
    whole = UniformStream(PieceInfo.whole("w", (3, 1_500_000), 7), 2).take(0, 4_500_000)
    chunk = PieceInfo("w", (3, 1_500_000), 1_000_000, 3_100_000, 7)
    part = UniformStream(chunk, 2).take(0, 2_100_000)
    assert torch.equal(whole[1_000_000:3_100_000], part)
    assert not torch.equal(part, UniformStream(chunk, 3).take(0, 2_100_000))  # another stream
    # on demand, block range by block range (straddling RNG blocks, going back, empty): the same
    stream = UniformStream(chunk, 2)
    for a, b in [(0, 5), (5, 1_048_000), (1_048_000, 1_100_000), (7, 9), (2_100_000, 2_100_000)]:
        assert torch.equal(stream.take(a, b), part[a:b])


CHUNK_CASES = [
    ("linear", {}),
    ("task_arithmetic", {"lambda": 0.7}),
    ("ties", {"density": 0.3}),
    ("ties", {"density": 0.4, "rescale": True}),
    ("dare_ties", {"density": 0.3}),
    ("dare_linear", {"density": 0.6}),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.1}),
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.1}),
    ("della", {"density": 0.5, "epsilon": 0.2}),
    ("della_linear", {"density": 0.5, "epsilon": 0.2}),
    ("slerp", {"t": 0.3}),
    ("model_stock", {}),
    ("model_stock", {"filter_wise": True}),
    ("passthrough", {}),
    ("nuslerp", {}),
    ("nuslerp", {"nuslerp_flatten": False}),
    ("nuslerp", {"no_base": True}),
    ("nuslerp", {"nuslerp_flatten": False, "no_base": True}),
    ("multislerp", {}),
    ("multislerp", {"normalize_weights": False, "no_base": True}),
    ("karcher", {}),
    ("karcher", {"max_iter": 3, "tol": 0.0}),
    ("sce", {}),
    ("sce", {"select_topk": 0.3}),
    ("arcee_fusion", {}),
    ("nearswap", {"t": 0.05}),
    ("ram", {"epsilon": 0.05}),
    ("ramplus_tl", {"epsilon": 0.05, "r": 0.5, "alpha": 1.0}),
]
# methods that merge each tensor (with these parameters) whole: never chunked
WHOLE_CASES = [
    ("nuslerp", {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ("tsv_m", {}),
    ("iso_c", {}),
    ("iso_cts", {"common_space_fraction": 0.5}),
]


def case_setup(name, over, n_default=3):
    """(method, number of merged models, method-wide and per-model params, whether the kernel
    gets a base) for a case; ``no_base``: an optional base left out."""
    over = dict(over)
    no_base = over.pop("no_base", False)
    method = get_method(name)
    lo, hi = method.inputs
    n = lo if hi == lo else n_default
    wide, per = defaults(name, n, **over)
    with_base = method.base == "required" or (method.base == "optional" and not no_base)
    return method, n, wide, per, with_base


@pytest.mark.parametrize(
    ("name", "over"), CHUNK_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CHUNK_CASES)]
)
@pytest.mark.parametrize("shape", [(37, 11), (70_001,), (12, 20_000)])
def test_chunked_equals_whole_exactly(name, over, shape):
    """Statistics reduced over chunks + per-chunk kernels == the whole-tensor kernel, bit for bit.
    (12, 20000): rows longer than a single torch reduction sums (``base.SUM_BLOCK``)."""
    method, n, wide, per, with_base = case_setup(name, over)
    g = torch.Generator().manual_seed(11)
    base = torch.randn(shape, generator=g)
    xs = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]
    b = base if with_base else None
    whole = merge_whole(name, b, xs, per, wide, tensor_name="w", seed=3)
    if method.row_local(wide) and len(shape) < 2:
        pytest.skip("the planner never splits a rank-1 tensor for a row-local method")
    numel = base.numel()
    unit = stat_unit(shape)
    bounds = list(range(0, numel, unit * 5)) + [numel]
    infos = [PieceInfo("w", shape, a, z, 3) for a, z in zip(bounds, bounds[1:])]

    def piece(t, info):
        flat = t.reshape(-1)[info.elem_start : info.elem_end]
        return flat.reshape(-1, *shape[1:]) if len(shape) >= 2 else flat

    stats = []
    for _ in method.stat_rounds(wide, per):
        partials = [
            piece_stats(
                method,
                info,
                None if b is None else piece(b, info),
                [piece(x, info) for x in xs],
                per,
                wide,
                stats,
            )
            for info in infos
        ]
        stats.append(combine(partials))
    parts = [
        merge_piece(
            method,
            info,
            None if b is None else piece(b, info),
            [piece(x, info) for x in xs],
            per,
            wide,
            stats if stats else ([] if not method.stat_rounds(wide, per) else None),
        )
        for info in infos
    ]
    assert torch.equal(torch.cat([p.reshape(-1) for p in parts]), whole.reshape(-1))


ALL_CASES = CHUNK_CASES + WHOLE_CASES


@pytest.mark.parametrize(
    ("name", "over"), ALL_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_CASES)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_and_statistics_never_write_their_inputs(name, over, dtype):
    """Jobs hand kernels tensors that alias shared memory: pages of the input files (private
    mappings) or chunks kept in Ray's object store for the next rounds and the merge. A write
    into an input would corrupt what the next reader sees, so none may happen."""
    method, n, wide, per, with_base = case_setup(name, over)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(40, 9, generator=g).to(dtype)
    xs = [(base.float() + 0.1 * torch.randn(40, 9, generator=g)).to(dtype) for _ in range(n)]
    b = base if with_base else None
    before = [t.clone() for t in ([base] if b is not None else []) + xs]
    merge_piece(method, PieceInfo("w", (40, 9), 0, 360, 3), b, xs, per, wide)  # whole, rounds
    # chunked (rounds over all chunks, then kernels), unless the method never is
    chunks = [] if method.is_whole(wide) else [(0, 90), (90, 270), (270, 360)]

    def cut(t, a, z):
        return t.reshape(-1)[a:z].reshape(-1, 9)

    stats: list = []
    for _ in method.stat_rounds(wide, per) if chunks else ():
        stats.append(
            combine(
                [
                    piece_stats(
                        method,
                        PieceInfo("w", (40, 9), a, z, 3),
                        None if b is None else cut(b, a, z),
                        [cut(x, a, z) for x in xs],
                        per,
                        wide,
                        stats,
                        torch.float32,
                    )
                    for a, z in chunks
                ]
            )
        )
    for a, z in chunks:
        info = PieceInfo("w", (40, 9), a, z, 3)
        b_c = None if b is None else cut(b, a, z)
        merge_piece(method, info, b_c, [cut(x, a, z) for x in xs], per, wide, stats,
                    math_dtype=torch.float32)  # fmt: skip
    after = ([base] if b is not None else []) + xs
    assert all(torch.equal(x, y) for x, y in zip(before, after))


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("shape", [(), (0, 4), (4, 0), (5,), (3, 7)])
def test_every_method_merging_a_model_with_itself_returns_it(name, shape):
    """Holds for every registered method (up to rounding: spherical means rescale by norms):
    identical inputs have no task vectors, no angles and no variance. Methods with an optional
    base are checked with and without one."""
    method = get_method(name)
    lo, hi = method.inputs
    n = lo if hi == lo else 3
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    wide, per = defaults(name, n, density=0.5) if method.param("density") else defaults(name, n)
    if method.param("epsilon"):
        for p in per:
            p["epsilon"] = 0.1
    bases = {"required": [x.clone()], "optional": [x.clone(), None]}.get(method.base, [None])
    for base in bases:
        out = merge_whole(name, base, [x.clone() for _ in range(n)], per, wide)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert_close(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_has_a_paper_and_typed_params(name):
    m = get_method(name)
    assert m.reference.startswith("https://")
    assert m.kernel.__doc__
    assert all(p.type in (float, int, bool) or (p.type is str and p.choices) for p in m.params)


def test_unknown_method_names_the_options():
    with pytest.raises(KeyError, match="valid: linear, task_arithmetic, ties"):
        get_method("nope")


@pytest.mark.gpu
@pytest.mark.parametrize(("name", "over"), ALL_CASES)
def test_kernels_match_on_gpu(name, over):
    method, n, wide, per, with_base = case_setup(name, over)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, 33, generator=g)
    xs = [base + torch.randn(64, 33, generator=g) for _ in range(n)]
    b = base if with_base else None
    cpu = merge_whole(name, b, xs, per, wide)
    gpu = merge_whole(name, None if b is None else b.cuda(), [x.cuda() for x in xs], per, wide)
    assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)

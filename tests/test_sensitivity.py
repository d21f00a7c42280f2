"""Sensitivity ops (docs/methods.md §Sensitivities): compiled kernels against the literal reference (float64,
tiny layers) and the vectorized reference (float32, larger random layers); streaming,
errors, op checks."""

import pytest
import torch

from lostprune.ops import (
    channel_sensitivity,
    channel_sensitivity_literal,
    channel_sensitivity_reference,
    weight_sensitivity,
    weight_sensitivity_literal,
    weight_sensitivity_reference,
)

# (name, x shape, weight shape, conv kwargs): every feature the kernels must handle.
TINY = [
    ("first_layer_negative_inputs", (2, 3, 6, 5), (4, 3, 3, 3), dict(padding=1)),
    ("batch_1", (1, 2, 5, 5), (3, 2, 3, 3), dict(padding=1)),
    ("groups", (2, 4, 5, 6), (6, 2, 3, 3), dict(padding=1, groups=2)),
    ("depthwise", (2, 3, 5, 5), (3, 1, 3, 3), dict(padding=1, groups=3)),
    ("dilation", (2, 2, 7, 7), (3, 2, 3, 3), dict(padding=2, dilation=2)),
    ("stride_2", (2, 2, 7, 6), (3, 2, 3, 3), dict(stride=2, padding=1)),
    (
        "non_square_everything",
        (2, 4, 9, 7),
        (6, 2, 3, 2),
        dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    ),
    ("pointwise", (3, 5, 4, 4), (2, 5, 1, 1), {}),
    ("no_padding", (2, 2, 5, 4), (3, 2, 2, 2), {}),
    ("same_even_kernel", (2, 2, 5, 5), (3, 2, 2, 4), dict(padding="same")),
    ("linear_2d", (5, 7), (4, 7), {}),
    ("linear_3d_tokens", (2, 3, 7), (4, 7), {}),
]


# Shapes that reach every path of the CPU kernels: tiles packed with several data points (few
# positions per point), partial sums over several tiles of one data point, channel bounds
# tested a vector of channels at a time plus the tail, pointwise and grouped, batch lanes.
KERNEL_PATHS = [
    ("packed_points_7x7", (6, 8, 7, 7), (5, 8, 3, 3), dict(padding=1)),
    ("packed_tiny_maps", (9, 4, 3, 3), (6, 4, 3, 3), dict(padding=1)),
    ("partial_sums", (2, 3, 20, 19), (4, 3, 3, 3), dict(padding=1)),
    # one data point in one tile wider than the usual ones (AVX-512: 14 x 14 float32 maps take
    # 13 vectors, 10 x 10 float64 maps 13), instead of partial sums over two narrower tiles
    ("wide_point_tile_14x14", (2, 5, 14, 14), (4, 5, 3, 3), dict(padding=1)),
    ("wide_point_tile_10x10_strided", (3, 3, 20, 19), (4, 3, 3, 3), dict(stride=2, padding=1)),
    ("many_channels", (3, 37, 5, 4), (6, 37, 3, 3), dict(padding=1)),
    ("many_channels_pointwise", (4, 41, 3, 3), (7, 41, 1, 1), {}),
    ("many_channels_groups", (3, 40, 4, 4), (8, 20, 3, 3), dict(padding=1, groups=2)),
    # one position: every channel bound equals its value, so a bound that skips too much shows
    ("linear_one_sample", (1, 40), (30, 40), {}),
    ("one_position", (2, 24, 1, 1), (20, 24, 1, 1), {}),
    # the weight mean's batch-lane path (small maps, at least 3/4 of the lanes filled with data
    # points, at every vector width up to 16 float32 lanes): whole vectors of points, a partly
    # filled last vector with strides, dilation, padding and groups, depthwise
    ("batch_lanes_7x7", (32, 6, 7, 7), (5, 6, 3, 3), dict(padding=1)),
    (
        "batch_lanes_partial_strided",
        (13, 4, 6, 5),
        (6, 2, 3, 2),
        dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    ),
    ("batch_lanes_depthwise", (16, 3, 7, 7), (3, 1, 3, 3), dict(padding=1, groups=3)),
]


def _inputs(x_shape, w_shape, dtype=torch.float64, seed=0, relu=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=gen, dtype=dtype)
    w = torch.randn(w_shape, generator=gen, dtype=dtype)
    return (x.relu() if relu else x), w


@pytest.mark.parametrize("name,x_shape,w_shape,conv", TINY, ids=[c[0] for c in TINY])
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_weight_kernel_matches_literal(compiled, name, x_shape, w_shape, conv, reduce):
    x, w = _inputs(x_shape, w_shape)
    out = weight_sensitivity(x, w, reduce=reduce, **conv)
    expect = weight_sensitivity_literal(x, w, reduce=reduce, **conv)
    assert out.shape == w.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-12)
    assert (out >= 0).all() and (out <= 1 + 1e-12).all()


@pytest.mark.parametrize("name,x_shape,w_shape,conv", TINY, ids=[c[0] for c in TINY])
def test_channel_kernel_matches_literal(compiled, name, x_shape, w_shape, conv):
    x, w = _inputs(x_shape, w_shape)
    out = channel_sensitivity(x, w, **conv)
    expect = channel_sensitivity_literal(x, w, **conv)
    assert out.shape == (x.shape[-1] if w.dim() == 2 else x.shape[1],)
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,x_shape,w_shape,conv", KERNEL_PATHS, ids=[c[0] for c in KERNEL_PATHS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_paths_match_literal(compiled, name, x_shape, w_shape, conv, dtype):
    """Against the float64 literal oracle; float32 within float32 rounding."""
    x, w = _inputs(x_shape, w_shape, seed=2)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    for reduce in ("mean", "max"):
        out = weight_sensitivity(x.to(dtype), w.to(dtype), reduce=reduce, **conv)
        torch.testing.assert_close(
            out.double(), weight_sensitivity_literal(x, w, reduce=reduce, **conv), **tol
        )
    out = channel_sensitivity(x.to(dtype), w.to(dtype), **conv)
    torch.testing.assert_close(out.double(), channel_sensitivity_literal(x, w, **conv), **tol)


def test_channel_bounds_start_from_running(compiled):
    """Entries that cannot beat `running` are skipped, and the result is still exact."""
    x, w = _inputs((3, 37, 5, 4), (6, 37, 3, 3), seed=3)
    exact = channel_sensitivity_literal(x, w, padding=1)
    above = torch.full_like(exact, 2.0)  # scores are at most 1: every entry is skipped
    assert torch.equal(channel_sensitivity(x, w, padding=1, running=above), above)
    half = exact.clone()
    half[::2] /= 2  # below the result for some channels, equal for the others
    torch.testing.assert_close(
        channel_sensitivity(x, w, padding=1, running=half), exact, rtol=1e-10, atol=1e-12
    )


def _own_output(x, w, conv):
    """The layer's output as torch computes it (no bias)."""
    if w.dim() == 2:
        return torch.nn.functional.linear(x, w)
    return torch.nn.functional.conv2d(x, w, None, **conv)


def _with_output_cases():
    """Every op and reduction on inputs where some images take the sign split and some do not,
    with pruned weights and one unit without any."""
    for name, x_shape, w_shape, conv in TINY + KERNEL_PATHS:
        x, w = _inputs(x_shape, w_shape, seed=3)
        x[::2] = x[::2].relu()  # even images: one data point; odd ones: two (x = a+ - a-)
        w[w.abs() < 0.3] = 0
        w[0] = 0
        for fn, kw in ((weight_sensitivity, {"reduce": "mean"}), (weight_sensitivity, {"reduce": "max"})):
            yield name, fn, kw, x, w, conv
        yield name, channel_sensitivity, {}, x, w, conv


@pytest.mark.parametrize("fallback", [False, True], ids=["kernel", "reference"])
def test_with_output_gives_the_layers_own_output(compiled, monkeypatch, fallback):
    """with_output: the layer's output (z+ - z- of the data points, summed with their signs) is
    conv(x, w) in float64, in the caller's layout; the scores are those without it, bit for bit."""
    import lostprune.ops.sensitivity as module

    if fallback:  # the PyTorch path a build without kernels takes
        monkeypatch.setattr(module, "use_kernel", lambda *args: False)
    for name, fn, kw, x, w, conv in _with_output_cases():
        scores, y = fn(x, w, **conv, **kw, with_output=True)
        want = _own_output(x, w, conv)
        assert y.shape == want.shape and y.dtype == torch.float64 and y.is_contiguous(), name
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12, msg=name)
        assert torch.equal(scores, fn(x, w, **conv, **kw)), name
    x, w = _inputs((3, 6, 6), (4, 3, 3, 3), seed=5)  # an unbatched image
    scores, y = weight_sensitivity(x, w, padding=1, with_output=True)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["weight", "channel"])
def test_with_output_in_parallel(compiled, kind):
    """A layer large enough for the threads: both data points of a sign-split image may land in
    different work items, which add into the same outputs."""
    x, w = _inputs((6, 16, 18, 18), (24, 16, 3, 3), seed=7)
    x[1].relu_()
    fn = weight_sensitivity if kind == "weight" else channel_sensitivity
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        for reduce in ("mean", "max") if kind == "weight" else (None,):
            kw = {"reduce": reduce} if reduce else {}
            _, y = fn(x, w, padding=1, **kw, with_output=True)
            torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-12, atol=1e-12)
            again = fn(x, w, padding=1, **kw, with_output=True)[1]
            assert torch.equal(y, again)  # two terms per output: the same in any order
    finally:
        torch.set_num_threads(threads)


def test_with_output_float32_and_running(compiled):
    x, w = _inputs((5, 16, 7, 7), (24, 16, 3, 3), dtype=torch.float32, seed=6)
    running = torch.rand(16)
    scores, y = channel_sensitivity(x, w, padding=1, running=running, with_output=True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)
    assert torch.equal(scores, channel_sensitivity(x, w, padding=1, running=running))


def test_with_output_float32_wide_point_tiles(compiled):
    """A float32 weight mean over 14 x 14 maps (one tile of 13 vectors per data point with
    16 lanes), some images sign-split: the output and the scores against float64 references."""
    x, w = _inputs((4, 8, 14, 14), (7, 8, 3, 3), seed=7)
    x[::2] = x[::2].relu()
    w[w.abs() < 0.3] = 0
    scores, y = weight_sensitivity(x.float(), w.float(), reduce="mean", padding=1, with_output=True)
    torch.testing.assert_close(y.double(), torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        scores.double(), weight_sensitivity_literal(x, w, reduce="mean", padding=1), rtol=1e-4, atol=1e-6
    )


_OTHER_ISA_PROBE = """
import json, torch
from lostprune.ops import _build, channel_sensitivity, channel_sensitivity_literal, weight_sensitivity, \\
    weight_sensitivity_literal
from tests.test_sensitivity import KERNEL_PATHS, TINY, _inputs, _own_output, _with_output_cases
worst = 0.0
for name, x_shape, w_shape, conv in TINY + KERNEL_PATHS:
    x, w = _inputs(x_shape, w_shape, seed=4)
    for reduce in ("mean", "max"):
        diff = weight_sensitivity(x, w, reduce=reduce, **conv) - weight_sensitivity_literal(x, w, reduce=reduce, **conv)
        worst = max(worst, diff.abs().max().item())
    worst = max(worst, (channel_sensitivity(x, w, **conv) - channel_sensitivity_literal(x, w, **conv)).abs().max().item())
output = 0.0  # the layer's output the ops return (this ISA's tiles place positions differently)
for name, fn, kw, x, w, conv in _with_output_cases():
    y = fn(x, w, **conv, **kw, with_output=True)[1]
    output = max(output, (y - _own_output(x, w, conv)).abs().max().item())
print(json.dumps({"isa": _build.vector_isa(), "worst": worst, "output": output}))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not {"avx2", "fma"} <= __import__("lostprune.ops._toolchain", fromlist=["x"]).cpu_flags(),
    reason="needs an AVX2 CPU",
)
def test_avx2_build_matches_literal():
    """The AVX2 code path (LOSTPRUNE_MARCH=x86-64-v3: 32-byte vectors, 16 registers) in float64."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "LOSTPRUNE_MARCH": "x86-64-v3",
        "LOSTPRUNE_CUDA": "0",
        "LOSTPRUNE_BACKEND": "compiled",
        "PYTHONPATH": str(root),
    }
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_ISA_PROBE],
        check=False,
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["isa"] == "AVX2"
    assert result["worst"] < 1e-12
    assert result["output"] < 1e-12


@pytest.mark.parametrize("name,x_shape,w_shape,conv", TINY[:7], ids=[c[0] for c in TINY[:7]])
def test_vectorized_reference_matches_literal(name, x_shape, w_shape, conv):
    x, w = _inputs(x_shape, w_shape, seed=1)
    for reduce in ("mean", "max"):
        torch.testing.assert_close(
            weight_sensitivity_reference(x, w, reduce=reduce, **conv),
            weight_sensitivity_literal(x, w, reduce=reduce, **conv),
            rtol=1e-10,
            atol=1e-12,
        )
    torch.testing.assert_close(
        channel_sensitivity_reference(x, w, **conv),
        channel_sensitivity_literal(x, w, **conv),
        rtol=1e-10,
        atol=1e-12,
    )


def test_all_zero_input_scores_zero(compiled):
    """z = 0 everywhere: g = 0 by the eps rule, never NaN."""
    x, w = torch.zeros(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    for reduce in ("mean", "max"):
        assert torch.equal(weight_sensitivity(x, w, padding=1, reduce=reduce), torch.zeros_like(w))
    assert torch.equal(channel_sensitivity(x, w, padding=1), torch.zeros(3))


def test_eps_rule_and_sign_split_by_hand(compiled):
    """One output, two edges: w = (2, -1), inputs a = (1, 3) at one position."""
    x = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    # z+ = 2 * 1, z- = 1 * 3: each edge is the only one of its sign, g = 1.
    torch.testing.assert_close(weight_sensitivity(x, w), torch.ones(1, 2, dtype=torch.float64))
    # Negated input: a+ = 0 (z = 0, g = 0), a- = (1, 3) gives the same as above.
    torch.testing.assert_close(weight_sensitivity(-x, w), torch.ones(1, 2, dtype=torch.float64))
    # Tiny z below float32 eps: g = 0, even though the ratio is 1.
    tiny = torch.tensor([[1e-9, 0.0]], dtype=torch.float64)
    assert torch.equal(weight_sensitivity(tiny, w), torch.zeros(1, 2, dtype=torch.float64))


def test_pruned_weights_score_zero_and_do_not_count(compiled):
    x, w = _inputs((3, 4, 6, 6), (5, 4, 3, 3), relu=True)
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    pruned = w * mask
    out = weight_sensitivity(x, pruned, padding=1)
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    torch.testing.assert_close(out, weight_sensitivity_literal(x, pruned, padding=1))


def _random_layer(gen):
    """A random conv configuration with odd sizes."""
    groups = int(torch.randint(1, 4, (1,), generator=gen))
    cin_g, cout_g = (int(v) for v in torch.randint(1, 12, (2,), generator=gen))
    kh, kw = (int(v) for v in torch.randint(1, 6, (2,), generator=gen))
    stride = tuple(int(v) for v in torch.randint(1, 4, (2,), generator=gen))
    dilation = tuple(int(v) for v in torch.randint(1, 3, (2,), generator=gen))
    padding = tuple(int(v) for v in torch.randint(0, 3, (2,), generator=gen))
    h = int(torch.randint(dilation[0] * (kh - 1) + 1, 40, (1,), generator=gen))
    w = int(torch.randint(dilation[1] * (kw - 1) + 1, 40, (1,), generator=gen))
    batch = int(torch.randint(1, 6, (1,), generator=gen))
    x = torch.randn(batch, groups * cin_g, h, w, generator=gen)
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = x.relu()  # after a ReLU: no sign split
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = x.transpose(2, 3).contiguous().transpose(2, 3)  # channels-last-like strides
    weight = torch.randn(groups * cout_g, cin_g, kh, kw, generator=gen)
    return x, weight, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("seed", range(12))
def test_kernels_match_vectorized_reference_on_random_layers(compiled, seed):
    x, w, conv = _random_layer(torch.Generator().manual_seed(seed))
    for reduce in ("mean", "max"):
        torch.testing.assert_close(
            weight_sensitivity(x, w, reduce=reduce, **conv),
            weight_sensitivity_reference(x, w, reduce=reduce, **conv),
            rtol=2e-5,
            atol=1e-6,
        )
    torch.testing.assert_close(
        channel_sensitivity(x, w, **conv), channel_sensitivity_reference(x, w, **conv), rtol=2e-5, atol=1e-6
    )


def test_larger_layer_matches_reference(compiled):
    """Wide enough for several tiles per image and many threads' worth of work."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 24, 37, 29, generator=gen).relu()
    w = torch.randn(40, 24, 3, 3, generator=gen)
    for reduce in ("mean", "max"):
        torch.testing.assert_close(
            weight_sensitivity(x, w, padding=1, reduce=reduce),
            weight_sensitivity_reference(x, w, padding=1, reduce=reduce),
            rtol=2e-5,
            atol=1e-6,
        )
    torch.testing.assert_close(
        channel_sensitivity(x, w, padding=1),
        channel_sensitivity_reference(x, w, padding=1),
        rtol=2e-5,
        atol=1e-6,
    )


def test_running_max_streams_batches(compiled):
    x, w = _inputs((6, 3, 8, 8), (5, 3, 3, 3), dtype=torch.float32)
    for reduce in ("mean", "max"):
        whole = weight_sensitivity(x, w, padding=1, reduce=reduce)
        running = weight_sensitivity(x[:2], w, padding=1, reduce=reduce)
        running = weight_sensitivity(x[2:], w, padding=1, reduce=reduce, running=running)
        torch.testing.assert_close(running, whole)
    running = channel_sensitivity(x[:5], w, padding=1)
    torch.testing.assert_close(
        channel_sensitivity(x[5:], w, padding=1, running=running), channel_sensitivity(x, w, padding=1)
    )


def test_channel_is_the_max_of_weight_max_over_filters_and_offsets(compiled):
    x, w = _inputs((3, 4, 7, 7), (6, 4, 3, 3), dtype=torch.float32)
    per_weight = weight_sensitivity(x, w, padding=1, reduce="max")
    torch.testing.assert_close(channel_sensitivity(x, w, padding=1), per_weight.amax(dim=(0, 2, 3)))


def test_half_precision_computes_in_float32(compiled):
    x, w = _inputs((2, 3, 6, 6), (4, 3, 3, 3), dtype=torch.float32)
    out = weight_sensitivity(x.to(torch.bfloat16), w.to(torch.bfloat16), padding=1)
    assert out.dtype == torch.float32
    # the float64 oracle on the bfloat16 values: what float32 arithmetic on them must give
    xb, wb = x.to(torch.bfloat16).double(), w.to(torch.bfloat16).double()
    torch.testing.assert_close(
        out, weight_sensitivity_literal(xb, wb, padding=1).float(), rtol=2e-5, atol=1e-6
    )
    channels = channel_sensitivity(x.to(torch.bfloat16), w.to(torch.bfloat16), padding=1)
    assert channels.dtype == torch.float32
    torch.testing.assert_close(
        channels, channel_sensitivity_literal(xb, wb, padding=1).float(), rtol=2e-5, atol=1e-6
    )


def test_weight_requiring_grad_is_fine(compiled):
    x, w = _inputs((2, 3, 5, 5), (4, 3, 3, 3), dtype=torch.float32)
    out = weight_sensitivity(x, w.requires_grad_(), padding=1)
    assert not out.requires_grad


def test_meta_tensors_give_shapes(compiled):
    x, w = torch.empty(2, 6, 9, 9, device="meta"), torch.empty(4, 3, 3, 3, device="meta")
    assert weight_sensitivity(x, w, groups=2).shape == (4, 3, 3, 3)
    assert channel_sensitivity(x, w, groups=2).shape == (6,)
    scores, y = weight_sensitivity(x, w, groups=2, stride=2, padding=1, with_output=True)
    assert scores.shape == (4, 3, 3, 3) and y.shape == (2, 4, 5, 5)
    scores, y = channel_sensitivity(x, w, groups=2, with_output=True)
    assert scores.shape == (6,) and y.shape == (2, 4, 7, 7)


def test_opcheck(compiled):
    x, w = _inputs((2, 4, 6, 5), (6, 2, 3, 2), dtype=torch.float32)
    running = torch.rand(6, 2, 3, 2)
    for args in [
        (x, w, [2, 1], [1, 0], [1, 2], 2, "mean", None),
        (x, w, [1, 1], [1, 1], [1, 1], 2, "max", running),
    ]:
        torch.library.opcheck(torch.ops.lostprune.weight_sensitivity.default, args)
    torch.library.opcheck(
        torch.ops.lostprune.channel_sensitivity.default, (x, w, [1, 1], [0, 0], [1, 1], 2, None)
    )
    torch.library.opcheck(
        torch.ops.lostprune.channel_sensitivity.default, (x, w, [1, 1], [0, 0], [1, 1], 2, torch.rand(4))
    )
    for args in [  # with the layer's output
        (x, w, [2, 1], [1, 0], [1, 2], 2, "mean", None, True),
        (x, w, [1, 1], [1, 1], [1, 1], 2, "max", running, True),
    ]:
        torch.library.opcheck(torch.ops.lostprune.weight_sensitivity.default, args)
    torch.library.opcheck(
        torch.ops.lostprune.channel_sensitivity.default, (x, w, [1, 2], [1, 0], [1, 1], 2, None, True)
    )


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "fn",
    [
        weight_sensitivity,
        weight_sensitivity_reference,
        weight_sensitivity_literal,
        channel_sensitivity,
        channel_sensitivity_reference,
        channel_sensitivity_literal,
    ],
)
def test_nan_or_inf_input_is_an_error(compiled, fn):
    x, w = _inputs((2, 2, 4, 4), (3, 2, 3, 3), dtype=torch.float32)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises((ValueError, RuntimeError), match="NaN or inf"):
        fn(x, w, padding=1)
    x[1, 0, 2, 2] = float("inf")
    with pytest.raises((ValueError, RuntimeError), match="NaN or inf"):
        fn(x, w, padding=1)
    x[1, 0, 2, 2] = 0
    w[0, 0, 0, 0] = float("nan")
    with pytest.raises((ValueError, RuntimeError), match=r"weight .*NaN or inf"):
        fn(x, w, padding=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_scan_finds_every_position(compiled, dtype):
    """The kernel scans each image in vectors plus a scalar tail: a NaN / inf anywhere is an
    error naming its sample, and a negative entry anywhere (but not -0.0) adds a data point."""
    for numel in (5, 37, 64, 131):
        for at in (0, numel // 2, numel - 1):
            for bad in (float("nan"), float("inf"), -float("inf")):
                x = torch.rand(3, 1, 1, numel, dtype=dtype)
                x[2, 0, 0, at] = bad
                with pytest.raises(RuntimeError, match="NaN or inf in sample 2"):
                    weight_sensitivity(x, torch.ones(2, 1, 1, 1, dtype=dtype))
            x = torch.rand(2, 1, 1, numel, dtype=dtype)
            x[0, 0, 0, at] = -0.7  # missed, the output there would be 0
            x[1, 0, 0, at] = -0.0
            w = torch.randn(3, 1, 1, 1, dtype=dtype)
            torch.testing.assert_close(
                weight_sensitivity(x, w, reduce="max"), weight_sensitivity_literal(x, w, reduce="max")
            )
            _, y = weight_sensitivity(x, w, with_output=True)
            torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w))


@pytest.mark.parametrize("fn", [weight_sensitivity, weight_sensitivity_reference])
def test_argument_errors_name_the_argument(compiled, fn):
    x, w = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3)
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'max'"):
        fn(x, w, groups=2, reduce="sum")
    with pytest.raises(ValueError, match="expects 2 input channels, but x has 4"):
        fn(x, w)
    with pytest.raises(ValueError, match="groups=4 must divide the output channels"):
        fn(x, torch.randn(6, 1, 3, 3), groups=4)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fn(x, w, groups=2, stride=0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        fn(x, w, groups=2, padding=-1)
    with pytest.raises(ValueError, match="running must have shape"):
        fn(x, w, groups=2, running=torch.zeros(3))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        fn(x, torch.randn(6, 2, 3))
    with pytest.raises(ValueError, match="linear layer with weight"):
        fn(torch.randn(2, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="takes no stride"):
        fn(torch.randn(2, 4), torch.randn(3, 4), stride=2)
    with pytest.raises(TypeError, match="floating point"):
        fn(x.long(), w, groups=2)
    with pytest.raises(ValueError, match="on meta but weight is on cpu"):
        fn(x.to("meta"), w, groups=2)


def test_kernel_that_does_not_fit_is_an_error(compiled):
    with pytest.raises(RuntimeError, match="does not fit the padded input"):
        weight_sensitivity(torch.randn(1, 2, 3, 3), torch.randn(2, 2, 5, 5))


def test_op_level_checks(compiled):
    """The C++ op validates on its own (for callers of torch.ops.lostprune directly)."""
    op = torch.ops.lostprune.weight_sensitivity
    x, w = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3)
    with pytest.raises(RuntimeError, match="reduce must be 'mean' or 'max'"):
        op(x, w, [1, 1], [1, 1], [1, 1], 2, "median", None)
    with pytest.raises(RuntimeError, match="x must have 4 dimensions"):
        op(x[0], w, [1, 1], [1, 1], [1, 1], 2, "mean", None)
    with pytest.raises(RuntimeError, match="weight has dtype Double but x has dtype Float"):
        op(x, w.double(), [1, 1], [1, 1], [1, 1], 2, "mean", None)
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        op(x.half(), w.half(), [1, 1], [1, 1], [1, 1], 2, "mean", None)
    with pytest.raises(RuntimeError, match=r"running must have shape \[6, 2, 3, 3\]"):
        op(x, w, [1, 1], [1, 1], [1, 1], 2, "mean", torch.zeros(6))
    with pytest.raises(RuntimeError, match="dilation must be >= 1"):
        op(x, w, [1, 1], [1, 1], [0, 1], 2, "mean", None)


# --------------------------------------------------------------------------- TF32 scoping
def _tf32_state():
    b = torch.backends
    return (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())


@pytest.mark.parametrize("user", ["defaults", "legacy_flags", "matmul_high"])
def test_exact_fp32_switches_tf32_off_and_restores_the_users_setting(user):
    from lostprune.ops._precision import _PER_OP, exact_fp32

    b = torch.backends
    before = _tf32_state()
    try:
        if user == "legacy_flags":  # set through the older API: still readable afterwards
            b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = False, True
        elif user == "matmul_high":
            torch.set_float32_matmul_precision("high")
        setting = _tf32_state()
        with exact_fp32():
            if _PER_OP:
                assert b.cudnn.conv.fp32_precision == "ieee" and b.cuda.matmul.fp32_precision == "ieee"
            else:
                assert not b.cudnn.allow_tf32 and not b.cuda.matmul.allow_tf32
        assert _tf32_state() == setting
        with pytest.raises(RuntimeError, match="inside"), exact_fp32():
            raise RuntimeError("inside")
        assert _tf32_state() == setting  # restored on error too
        with exact_fp32(enabled=False):  # CPU tensors: nothing changes
            assert _tf32_state() == setting
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = before[0], before[1]
        torch.set_float32_matmul_precision(before[2])
    assert _tf32_state() == before


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("seed", range(6))
def test_cuda_kernels_match_reference(compiled, seed):
    x, w, conv = _random_layer(torch.Generator().manual_seed(100 + seed))
    x, w = x.cuda(), w.cuda()
    for reduce in ("mean", "max"):
        out = weight_sensitivity(x, w, reduce=reduce, **conv)
        assert out.is_cuda
        torch.testing.assert_close(
            out.cpu(),
            weight_sensitivity_reference(x.cpu(), w.cpu(), reduce=reduce, **conv),
            rtol=1e-4,
            atol=1e-6,
        )
    torch.testing.assert_close(
        channel_sensitivity(x, w, **conv).cpu(),
        channel_sensitivity_reference(x.cpu(), w.cpu(), **conv),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.cuda
@pytest.mark.parametrize("name,x_shape,w_shape,conv", TINY, ids=[c[0] for c in TINY])
def test_cuda_float64_matches_literal(compiled, name, x_shape, w_shape, conv):
    x, w = _inputs(x_shape, w_shape)
    for reduce in ("mean", "max"):
        torch.testing.assert_close(
            weight_sensitivity(x.cuda(), w.cuda(), reduce=reduce, **conv).cpu(),
            weight_sensitivity_literal(x, w, reduce=reduce, **conv),
        )
    torch.testing.assert_close(
        channel_sensitivity(x.cuda(), w.cuda(), **conv).cpu(), channel_sensitivity_literal(x, w, **conv)
    )


@pytest.mark.cuda
def test_cuda_ops_ignore_tf32_and_keep_the_users_setting(compiled):
    """cuDNN may use TF32 for float32 convolutions (the default on Ampere and later): the ops
    switch it off for their z and leave the user's setting as it was."""
    x, w, conv = _random_layer(torch.Generator().manual_seed(7))
    want = weight_sensitivity_reference(x.double(), w.double(), **conv)
    want_channel = channel_sensitivity_reference(x.double(), w.double(), **conv)
    before = _tf32_state()
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        setting = _tf32_state()
        for fn in (weight_sensitivity, weight_sensitivity_reference):
            torch.testing.assert_close(
                fn(x.cuda(), w.cuda(), **conv).double().cpu(), want, rtol=1e-4, atol=1e-6
            )
            assert _tf32_state() == setting
        for fn in (channel_sensitivity, channel_sensitivity_reference):
            torch.testing.assert_close(
                fn(x.cuda(), w.cuda(), **conv).double().cpu(), want_channel, rtol=1e-4, atol=1e-6
            )
            assert _tf32_state() == setting
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[0], before[1]
        torch.set_float32_matmul_precision(before[2])


@pytest.mark.cuda
def test_cuda_opcheck_and_errors(compiled):
    x, w = torch.randn(2, 4, 6, 5, device="cuda"), torch.randn(6, 2, 3, 2, device="cuda")
    torch.library.opcheck(
        torch.ops.lostprune.weight_sensitivity.default, (x, w, [2, 1], [1, 0], [1, 2], 2, "mean", None)
    )
    torch.library.opcheck(
        torch.ops.lostprune.channel_sensitivity.default, (x, w, [1, 1], [0, 0], [1, 1], 2, None)
    )
    torch.library.opcheck(
        torch.ops.lostprune.weight_sensitivity.default, (x, w, [2, 1], [1, 0], [1, 2], 2, "mean", None, True)
    )
    _, y = channel_sensitivity(x.double(), w.double(), groups=2, with_output=True)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x.double(), w.double(), groups=2))
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or inf"):
        weight_sensitivity(x, w, groups=2)
    with pytest.raises(ValueError, match="on cuda:0 but weight is on cpu"):
        weight_sensitivity(x, w.cpu(), groups=2)

"""The shortcuts that make prune → slice fast give the same answers as the long way round:
trace reuse (and its invalidation), counts without masks, liveness by max/min reductions,
structured masks that remember their factors, positions read off the trace."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import lostprune
import lostprune.core.shapes as shapes_module
import lostprune.models as models
import lostprune.ops.nonzero as nonzero_module
from lostprune.core.accounting import compute_stats, output_positions
from lostprune.core.layers import prunable_layers
from lostprune.core.masks import (
    apply_masks,
    count_nonzero,
    current_masks,
    live_structure,
    mask_factors,
    nonzero_rows_and_columns,
    ones_view,
    outer_mask,
    single_value,
)
from lostprune.core.shapes import shape_only_forward, shape_rules
from lostprune.structure import build_graph, tracing
from lostprune.structure import graph as graph_module
from lostprune.structure.groups import sort_order as _sort_order
from lostprune.structure.trace_cache import structure_key


def cifar_resnet():
    torch.manual_seed(0)
    return models.create("resnet20").eval()


X = torch.randn(1, 3, 32, 32)


@pytest.fixture
def traces(monkeypatch):
    """Counts fx traces (from a cold cache)."""
    graph_module._TRACES.clear()
    calls = []
    trace = tracing.trace_graph
    monkeypatch.setattr(tracing, "trace_graph", lambda *a, **k: calls.append(1) or trace(*a, **k))
    return calls


# ----------------------------------------------------------------------------- trace reuse
def test_prune_then_slice_traces_once(traces):
    result = lostprune.prune(cifar_resnet(), "ft", 0.5, example_input=X, progress=False)
    sliced = lostprune.slice_model(result.model, X)
    assert len(traces) == 1
    # the slice of a reused trace equals the slice of a fresh one
    graph_module._TRACES.clear()
    fresh = lostprune.slice_model(result.model, X)
    assert len(traces) == 2
    with torch.no_grad():
        assert torch.equal(sliced(X), fresh(X))


def test_trace_is_not_reused_once_the_structure_changes(traces):
    model = cifar_resnet()
    build_graph(model, X)
    build_graph(model, X)
    assert len(traces) == 1
    model.conv1.stride = (2, 2)  # a plain attribute the trace depends on
    changed = build_graph(model, X)
    assert len(traces) == 2
    shape = (
        changed.fx_graph.find_nodes(op="call_module", target="layer1.0.conv1")[0].meta["tensor_meta"].shape
    )
    assert tuple(shape) == (1, 16, 16, 16)
    model.layer1[0].conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False).eval()  # same structure: same key
    build_graph(model, X)
    assert len(traces) == 2
    model.train()  # training mode may change the trace
    build_graph(model, X)
    build_graph(model, torch.randn(1, 3, 16, 16))  # another input shape
    assert len(traces) == 4


def test_edited_groups_do_not_leak_into_the_cache():
    model = cifar_resnet()
    first = build_graph(model, X)
    before = repr(first.groups)
    for group in first.groups:
        group.prunable = False
        group.members.clear()
    assert repr(build_graph(model, X).groups) == before


def test_structure_key_normalizes_pruning_and_refuses_what_it_cannot_summarize():
    model = cifar_resnet()
    pruned = lostprune.prune(model, "ft", 0.3, example_input=X, progress=False).model
    # pruning's weight_orig / weight_mask / masked weight count as the plain weight
    assert structure_key(pruned, X) == structure_key(model, X)
    hooked = copy.deepcopy(model)
    hooked.layer1.register_forward_hook(lambda m, i, o: o)
    assert structure_key(hooked, X) is None  # a hook may change what is traced
    odd = copy.deepcopy(model)
    odd.layer2.config = object()
    assert structure_key(odd, X) is None


def test_another_instance_of_an_architecture_reuses_its_trace(traces):
    build_graph(cifar_resnet(), X)
    other = models.create("resnet20").eval()  # other weights, same structure
    assert repr(build_graph(other, X).groups) == repr(build_graph(cifar_resnet(), X).groups)
    assert len(traces) == 1


def test_model_without_key_is_traced_every_time(traces):
    model = cifar_resnet()
    model.layer1.register_forward_hook(lambda m, i, o: o)
    build_graph(model, X)
    build_graph(model, X)
    assert len(traces) == 2


def test_cache_does_not_keep_models_alive():
    import gc
    import weakref

    model = cifar_resnet()
    build_graph(model, X)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


# ----------------------------------------------------------------------------- channel groups
def test_sort_order_matches_lexsort_and_falls_back_for_wide_keys():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 50, 500), rng.integers(0, 7, 500)
    c = np.arange(500)
    assert np.array_equal(_sort_order(a, b, c), np.lexsort((c, b, a)))
    wide = rng.integers(0, 2**40, 500)
    assert np.array_equal(_sort_order(wide, wide, c), np.lexsort((c, wide, wide)))


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "densenet121"])
def test_output_positions_from_the_trace_equal_the_hooks(name):
    model = models.create(name).eval()
    x = torch.randn(1, 3, 32, 32)
    assert build_graph(model, x).output_positions() == output_positions(model, x)


def test_output_positions_refuse_when_the_trace_may_miss_calls():
    model = models.create("resnet20")  # training mode: the forward may branch on it
    assert build_graph(model, X).output_positions() is None
    inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    wrapped = nn.Sequential(inner, nn.Flatten(), nn.LazyLinear(2)).eval()
    wrapped(torch.randn(1, 3, 8, 8))
    opaque = build_graph(wrapped, torch.randn(1, 3, 8, 8), leaf_modules=["0"])  # its conv runs inside a leaf
    assert opaque.output_positions() is None


# ----------------------------------------------------------------------------- counting
def reference_rows_and_columns(t):
    nonzero = t != 0
    return nonzero.flatten(1).any(1), nonzero.transpose(0, 1).flatten(1).any(1)


@pytest.mark.parametrize("path", ["kernel", "cheap", "costly"])  # compiled; |x| then max; max and min
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (7, 4), (6, 2, 1, 1), (3, 1, 5, 5)])
def test_nonzero_rows_and_columns(shape, path, compiled, monkeypatch):
    if path != "kernel":
        monkeypatch.setattr(nonzero_module, "kernels_loaded", lambda: False)
    if path == "costly":
        monkeypatch.setattr(nonzero_module, "CHEAP_TEMPORARY_NUMEL", 0)
    torch.manual_seed(0)
    t = torch.randn(shape)
    t[1] = 0
    t[:, 0] = 0
    t[2].view(-1)[0] = -0.0 if t[2].numel() > 1 else t[2].view(-1)[0]
    t[-1].view(-1)[-1] = float("nan")  # NaN is nonzero, as with != 0
    t[0] = 0
    t[0].view(-1)[-1] = -1.0  # a row (and a column) whose only nonzero is negative: max is 0, min is not
    for tensor in (t, -t, t.bool(), t.double(), t.to(torch.int32)):
        rows, cols = nonzero_rows_and_columns(tensor)
        expected_rows, expected_cols = reference_rows_and_columns(tensor)
        assert torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols)
    rows, cols = nonzero_rows_and_columns(torch.tensor([0.0, 2.0]))
    assert rows.tolist() == [False, True] and cols is None
    for dtype in (torch.int8, torch.uint8):  # |-128| overflows to -128 in int8: still nonzero
        tensor = torch.tensor([[0, 0, 0], [0, -128 if dtype == torch.int8 else 255, 0]], dtype=dtype)
        assert [x.tolist() for x in nonzero_rows_and_columns(tensor)] == [[False, True], [False, True, False]]


def _reference_live_structure(mask, groups):
    """Live rows, live input channels and surviving entries per (row, column) pair, plainly."""
    nonzero = mask != 0
    cout, cin_g = mask.shape[:2]
    pairs = nonzero.reshape(cout, cin_g, -1).sum(2).double()
    rows = pairs.sum(1) > 0
    cols = (pairs.view(groups, cout // groups, cin_g) > 0).any(1).reshape(-1)
    outer = bool(nonzero.all()) or (
        groups == 1
        and torch.equal(
            nonzero,
            (rows[:, None] & cols[None, :]).reshape(cout, cin_g, *[1] * (mask.dim() - 2)).expand_as(mask),
        )
    )
    return rows.numpy(), cols.numpy(), None if outer else pairs.numpy()


@pytest.mark.parametrize(
    "shape,groups", [((6, 5, 3, 3), 1), ((7, 4), 1), ((6, 2, 3, 1), 3), ((5, 1, 1, 1), 1)]
)
def test_live_structure_is_the_plain_count(shape, groups):
    torch.manual_seed(1)
    like = torch.ones(shape, dtype=torch.float64)
    rows, cols = torch.rand(shape[0]) > 0.4, torch.rand(shape[1]) > 0.3
    structured = (
        rows.double().view(-1, *[1] * (len(shape) - 1)) * cols.double().view(1, -1, *[1] * (len(shape) - 2))
    ).expand(shape)
    sparse = (torch.rand(shape) > 0.6).double()
    candidates = [
        ones_view(like),
        ones_view(like) * 0,
        like.clone(),
        like * 0,
        structured.contiguous(),
        sparse,
    ]
    if groups == 1:
        candidates.append(outer_mask(rows, cols, like))
    for mask in candidates:
        got = live_structure(mask, groups)
        expected = _reference_live_structure(mask, groups)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
        assert (got[2] is None) == (expected[2] is None)
        if got[2] is not None:
            assert got[2].dtype == np.float64 and np.array_equal(got[2], expected[2])
    if shape == (6, 5, 3, 3):  # a scattered mask: counted per pair
        assert live_structure(sparse, groups)[2] is not None


def test_outer_mask_remembers_its_factors_until_changed():
    like = torch.ones(4, 3, 2, 2)
    rows, cols = torch.tensor([True, False, True, True]), torch.tensor([False, True, True])
    mask = outer_mask(rows, cols, like)
    assert torch.equal(
        mask, (rows[:, None, None, None] & cols[None, :, None, None]).expand(4, 3, 2, 2).float()
    )
    assert mask_factors(mask) is not None
    live_rows, live_cols = nonzero_rows_and_columns(mask)
    assert torch.equal(live_rows, rows) and torch.equal(live_cols, cols)
    assert count_nonzero(mask) == int(torch.count_nonzero(mask)) == 3 * 2 * 4
    mask[0, 0, 0, 0] = 1  # an in-place change: the factors no longer describe it
    assert mask_factors(mask) is None
    assert nonzero_rows_and_columns(mask)[1].tolist() == [True, True, True]
    assert count_nonzero(mask) == int(torch.count_nonzero(mask)) == 25
    for shape in [(5, 7), (6, 1, 3), (3, 4, 1, 1), (2, 3, 5, 5)]:  # 2-D and kernel sizes
        gen = torch.Generator().manual_seed(len(shape))
        r, c = torch.rand(shape[0], generator=gen) < 0.6, torch.rand(shape[1], generator=gen) < 0.6
        made = outer_mask(r, c, torch.empty(shape, dtype=torch.float64))
        assert mask_factors(made) is not None and count_nonzero(made) == int(torch.count_nonzero(made))


def test_ones_view_takes_no_memory_and_reads_like_ones():
    weight = torch.randn(8, 4, 3, 3)
    view = ones_view(weight)
    assert view.shape == weight.shape and view.stride() == (0, 0, 0, 0)
    assert single_value(view) == 1 and single_value(torch.ones(2, 2)) is None
    layers = {"conv": nn.Conv2d(4, 8, 3)}
    assert single_value(current_masks(layers, materialize=False)["conv"]) == 1
    assert current_masks(layers)["conv"].stride() != (0, 0, 0, 0)


@pytest.mark.parametrize("pre", [None, "wt", "ft"])
@pytest.mark.parametrize("coupled", ["per_layer", "sum"])
def test_stats_count_exactly_what_the_masks_remove(pre, coupled):
    model = cifar_resnet()
    if pre:
        model = lostprune.prune(model, pre, 0.3, example_input=X, progress=False).model.eval()
    result = lostprune.prune(model, "ft", 0.4, example_input=X, coupled=coupled, progress=False)
    zeros = sum(int((mask == 0).sum()) for mask in result.masks.values())
    assert result.stats.removed_params == zeros
    assert result.stats.achieved_ratio == pytest.approx(zeros / result.stats.prunable_params, rel=1e-12)
    layers = prunable_layers(result.model)
    by_masks = compute_stats(
        result.model, layers, {f"{n}.weight": m for n, m in result.masks.items()}, example_input=X
    )
    assert by_masks == dataclasses.replace(result.stats, method="", target_ratio=0.0)


def test_compute_stats_takes_masks_or_counts():
    model = cifar_resnet()
    layers = prunable_layers(model)
    with pytest.raises(TypeError, match=r"either removed= .* or kept="):
        compute_stats(model, layers)
    with pytest.raises(TypeError, match=r"either removed= .* or kept="):
        compute_stats(model, layers, {}, kept={})


# ----------------------------------------------------------------------------- masks
def test_masks_handed_out_never_change_when_pruning_further():
    result = lostprune.prune(cifar_resnet(), "ft", 0.3, example_input=X, progress=False)
    name = "layer1.0.conv1"
    module = result.model.get_submodule(name)
    assert module.weight_mask is result.masks[name]  # installed, not copied
    before = result.masks[name].clone()
    second = torch.zeros_like(before)
    apply_masks({name: module}, {name: second})
    assert torch.equal(result.masks[name], before)  # combined into a new buffer
    assert not module.weight_mask.any() and not module.weight_orig.any() and not module.weight.any()


def test_structured_mask_shares_the_zeroed_raw_weight():
    result = lostprune.prune(cifar_resnet(), "ft", 0.5, example_input=X, progress=False)
    module = result.model.get_submodule("layer2.0.conv1")
    assert mask_factors(module.weight_mask) is not None
    assert torch.equal(module.weight, module.weight_orig * module.weight_mask)
    assert module.weight.data_ptr() == module.weight_orig.data_ptr()
    with torch.no_grad():
        out = result.model(X)  # the pruning hook recomputes the masked weight as usual
    assert torch.isfinite(out).all() and torch.equal(module.weight, module.weight_orig * module.weight_mask)


def test_slicing_never_shares_storage_with_the_pruned_model():
    result = lostprune.prune(cifar_resnet(), "ft", 0.5, example_input=X, progress=False)
    sliced = lostprune.slice_model(result.model, X)
    theirs = {t.untyped_storage().data_ptr() for t in result.model.state_dict().values()}
    ours = {t.untyped_storage().data_ptr() for t in sliced.state_dict().values()}
    assert not theirs & ours


def test_raw_weight_changed_after_pruning_still_slices_exactly():
    """orig no longer zero outside the mask (an optimizer step without re-zeroing): slicing
    multiplies by the mask instead of sharing the raw weight."""
    result = lostprune.prune(
        models.randomize_norm_statistics(cifar_resnet()), "ft", 0.5, example_input=X, progress=False
    )
    with torch.no_grad():
        for module in prunable_layers(result.model).values():
            module.weight_orig.add_(0.01)
    masked = copy.deepcopy(result.model).eval()
    sliced = lostprune.slice_model(result.model, X).eval()
    with torch.no_grad():
        expected, got = masked(X), sliced(X)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


# ----------------------------------------------------------------------------- shapes
def test_shape_keeping_modules_skipped_on_meta_only_and_hooks_still_fire():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout())
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    shape_only_forward(model, torch.randn(2, 3, 8, 8))
    assert seen == [(2, 4, 6, 6)]
    assert "forward" not in model[1].__dict__  # restored
    with shape_rules(model):
        x = torch.randn(1, 4, 2, 2)
        assert model[1](x) is x
    assert not torch.equal(model.eval()[1](x), x)  # running statistics: not the identity


def _adaptive_cases():
    sizes = [1, 0, 3, None, (None,), (2, None), (None, None), [1, 2], (2,), (1, 2, 3), (None, 1, 2)]
    shapes = [(2, 3, 5, 6), (3, 5, 6), (2, 3, 0, 6), (2, 3, 5, 6, 4), (3, 7), (1, 1, 4, 4), (6,)]
    for pool_type in shapes_module.ADAPTIVE_POOLS:
        for size in sizes:
            for shape in shapes:
                for channels_last in (False, True):
                    if channels_last and len(shape) not in (4, 5):
                        continue
                    yield pool_type, size, shape, channels_last


def _outcome(fn, *args):
    try:
        out = fn(*args)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return None
    return tuple(out.shape), out.stride()


def test_adaptive_pool_rule_on_meta_is_the_real_module_or_torchs_meta_kernel(monkeypatch):
    """The meta pass's rule for adaptive pools (computing nothing) gives the real module's
    output shape and strides where it answers; every other case (ranks, output sizes, empty
    inputs, layouts that torch treats specially) goes to torch's own meta kernel, as before."""
    deferred = []
    for pool_type in shapes_module.ADAPTIVE_POOLS:
        original = pool_type.forward
        monkeypatch.setattr(
            pool_type, "forward", lambda self, x, original=original: deferred.append(1) or original(self, x)
        )
    answered = passed_on = 0
    for pool_type, size, shape, channels_last in _adaptive_cases():
        x = torch.randn(shape)
        if channels_last:
            x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
        pool = pool_type(size)
        real = _outcome(pool, x)
        meta = _outcome(type(pool).forward, pool, x.to("meta"))
        deferred.clear()
        with shape_rules(pool):
            ruled = _outcome(pool, x.to("meta"))
        assert "forward" not in pool.__dict__  # restored
        if deferred:
            assert ruled == meta, (pool, shape, channels_last)
            passed_on += 1
        else:  # the rule answered, without any meta kernel: as the real module
            assert real is not None and ruled == real, (pool, shape, channels_last, ruled, real)
            answered += 1
    assert answered > 30 and passed_on > 30  # both kinds of case were exercised


def _layer_cases():
    convs = [
        dict(in_channels=3, out_channels=4, kernel_size=3),
        dict(in_channels=6, out_channels=9, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), groups=3),
        dict(in_channels=5, out_channels=5, kernel_size=3, dilation=2, padding=2, groups=5, bias=False),
        dict(in_channels=4, out_channels=7, kernel_size=1, stride=3),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding="same"),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
        dict(in_channels=4, out_channels=2, kernel_size=5),  # larger than some inputs
    ]
    inputs = [
        (2, 3, 7, 9),
        (1, 6, 5, 4),
        (1, 5, 11, 8),
        (2, 4, 7, 7),
        (1, 4, 3, 2),
        (1, 4, 1, 1),
        (3, 4, 4),
        (0, 4, 6, 6),
    ]
    for kwargs in convs:
        for shape in inputs:
            for variant in ("plain", "channels_last", "float64"):
                yield nn.Conv2d(**kwargs), shape, variant
    for in_features, out_features, bias in ((5, 3, True), (4, 1, False), (1, 6, True)):
        for shape in ((2, 5), (5,), (3, 2, 4), (2, 1), (0, 4), (2, 3, 5)):
            for variant in ("plain", "float64", "transposed"):
                yield nn.Linear(in_features, out_features, bias=bias), shape, variant


def test_conv_and_linear_rules_on_meta_are_the_real_module_or_torchs_meta_kernel(monkeypatch):
    """The meta pass's rules for nn.Conv2d and nn.Linear give the real module's output shape
    and strides (and torch's meta kernel's) where they answer; every size torch rejects and
    every other padding mode, dtype or layout goes to the module itself."""
    deferred = []
    for layer_type in (nn.Conv2d, nn.Linear):
        original = layer_type.forward
        monkeypatch.setattr(
            layer_type, "forward", lambda self, x, original=original: deferred.append(1) or original(self, x)
        )
    answered = passed_on = 0
    answered_shapes = set()
    for layer, shape, variant in _layer_cases():
        x = torch.randn(shape)
        if variant == "channels_last" and x.dim() == 4:
            x = x.to(memory_format=torch.channels_last)
        elif variant == "float64":
            x = x.double()
        elif variant == "transposed" and x.dim() >= 2:
            x = x.transpose(0, 1).contiguous().transpose(0, 1)
        with torch.no_grad():
            real = _outcome(layer, x)
            with shapes_module.meta_parameters(layer):
                meta = _outcome(type(layer).forward, layer, x.to("meta"))
                deferred.clear()
                with shape_rules(layer):
                    ruled = _outcome(layer, x.to("meta"))
        assert "forward" not in layer.__dict__ and not layer.weight.is_meta  # restored
        if deferred:
            assert ruled == meta, (layer, shape, variant)
            passed_on += 1
        else:
            assert real is not None and ruled == real == meta, (layer, shape, variant, ruled, real, meta)
            answered += 1
            answered_shapes.add((shape, variant))
    assert answered > 15 and passed_on > 40
    assert ((1, 4, 1, 1), "plain") in answered_shapes  # one pixel (squeeze-excitation): by rule
    assert ((1, 4, 1, 1), "channels_last") not in answered_shapes  # its strides: torch's kernel


def _ruled_binary_cases(functions, shapes):
    """(fn, a, b, the rule's answer) for every pair of meta tensors of ``shapes`` (b also of
    other dtypes) where the rule answers."""
    for fn in functions:
        for sa in shapes:
            for sb in shapes:
                for dtype_b in (torch.float32, torch.float64, torch.int64):
                    a = torch.empty(sa, device="meta")
                    b = torch.empty(sb, device="meta", dtype=dtype_b)
                    ruled = shapes_module.binary_elementwise_shape(fn, (a, b), {})
                    if ruled is not None:
                        yield fn, a, b, ruled


def test_binary_elementwise_rule_is_torchs_result_where_it_answers():
    shapes = [
        (2, 3, 4, 5),
        (1, 3, 1, 1),
        (3, 1, 1),
        (2, 3, 4, 1),
        (5,),
        (),
        (1, 1, 4, 5),
        (4, 5),
        (2, 3, 1, 5),
    ]
    answered = 0
    for fn, a, b, ruled in _ruled_binary_cases(shapes_module.BINARY_ELEMENTWISE, shapes):
        expected = fn(a, b)
        assert (ruled.shape, ruled.stride(), ruled.dtype) == (
            expected.shape,
            expected.stride(),
            expected.dtype,
        ), (fn, a.shape, b.shape, b.dtype)
        answered += 1
    assert answered > 100
    a = torch.empty(1, 4, 3, 3, device="meta")
    b = a.to(memory_format=torch.channels_last)
    assert shapes_module.binary_elementwise_shape(torch.Tensor.add, (b, b), {}) is None  # layout: torch's
    assert shapes_module.binary_elementwise_shape(torch.Tensor.add, (a, 2.0), {}) is None  # a scalar: torch's
    assert shapes_module.binary_elementwise_shape(torch.add, (a, a), {"alpha": 2}) is None
    assert (
        shapes_module.binary_elementwise_shape(torch.Tensor.add, (a, torch.empty(5, device="meta")), {})
        is None
    )
    real = torch.ones(1, 4, 3, 3)
    assert shapes_module.binary_elementwise_shape(torch.Tensor.mul, (real, real), {}) is None  # computed


def test_inplace_binary_rule_is_the_tensor_itself_where_torch_agrees():
    shapes = [(2, 3, 4, 5), (1, 3, 1, 1), (3, 1, 1), (2, 3, 4, 1), (5,), (), (1, 1, 4, 5)]
    answered = 0
    for fn, a, b, ruled in _ruled_binary_cases(shapes_module.INPLACE_BINARY_ELEMENTWISE, shapes):
        assert ruled is a, (fn, a.shape, b.shape)
        expected = fn(a.clone(), b)  # torch accepts what the rule answers
        assert (expected.shape, expected.stride(), expected.dtype) == (a.shape, a.stride(), a.dtype)
        answered += 1
    assert answered > 20
    small, big = torch.empty(1, 3, 1, 1, device="meta"), torch.empty(2, 3, 4, 5, device="meta")
    assert shapes_module.binary_elementwise_shape(torch.Tensor.add_, (small, big), {}) is None  # torch raises
    with pytest.raises(RuntimeError):
        small.clone().add_(big)


class _Excite(nn.Module):
    """A squeeze-excitation with a residual: binary ops inside a forward, not modules."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = (
            nn.Conv2d(3, 4, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(4, 4, 1),
        )
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        out = self.fc(self.pool(x)) * x
        out += x
        return self.head(out - x)


def test_shape_pass_gives_binary_ops_inside_forwards_by_rule(monkeypatch):
    model = _Excite()
    seen, answered = [], []
    model.head.register_forward_hook(lambda m, i, o: seen.append((tuple(i[0].shape), tuple(o.shape))))
    rule = shapes_module.binary_elementwise_shape

    def recording(fn, args, kwargs):
        result = rule(fn, args, kwargs)
        answered.append(result is not None)
        return result

    monkeypatch.setattr(shapes_module, "binary_elementwise_shape", recording)
    shape_only_forward(model, torch.randn(2, 3, 6, 5))
    assert seen == [((2, 4, 6, 5), (2, 2, 6, 5))]
    assert answered.count(True) == 3  # x * s, out += x, out - x: none through torch's references
    answered.clear()
    graph = tracing.trace_graph(model)  # the same ops as the trace's nodes: by rule as well
    tracing.propagate_shapes(graph, dict(model.named_modules()), torch.randn(2, 3, 6, 5))
    assert answered.count(True) == 3
    assert [tuple(n.meta["tensor_meta"].shape) for n in graph.nodes if n.op == "call_module"][-1] == (
        2,
        2,
        6,
        5,
    )
    answered.clear()
    with torch.no_grad():  # a real pass: nothing intercepted
        model(torch.randn(2, 3, 6, 5))
    assert not answered


def test_adaptive_pool_with_indices_runs_its_own_meta_kernel():
    pool = nn.AdaptiveMaxPool2d(2, return_indices=True)
    seen = []
    pool.register_forward_hook(lambda m, i, o: seen.append([tuple(t.shape) for t in o]))
    shape_only_forward(pool, torch.randn(1, 3, 5, 5))
    assert seen == [[(1, 3, 2, 2), (1, 3, 2, 2)]]

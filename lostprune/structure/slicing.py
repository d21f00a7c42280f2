"""Physical channel slicing (docs/methods.md §Slicing): a structurally masked model → a smaller dense model
with the same function.

    sliced = lostprune.slice_model(result.model)       # result = lostprune.prune(model, "ft", 0.5)
    print(sliced.slice_report.summary())

What goes: every channel the dependency graph counts as structurally removed
(``DependencyGraph.removed_channels``) — from producer rows, depthwise filters, BN entries and
consumer columns alike. A removed channel nobody reads is simply dropped. A removed channel
whose producers are all zero still carries a constant (its bias, then BN shift, activation…);
it is folded into each consumer: a bias where the consumer sees it uniformly, an exact
border-aware term (``FoldedConv2d``) under zero padding. Where the constant cannot be
determined (an op that does not preserve constants, a module reused with different inputs)
the channel is kept and a ``SlicingWarning`` says so.

All tensors of the new model — sliced or not — come out of one ``gather_channels`` call. The
model is copied (the user's model is never modified); modules keep their classes and are
resized in place, except zero-padded convs that need the border term (``FoldedConv2d``).
Folding uses eval-mode BN statistics: the sliced model equals the masked one in eval mode.
"""

from __future__ import annotations

import itertools
import warnings

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import prune as torch_prune

from ..core.accounting import output_positions
from ..core.copying import copy_model
from ..core.masks import count_nonzero, mask_factors, masked_parameters, nonzero_rows_and_columns
from ..core.shapes import check_input, eval_mode, shape_only_forward
from ..ops import ensure_loaded, gather_channels
from .attention import resize_attention
from .folded_conv import FoldedConv2d
from .granularity import channel_multiple, padded
from .graph import GraphError, build_graph
from .slice_plan import SlicePlan, SliceReport, live_rows_and_columns, plan_slice
from .trace_cache import EXAMPLE_INPUT
from .tracing import failing_module


class SlicingWarning(UserWarning):
    """Slicing kept something it was asked to remove, or had nothing to remove."""


# --------------------------------------------------------------------------- the copy
def _dense_model(
    model: nn.Module, inplace: bool
) -> tuple[nn.Module, set[int], dict[nn.Module, tuple[Tensor, Tensor]]]:
    """The model to slice: ``model`` itself (``inplace``) or a copy of its module tree whose
    parameters and buffers are, for now, the user's own tensors (copying them here would copy
    every weight twice: the single gather at the end writes all new tensors). Pruning hooks
    are replaced by plain parameters holding ``orig * mask`` (see ``_masked_weight``). Returns
    the model, the ids of the tensors shared with the user's model (none in place), and the
    live rows and columns of weights already known."""
    if inplace:
        dense, shared_ids = model, set()
    else:
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        memo = dict(shared)
        for module in model.modules():  # pruning's cached masked weights and hooks: replaced below
            for name in masked_parameters(module):
                cached = module.__dict__.get(name)
                if isinstance(cached, Tensor):
                    memo[id(cached)] = None
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, (torch_prune.PruningContainer, torch_prune.BasePruningMethod)):
                    memo[id(hook)] = hook  # dropped from the copy, never copied
        dense, shared_ids = copy_model(model, memo), set(shared)
    live = {}
    for module in dense.modules():
        names = masked_parameters(module)
        if not names:
            continue
        for name in names:
            weight, live_rows_and_columns = _masked_weight(module, name)
            orig = module._parameters.pop(f"{name}_orig")
            module._buffers.pop(f"{name}_mask")
            module.__dict__.pop(name, None)
            module.register_parameter(name, nn.Parameter(weight, requires_grad=orig.requires_grad))
            if live_rows_and_columns is not None:  # the user's raw weight itself
                if not inplace:  # still shared with the user's model
                    shared_ids.add(id(module._parameters[name]))
                if name == "weight":
                    live[module] = live_rows_and_columns
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, (torch_prune.PruningContainer, torch_prune.BasePruningMethod)):
                del module._forward_pre_hooks[key]
    return dense, shared_ids, live


def _masked_weight(module: nn.Module, name: str) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """``orig * mask`` of a masked parameter — or ``orig`` itself, not a product, where the
    mask is a known 0/1 outer product (``outer_mask``) and ``orig`` is zero outside it
    already (no live row or column of ``orig`` outside the mask's): then with the live rows
    and columns found on the way."""
    orig, mask = getattr(module, f"{name}_orig"), getattr(module, f"{name}_mask")
    factors = mask_factors(mask) if orig.dim() >= 2 else None
    if factors is not None:
        rows, cols = (t.cpu() for t in nonzero_rows_and_columns(orig))
        outside = (live.numpy() & ~kept.numpy() for live, kept in zip((rows, cols), factors))
        if not any(extra.any() for extra in outside):  # (numpy: small vectors, torch costs more)
            return orig.detach(), (rows, cols)
    with torch.no_grad():
        return orig * mask, None


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith("_mask"))


# --------------------------------------------------------------------------- the slice
def slice_model(
    model: nn.Module, example_input: Tensor | None = None, *, leaf_modules=(), inplace: bool = False
) -> nn.Module:
    """A smaller dense copy of ``model`` without its structurally removed channels.

    Args:
        model: a structurally pruned model (masks in ``nn.utils.prune`` format, e.g.
            ``lostprune.prune(model, "ft", r).model``; zeroed weights count the same).
        example_input: a batch to trace the model on; defaults to the one ``lostprune.prune``
            was given (remembered on the pruned model), else ``model.input_size``.
        leaf_modules: module types or names the dependency graph treats as opaque.
        inplace: slice ``model`` itself instead of a copy (no copy of the module tree: for a
            model ``prune`` has just copied). Its masks are folded into its weights first, so
            if slicing fails the model keeps its function but not its masks.

    Returns a new ``nn.Module``, or ``model`` itself when ``inplace`` (no pruning hooks; without
    ``inplace`` the user's model is untouched), whose output
    equals the masked model's in eval mode within float32 rounding; ``.slice_report`` tells
    what was removed, folded and kept.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    source = "example_input"
    if example_input is None:
        example_input, source = getattr(model, EXAMPLE_INPUT, None), ""  # prune ran the model on it
    if example_input is None:
        size = getattr(model, "input_size", None)
        if size is None:
            raise ValueError(
                "slice_model traces the model and needs an example input: pass "
                "example_input=torch.randn(1, C, H, W) (or set model.input_size; a model "
                "lostprune.prune returned remembers the one prune traced it on)"
            )
        reference = next(itertools.chain(model.parameters(), model.buffers()), None)
        example_input = torch.zeros(1, *size, device=reference.device if reference is not None else None)
        source = "model.input_size"
    if not isinstance(example_input, Tensor) or example_input.dim() < 2 or example_input.shape[0] == 0:
        raise ValueError(
            "example_input must be a non-empty batch tensor (N x C x H x W or N x features), got "
            + (
                f"shape {tuple(example_input.shape)}"
                if isinstance(example_input, Tensor)
                else type(example_input).__name__
            )
        )
    if source:  # a wrong input fails here, named, not as a trace error deep in the graph
        check_input(model, example_input, source)
    params_before = _count_params(model)
    # masked layers: weights their masks keep (slicing drops only masked ones; the rest of a
    # sliced layer's weights are masked weights that stay, as zeros)
    pruned = {
        name: count_nonzero(m.weight_mask)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and "weight" in masked_parameters(m)
    }

    ensure_loaded()  # the gather below needs the kernels: loaded first, the live rows and columns use them too
    dense, shared, live = _dense_model(model, inplace)
    # BN folds with running statistics; shape propagation never updates them
    with eval_mode(list(dense.modules())):
        graph = build_graph(dense, example_input[:1], leaf_modules, reuse_from=model)
        modules = graph.modules
        rows, cols = live_rows_and_columns(modules, live)
        removed, alive = {}, {}
        for group in graph.groups:
            if group.prunable:
                alive[group.id] = graph.alive_channels(group, rows, cols)
                gone = graph.removed_of(alive[group.id])
                if gone.any():
                    removed[group.id] = gone
        report = SliceReport(params_before, params_before)
        if not removed:
            warnings.warn(
                "slice_model: no channel is structurally removed (the model has no structural masks: "
                "it is unpruned or pruned unstructured) — returning an equal dense copy",
                SlicingWarning,
                stacklevel=2,
            )
            plan = SlicePlan(modules, {}, {})
        else:
            plan = plan_slice(graph, modules, rows, cols, alive, removed, report)
        _materialize(dense, modules, plan, shared)
    for conv in plan.folded.values():  # after the modes are restored: the new module copies its own
        _replace(dense, conv, FoldedConv2d.from_conv(conv, conv._buffers.pop("fold_weight")))
    _check_runs(dense, example_input)
    parameters = list(dense.named_parameters())
    report.params_after = sum(p.numel() for _, p in parameters)  # (no pruning hooks left)
    report.zeros_kept = sum(dense.get_submodule(name).weight.numel() - kept for name, kept in pruned.items())
    _count_conv_work(dense, graph, report, example_input)
    report.shapes = {name: tuple(p.shape) for name, p in parameters}
    if report.kept:
        warnings.warn(
            f"slice_model kept {report.channels_kept} removed channels to keep the model's function: "
            + "; ".join(report.kept[:3])
            + (" …" if len(report.kept) > 3 else ""),
            SlicingWarning,
            stacklevel=2,
        )
    dense.slice_report = report
    return dense


def _check_runs(sliced: nn.Module, example_input: Tensor) -> None:
    """One shape-only pass of the sliced model (meta tensors): a size the channel analysis
    could not see in the model's code fails here, named, instead of in the user's hands."""
    try:
        shape_only_forward(sliced, example_input[:1])
    except Exception as exc:
        where = failing_module(exc)
        raise GraphError(
            f"slice_model: the sliced model does not run{f' ({where})' if where else ''}: "
            f"{type(exc).__name__}: {exc}. Some size in the model's code depends on the removed "
            "channels in a way the channel analysis does not follow; please report it"
        ) from exc


def _count_conv_work(sliced: nn.Module, graph, report: SliceReport, example_input: Tensor) -> None:
    """Fill ``report.conv_macs*``: per sample, over dense (groups=1) convs, each call counted
    (output positions read off the trace where it sees every call, else one shape pass)."""
    report.channel_multiple = multiple = channel_multiple(example_input.device)
    positions, _ = graph.output_positions() or output_positions(sliced, example_input)
    for name, count in positions.items():
        module = sliced.get_submodule(name)
        if not isinstance(module, nn.Conv2d) or module.groups != 1:
            continue
        per_channel = module.weight[0].numel() * count
        report.conv_macs += module.out_channels * per_channel
        report.conv_macs_padded += padded(module.out_channels, multiple) * per_channel
        if module.out_channels % multiple:
            report.unaligned.append(name)


def _index(keep: Tensor | None) -> Tensor | None:
    return None if keep is None or bool(keep.all()) else keep.nonzero().flatten()


def _materialize(dense: nn.Module, modules: dict[str, nn.Module], plan: SlicePlan, shared: set[int]) -> None:
    """One gather for every tensor that is sliced or still shared with the user's model,
    then the modules' sizes."""
    jobs = []  # [module, attr, old tensor or None, source, rows, cols]
    moved: dict[tuple[int, str], int] = {}  # (module id, attr) -> dim moved to the front for the gather
    for name, module in modules.items():
        rows, cols = _index(plan.keep_rows.get(name)), _index(plan.keep_cols.get(name))
        sliceable = isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._NormBase))
        for attr, tensor in itertools.chain(module._parameters.items(), module._buffers.items()):
            if tensor is None:
                continue
            source = plan.new_tensors.pop((name, attr), None)
            r = rows if sliceable and tensor.dim() >= 1 else None
            c = (
                cols
                if sliceable and attr == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
                else None
            )
            qualified = f"{name}.{attr}" if name else attr
            if qualified in plan.keep_params:  # a layer scale, class token, per-head table: along its dim
                dim, keep = plan.keep_params[qualified]
                if dim > 1:
                    moved[(id(module), attr)] = dim
                    source = tensor.detach().movedim(dim, 0)
                    r, c = _index(keep), None
                else:
                    r, c = (_index(keep), None) if dim == 0 else (None, _index(keep))
            if source is None and r is None and c is None and id(tensor) not in shared:
                continue  # already this copy's own tensor, unchanged
            jobs.append([module, attr, tensor, source, r, c])
    for (name, attr), source in plan.new_tensors.items():  # a bias or fold term the layer did not have
        jobs.append([modules[name], attr, None, source, _index(plan.keep_rows.get(name)), None])
    plan.new_tensors.clear()

    # One output per distinct (tensor, slicing): weights tied between modules stay tied. Jobs
    # are matched by tensor identity, their indices compared only where a tensor recurs (no
    # per-channel key).
    distinct: dict[tuple, list[int]] = {}  # (kind, id of source or old tensor) -> outputs of it
    sources, rows, cols, which = [], [], [], []
    for _module, _attr, old, source, r, c in jobs:
        made_of = distinct.setdefault(("old", id(old)) if source is None else ("source", id(source)), [])
        i = next(
            (i for i in made_of if source is not None or (_same(rows[i], r) and _same(cols[i], c))), None
        )
        if i is None:
            i = len(sources)
            made_of.append(i)
            sources.append((source if source is not None else old).detach())
            rows.append(r)
            cols.append(c)
        which.append(i)
    outputs: list[Tensor | None] = [None] * len(sources)
    by_device: dict[torch.device, list[int]] = {}
    for i, source in enumerate(sources):
        if source.dim() == 0 or source.numel() == 0:
            outputs[i] = source.clone()
        else:
            by_device.setdefault(source.device, []).append(i)
    for indices in by_device.values():
        gathered = gather_channels(
            [sources[i] for i in indices], [rows[i] for i in indices], [cols[i] for i in indices]
        )
        for i, tensor in zip(indices, gathered):
            outputs[i] = tensor

    made: dict[int, Tensor] = {}
    for (module, attr, old, _, _, _), i in zip(jobs, which):
        if (id(module), attr) in moved:
            outputs[i] = outputs[i].movedim(0, moved[(id(module), attr)]).contiguous()
        is_param = attr in module._parameters or (old is None and attr != "fold_weight")
        if i not in made:
            if is_param:
                grad = old.requires_grad if old is not None else module.weight.requires_grad
                made[i] = nn.Parameter(outputs[i], requires_grad=grad)
            else:
                made[i] = outputs[i]
        (module._parameters if is_param else module._buffers)[attr] = made[i]

    for name, module in modules.items():
        if name in plan.keep_rows or name in plan.keep_cols:
            _resize(module)
        resize_attention(module)
        if type(module) is nn.Conv2d and "fold_weight" in module._buffers:
            plan.folded[name] = module
    leftovers = shared and [  # (nothing is shared in place)
        n for n, t in itertools.chain(dense.named_parameters(), dense.named_buffers()) if id(t) in shared
    ]
    if leftovers:
        raise RuntimeError(
            f"slice_model: internal error, tensors still shared with the input model: {leftovers[:5]}"
        )


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    """Whether two index vectors (None: all) select the same entries."""
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(torch.equal(a, b))


def _resize(module: nn.Module) -> None:
    """Set a module's size attributes from its (sliced) tensors."""
    if isinstance(module, nn.Conv2d):
        out_channels, per_group = module.weight.shape[:2]
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:  # depthwise
            module.groups = module.in_channels = out_channels
        else:  # a grouped conv keeps its groups (channel j of every group went together)
            module.in_channels = per_group * module.groups
        module.out_channels = out_channels
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        for attr in ("weight", "running_mean"):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, Tensor):
                module.num_features = tensor.shape[0]
                break


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` sits (a reused module sits in several places)."""
    for qualified, module in list(root.named_modules(remove_duplicate=False)):
        if module is old and qualified:
            parent_name, _, child = qualified.rpartition(".")
            setattr(root.get_submodule(parent_name), child, new)


__all__ = ["FoldedConv2d", "SliceReport", "SlicingWarning", "slice_model"]

"""Masks in the ``torch.nn.utils.prune`` format (``weight_orig`` parameter, ``weight_mask``
buffer, forward pre-hook), so ``prune.remove``, ``state_dict`` round trips and existing
training code keep working."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import prune as torch_prune
from torch.utils.weak import WeakIdKeyDictionary

from ..ops.nonzero import nonzero_rows_cols
from .layers import weight_of


def is_pruned(module: nn.Module, name: str = "weight") -> bool:
    return hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig")


def get_mask(module: nn.Module, name: str = "weight") -> Tensor:
    """The module's 0/1 mask for ``name`` (all ones when it is not pruned)."""
    if is_pruned(module, name):
        return getattr(module, f"{name}_mask")
    return torch.ones_like(getattr(module, name))


def current_masks(
    layers: Mapping[str, nn.Module], materialize: bool = True, validate: bool = False
) -> dict[str, Tensor]:
    """{layer name: weight mask}, ones for unpruned layers (detached copies).

    ``materialize=False``: an unpruned layer's mask is a read-only broadcast view of a single
    one (``ones_view``) instead of a tensor of the weight's size. ``validate``: raise on a mask
    holding other values than 0 and 1 (changed by hand since it was installed)."""

    def ones(weight: Tensor) -> Tensor:
        return torch.ones_like(weight) if materialize else ones_view(weight)

    masks = {}
    for name, module in layers.items():
        if is_pruned(module):
            mask = get_mask(module).detach()
            if validate and mask_factors(mask) is None and not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(
                    f"model: the weight_mask of layer {name!r} holds values other than 0 and 1 (changed "
                    "since it was installed?); masks are 0/1 keep masks"
                )
            masks[name] = mask.clone()
        else:
            masks[name] = ones(weight_of(module).detach())
    return masks


def ones_view(like: Tensor) -> Tensor:
    """A broadcast view of a single one, shaped like ``like`` (no memory per element)."""
    return torch.ones((), dtype=like.dtype, device=like.device).expand(like.shape)


# Masks made as outer products of 0/1 row and column vectors (GroupPlan's structured masks),
# with the tensor version they were made at: their live rows / columns and nonzero counts
# need no pass over the mask. An in-place change bumps the version and retires the entry.
_OUTER_MASKS = WeakIdKeyDictionary()


def outer_mask(rows: Tensor, cols: Tensor, like: Tensor) -> Tensor:
    """A new 0/1 mask shaped like ``like`` (``[rows, cols, *kernel]``) equal to
    ``rows[r] * cols[c]`` everywhere, from bool vectors; ``mask_factors`` returns them."""
    shape = [1] * like.dim()
    row_shape, col_shape = list(shape), list(shape)
    row_shape[0] = col_shape[1] = -1
    factor = rows.to(device=like.device, dtype=like.dtype).view(row_shape) * cols.to(
        device=like.device, dtype=like.dtype
    ).view(col_shape)
    mask = factor.expand(like.shape).contiguous()
    _OUTER_MASKS[mask] = (mask._version, rows.detach().cpu().bool(), cols.detach().cpu().bool())
    return mask


def mask_factors(mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """The bool row and column vectors of an unchanged ``outer_mask``, else None."""
    entry = _OUTER_MASKS.get(mask)
    if entry is None or entry[0] != mask._version:
        return None
    return entry[1], entry[2]


def count_nonzero(mask: Tensor) -> int:
    """The nonzero entries of ``mask``: for an unchanged ``outer_mask``, from its factors (live
    rows x live columns x kernel elements, exactly the ones it holds; no pass over the mask),
    else ``torch.count_nonzero``."""
    factors = mask_factors(mask)
    if factors is None:
        return int(torch.count_nonzero(mask))
    rows, cols = factors  # (bool CPU tensors: numpy counts them without a torch call)
    return (
        int(np.count_nonzero(rows.numpy())) * int(np.count_nonzero(cols.numpy())) * math.prod(mask.shape[2:])
    )


def single_value(tensor: Tensor) -> Tensor | None:
    """The one value a broadcast view of a scalar (every stride 0, e.g. ``ones_view``) holds,
    else None."""
    if tensor.numel() == 0 or any(stride != 0 for stride in tensor.stride()):
        return None
    return tensor[(0,) * tensor.dim()]


def nonzero_rows_and_columns(tensor: Tensor) -> tuple[Tensor, Tensor | None]:
    """Bool [dim 0]: rows of ``tensor`` holding a nonzero; bool [dim 1]: columns (input
    channels of a conv/linear weight) holding one, None for a 1-d tensor. On the tensor's
    device. An unchanged ``outer_mask`` answers from its factors; other tensors of 2 or more
    dimensions go to ``ops.nonzero_rows_cols`` (the compiled kernel where the kernels are
    loaded already: this never starts a build)."""
    factors = mask_factors(tensor)
    if factors is not None:
        rows, cols = factors
        return (rows & cols.any()).to(tensor.device), (cols & rows.any()).to(tensor.device)
    t = tensor.detach()
    if t.dim() < 2:
        return t != 0, None
    return nonzero_rows_cols(t, build=False)


def live_structure(mask: Tensor, groups: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What survives of a conv / linear weight mask, as the channel counts need it: live rows
    (bool [out]), live input channels (bool [in channels]; of a grouped conv, channel
    g·(in / groups) + j is column j of group g's rows) and, unless every live (row, column)
    pair is full — the mask is then the outer product of the two, times the kernel —, the
    surviving entries of each (row, column) pair (float64 [out, in per group]), else None.
    Broadcast views of one value, ``outer_mask`` masks and dense masks answer without a pass
    over the pairs."""
    value = single_value(mask)
    cout = mask.shape[0]
    cin = mask.shape[1] * groups if mask.dim() > 1 else 1
    if value is not None:
        live = bool(value != 0)
        return np.full(cout, live), np.full(cin, live), None
    factors = mask_factors(mask) if groups == 1 else None
    if factors is not None:
        rows, cols = (t.numpy() for t in factors)
        return rows & cols.any(), cols & rows.any(), None
    kept = int(torch.count_nonzero(mask))
    if kept == mask.numel():
        return np.ones(cout, dtype=bool), np.ones(cin, dtype=bool), None
    nonzero = mask.detach() != 0
    pairs = (nonzero.flatten(2).sum(2) if nonzero.dim() > 2 else nonzero).cpu().to(torch.float64)
    rows = nonzero_rows_and_columns(mask)[0].cpu().numpy()
    cin_g = pairs.shape[1]
    cols = (pairs.view(groups, cout // groups, cin_g) > 0).any(1).reshape(-1).numpy()
    if groups == 1 and kept == math.prod(mask.shape[2:]) * int(rows.sum()) * int(cols.sum()):
        return rows, cols, None
    return rows, cols, pairs.numpy()


def effective_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """The weight the forward pass uses (``orig * mask`` for pruned modules)."""
    if is_pruned(module, name):
        return getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
    return getattr(module, name)


def _check_mask(name: str, module: nn.Module, mask: Tensor, param: str, values: bool = True) -> Tensor:
    target = getattr(module, f"{param}_orig", None)
    if target is None:
        target = getattr(module, param)
    if tuple(mask.shape) != tuple(target.shape):
        raise ValueError(
            f"mask for {name}.{param} has shape {tuple(mask.shape)} but the parameter has "
            f"shape {tuple(target.shape)}"
        )
    if values and not bool(((mask == 0) | (mask == 1)).all()):  # elementwise: a sort (unique) is 10x slower
        raise ValueError(f"mask for {name}.{param} must contain only 0 and 1")
    return mask.to(device=target.device, dtype=target.dtype)


def _install(module: nn.Module, name: str, mask: Tensor) -> None:
    """What ``torch.nn.utils.prune.custom_from_mask`` sets up — ``<name>_orig`` parameter,
    ``<name>_mask`` buffer, the pruning method as forward pre-hook — without its extra passes
    over the tensor (it recomputes and combines the mask several times)."""
    method = torch_prune.CustomFromMask(mask)
    method._tensor_name = name
    orig = getattr(module, name)
    del module._parameters[name]
    module.register_parameter(f"{name}_orig", orig)
    module.register_buffer(f"{name}_mask", mask)
    module.register_forward_pre_hook(method)


def apply_masks(
    layers: Mapping[str, nn.Module],
    masks: Mapping[str, Tensor],
    param: str = "weight",
    validate: bool = True,
    copy: bool = True,
) -> None:
    """Install ``masks`` on the layers' ``param`` in nn.utils.prune format.

    A layer that is already pruned keeps its hook: the new mask is combined with the old one
    (elementwise product, into a new buffer), so removed weights are never revived. The
    masked-out entries of ``<param>_orig`` are zeroed too, so zeros stay zero even where an
    optimizer's weight decay or momentum touches the raw parameter, and ``prune.remove``
    leaves exact zeros. ``validate=False`` skips the 0/1 check (for masks lostprune's own
    methods made). ``copy=False`` installs the given (contiguous) tensors themselves as the
    mask buffers of layers pruned for the first time, instead of copies.
    """
    for name, mask in masks.items():
        if name not in layers:
            raise KeyError(f"mask given for {name!r}, which is not among the prunable layers")
        module = layers[name]
        mask = _check_mask(name, module, mask, param, values=validate)
        if is_pruned(module, param):
            module._buffers[f"{param}_mask"] = getattr(module, f"{param}_mask") * mask
        else:
            _install(module, param, mask.clone() if copy or not mask.is_contiguous() else mask)
        _refresh(module, param)


def share_mask(owner: nn.Module, alias: nn.Module, name: str = "weight") -> None:
    """Make ``alias``, a module using ``owner``'s (pruned) ``name`` Parameter, use its mask
    too: the same ``<name>_orig`` Parameter and the same ``<name>_mask`` buffer, with the
    forward pre-hook that computes ``orig * mask`` (a tied weight stays one tensor with one
    mask, and ``state_dict`` / ``deepcopy`` keep the sharing)."""
    orig, mask = getattr(owner, f"{name}_orig"), getattr(owner, f"{name}_mask")
    if is_pruned(alias, name):
        if getattr(alias, f"{name}_orig") is not orig:
            raise ValueError(f"share_mask: the module does not share the owner's {name} Parameter")
        alias._buffers[f"{name}_mask"] = mask
    else:
        if alias._parameters.get(name) is not orig:
            raise ValueError(f"share_mask: the module does not share the owner's {name} Parameter")
        method = torch_prune.CustomFromMask(mask)
        method._tensor_name = name
        del alias._parameters[name]
        alias.register_parameter(f"{name}_orig", orig)
        alias.register_buffer(f"{name}_mask", mask)
        alias.register_forward_pre_hook(method)
    setattr(alias, name, getattr(owner, name))  # the masked tensor _refresh left on the owner


def tie_shared_masks(model: nn.Module) -> None:
    """Give the masked modules of ``model`` that share one Parameter one mask (the product of
    theirs, which equals each of them for masks lostprune installed): the first module's."""
    groups: dict[tuple[int, str], list[nn.Module]] = {}
    for module in model.modules():
        for name in masked_parameters(module):
            groups.setdefault((id(getattr(module, f"{name}_orig")), name), []).append(module)
    for (_, name), modules in groups.items():
        if len(modules) < 2:
            continue
        owner, mask = modules[0], getattr(modules[0], f"{name}_mask")
        for module in modules[1:]:
            other = getattr(module, f"{name}_mask")
            if other is not mask and not torch.equal(other, mask):
                mask = mask * other
        if mask is not getattr(owner, f"{name}_mask"):
            owner._buffers[f"{name}_mask"] = mask
            _refresh(owner, name)
        for module in modules[1:]:
            share_mask(owner, module, name)


def masked_parameters(module: nn.Module) -> list[str]:
    """Names of the module's parameters that carry an nn.utils.prune mask."""
    names = []
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.PruningContainer):
            names += [method._tensor_name for method in hook._pruning_methods]
        elif isinstance(hook, torch_prune.BasePruningMethod):
            names.append(hook._tensor_name)
    return list(dict.fromkeys(names))


def _refresh(module: nn.Module, name: str) -> None:
    """Zero the masked-out raw entries and recompute the masked attribute now, without an
    autograd graph: a masked tensor left over from a forward with gradients is not a graph
    leaf, and ``copy.deepcopy`` refuses modules holding one."""
    orig, mask = getattr(module, f"{name}_orig"), getattr(module, f"{name}_mask")
    with torch.no_grad():
        # one multiply by the mask, also for an outer_mask: 2.6-15x faster than filling its
        # removed rows and columns (16x16x3x3 to 4096x4096 weights: the fill's index lists
        # cost more than the pass they save)
        orig.mul_(mask)
        # a 0/1 outer-product mask: the masked weight now equals the raw one and shares it
        outer = orig.dim() >= 2 and mask_factors(mask) is not None
        setattr(module, name, orig.detach() if outer else orig * mask)


def settle_masks(model: nn.Module) -> nn.Module:
    """Refresh every masked parameter of ``model`` (see ``_refresh``): raw entries under the
    masks are zero and the model can be deep-copied. Returns ``model``."""
    for module in model.modules():
        for name in masked_parameters(module):
            _refresh(module, name)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Make pruning permanent: plain parameters holding zeros, hooks removed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        for name in masked_parameters(module):
            torch_prune.remove(module, name)
    return model


def load_pruned(model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True) -> nn.Module:
    """Load a state_dict saved from a pruned model into a fresh ``model`` (same architecture):
    installs a mask for every ``<param>_mask`` entry, then loads all tensors. Modules sharing
    a Parameter (tied weights) share its mask."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        hint = (
            " (a file name? read it with torch.load, or use lostprune.io.load_network for network files)"
            if isinstance(state_dict, (str, bytes)) or hasattr(state_dict, "__fspath__")
            else ""
        )
        raise TypeError(
            f"state_dict must be a mapping of tensor names to tensors (model.state_dict()), got "
            f"{type(state_dict).__name__}{hint}"
        )
    modules = dict(model.named_modules())
    for key, mask in state_dict.items():
        if not key.endswith("_mask"):
            continue
        module_name, _, tensor_name = key.rpartition(".")
        param = tensor_name[: -len("_mask")]
        if module_name not in modules:
            raise KeyError(f"state_dict has a mask for {module_name!r}, which the model does not have")
        module = modules[module_name]
        if not hasattr(module, param):
            raise KeyError(f"state_dict has a mask for {module_name}.{param}, which the module does not have")
        mask = _check_mask(module_name or "model", module, mask, param)
        if is_pruned(module, param):
            getattr(module, f"{param}_mask").copy_(mask)
        else:
            torch_prune.custom_from_mask(module, param, mask)
    model.load_state_dict(state_dict, strict=strict)
    for module in model.modules():
        for name in masked_parameters(module):
            _refresh(module, name)
    tie_shared_masks(model)
    return model

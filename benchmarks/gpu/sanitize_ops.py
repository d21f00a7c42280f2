"""Every CUDA op of lostprune once on small, odd shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck python benchmarks/gpu/sanitize_ops.py

Covers each kernel and path: gather (every element size), live rows and columns (every\nword size, complex, an empty tensor), the tiled sparse convolution
(lanes splitting the nonzeros, several images per tile, column tiles, channel chunks,
grouped and depthwise, the fused epilogue), its unstaged path (huge dilation), the sparse
linear kernel, both sensitivity reductions (float32 and float64, groups, stride,
dilation, signed inputs) and max-pooling (padding, NaN, odd maps). Each result is compared with the PyTorch reference on the CPU, so
the script also fails (exit 1) on a wrong answer. Shapes are tiny: under the sanitizer
every access is checked. Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so every tensor is its
own allocation and an access past its end is caught. ``--device cpu`` runs the same calls on
the CPU kernels (the GPU check's dry run, so the script cannot rot on machines without a GPU).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from lostprune import ops

FAILURES: list[str] = []
DEVICE = "cuda"


def check(name: str, out: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    scale = ref.abs().max().clamp_min(1e-30)
    err = ((out - ref).abs().max() / scale).item() if ref.numel() else 0.0
    status = "ok" if out.shape == ref.shape and err <= rtol else "FAIL"
    if status == "FAIL":
        FAILURES.append(name)
    print(f"{status:4} {name}: max error {err:.2e} of the output's scale (allowed {rtol:.0e})")


def sparse_weight(shape, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    return w.masked_fill(torch.rand(shape, generator=gen) < sparsity, 0.0)


def gather() -> None:
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.bool, torch.uint8, torch.float16, torch.float32, torch.float64, torch.complex128):
        base = torch.randn(5, 7, 3, 3, generator=gen, dtype=torch.float64)
        tensor = (
            torch.complex(base, -base)
            if dtype.is_complex
            else (base > 0 if dtype == torch.bool else base.to(dtype))
        )
        bias = torch.arange(5.0)
        rows, cols = [4, 1, 2], [6, 0, 3, 5]
        got = ops.gather_channels([tensor.to(DEVICE), bias.to(DEVICE)], [rows, rows], [cols, None])
        want = ops.gather_channels_reference(
            [tensor, bias], [torch.tensor(rows), torch.tensor(rows)], [torch.tensor(cols), None]
        )
        ok = all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
        if not ok:
            FAILURES.append(f"gather_channels {dtype}")
        print(f"{'ok' if ok else 'FAIL':4} gather_channels {dtype}")


# (N, Cin, Cout, H, W, k, stride, padding, dilation, groups): one per tile plan of the kernel.
CONV_CASES = [
    (1, 3, 5, 7, 7, 3, 1, 1, 1, 1),  # 49 positions: lanes split the nonzeros
    (1, 5, 3, 1, 1, 1, 1, 0, 1, 1),  # one position
    (3, 4, 6, 4, 4, 3, 1, 1, 1, 1),  # three images per tile
    (7, 6, 10, 5, 3, 3, 2, 1, 1, 2),  # odd map, stride 2, groups
    (1, 2, 3, 3, 150, 3, 1, 1, 1, 1),  # column tiles
    (2, 300, 2, 5, 5, 3, 1, 1, 1, 1),  # several channel chunks
    (5, 3, 40, 3, 5, 1, 1, 0, 1, 1),  # two blocks of output channels
    (2, 8, 8, 9, 9, 3, 1, 1, 1, 8),  # depthwise
    (1, 2, 3, 110, 105, 3, 1, 0, 50, 1),  # dilation 50: unstaged path
    (800, 4, 80, 4, 4, 3, 1, 1, 1, 1),  # 300 blocks, the last channel block partial: four channels per warp
]


def sparse() -> None:
    gen = torch.Generator().manual_seed(1)
    for i, (n, cin, cout, h, w, k, s, p, d, g) in enumerate(CONV_CASES):
        weight = sparse_weight((cout, cin // g, k, k), 0.8, gen)
        x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
        bias = torch.randn(cout, generator=gen, dtype=torch.float64)
        ref = F.conv2d(x, weight, bias, s, p, d, g)
        residual = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        for dtype, rtol in (
            (torch.float32, 1e-5),
            (torch.float64, 1e-12),
            (torch.float16, 5e-3),
            (torch.bfloat16, 3e-2),
        ):
            packed = ops.pack_weight(weight).to(DEVICE, dtype)
            out = ops.sparse_conv2d(x.to(DEVICE, dtype), packed, bias.to(DEVICE, dtype), s, p, d, g)
            check(f"sparse_conv2d case {i} {dtype}", out, ref, rtol)
        packed = ops.pack_weight(weight).to(DEVICE, torch.float32)
        fused = ops.sparse_conv2d(
            x.float().to(DEVICE),
            packed,
            bias.float().to(DEVICE),
            s,
            p,
            d,
            g,
            residual=residual.float().to(DEVICE),
            relu=True,
        )
        check(f"sparse_conv2d case {i} residual+relu", fused, torch.relu(ref + residual), 1e-5)
    for m, inp, out_features in ((1, 53, 30), (17, 7, 3), (4, 300, 65)):
        weight = sparse_weight((out_features, inp), 0.85, gen)
        x = torch.randn(m, inp, generator=gen, dtype=torch.float64)
        bias = torch.randn(out_features, generator=gen, dtype=torch.float64)
        for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, 1e-12), (torch.float16, 5e-3)):
            y = ops.sparse_linear(
                x.to(DEVICE, dtype), ops.pack_weight(weight).to(DEVICE, dtype), bias.to(DEVICE, dtype)
            )
            check(f"sparse_linear {m}x{inp}->{out_features} {dtype}", y, F.linear(x, weight, bias), rtol)


# (x shape, weight shape, conv arguments)
SENSITIVITY_CASES = [
    ((2, 4, 7, 5), (6, 2, 3, 2), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}),
    ((3, 5, 9, 9), (7, 5, 3, 3), {"stride": 1, "padding": 1}),
    ((1, 3, 5, 6), (70, 3, 1, 1), {}),  # more units than one block's 16
    ((2, 9, 33), (5, 33), {}),  # a linear layer over 9 tokens
]


def sensitivity() -> None:
    gen = torch.Generator().manual_seed(2)
    for i, (x_shape, w_shape, conv) in enumerate(SENSITIVITY_CASES):
        x = torch.randn(x_shape, generator=gen, dtype=torch.float64)
        x[0] = x[0].abs()  # one all-positive sample: a single data point in the sign split
        w = torch.randn(w_shape, generator=gen, dtype=torch.float64)
        for dtype, rtol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
            xc, wc = x.to(DEVICE, dtype), w.to(DEVICE, dtype)
            for reduce in ("mean", "max"):
                check(
                    f"weight_sensitivity case {i} {reduce} {dtype}",
                    ops.weight_sensitivity(xc, wc, reduce=reduce, **conv),
                    ops.weight_sensitivity_reference(x, w, reduce=reduce, **conv),
                    rtol,
                )
            check(
                f"channel_sensitivity case {i} {dtype}",
                ops.channel_sensitivity(xc, wc, **conv),
                ops.channel_sensitivity_reference(x, w, **conv),
                rtol,
            )
            # the layer's output that the ops return with the scores (with_output)
            scores, y = ops.channel_sensitivity(xc, wc, **conv, with_output=True)
            want = F.linear(x, w) if w.dim() == 2 else F.conv2d(x, w, None, **conv)
            check(f"channel_sensitivity case {i} {dtype} output", y, want, rtol)
            check(
                f"channel_sensitivity case {i} {dtype} scores with output",
                scores,
                ops.channel_sensitivity(xc, wc, **conv),
                0,
            )


def max_pool() -> None:
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        for k, stride, padding in ((3, 2, 1), (2, 2, 0), ((3, 2), (1, 2), (1, 0))):
            x = torch.randn(2, 3, 13, 9, generator=gen, dtype=dtype)
            x[1, 2, 5, 4] = float("nan")
            got = ops.max_pool2d(x.to(DEVICE), k, stride, padding).cpu()
            want = F.max_pool2d(x, k, stride, padding)
            ok = got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=0, equal_nan=True)
            if not ok:
                FAILURES.append(f"max_pool2d {dtype} {k} {stride} {padding}")
            print(
                f"{'ok' if ok else 'FAIL':4} max_pool2d {dtype} kernel {k} stride {stride} padding {padding}"
            )


def nonzero_rows_cols() -> None:
    gen = torch.Generator().manual_seed(4)
    for dtype in (torch.bool, torch.int8, torch.float16, torch.float32, torch.float64, torch.complex64):
        for shape in ((5, 7, 3, 3), (3, 1), (1, 9, 2), (4, 0, 3)):
            base = torch.randn(shape, generator=gen, dtype=torch.float64)
            base = base.masked_fill(torch.rand(shape, generator=gen) < 0.7, 0.0)
            if base.numel() and shape[0] > 1:
                base[1] = 0  # a dead row
            tensor = (
                torch.complex(base, base)
                if dtype.is_complex
                else (base != 0 if dtype == torch.bool else base.to(dtype))
            )
            got = ops.nonzero_rows_cols(tensor.to(DEVICE))
            nonzero = tensor != 0
            want = (nonzero.flatten(1).any(1), nonzero.transpose(0, 1).flatten(1).any(1))
            ok = all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
            if not ok:
                FAILURES.append(f"nonzero_rows_cols {dtype} {shape}")
            print(f"{'ok' if ok else 'FAIL':4} nonzero_rows_cols {dtype} {shape}")


def main() -> int:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    DEVICE = parser.parse_args().device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (run with --device cpu for the CPU kernels)")
        return 1
    state = ops.ensure_loaded()
    if state.backend != "compiled" or (DEVICE == "cuda" and not state.cuda):
        print(f"the {DEVICE.upper()} kernels are not compiled ({state.backend}: {state.reason})")
        return 1
    gather()
    nonzero_rows_cols()
    sparse()
    sensitivity()
    max_pool()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    print(f"{len(FAILURES)} wrong results" + (": " + ", ".join(FAILURES) if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())

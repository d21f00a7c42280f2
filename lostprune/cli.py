"""The ``lostprune`` command line."""

from __future__ import annotations

import argparse
import shutil
import sys


def _kernel_table(state) -> tuple[list[tuple[str, ...]], bool]:
    """Rows of (op, CPU kernel, CUDA kernel, reference, active) and whether all expected
    kernels are there."""
    import torch

    from .ops import all_ops

    compiled = state.backend == "compiled"
    gpu = torch.cuda.is_available()
    rows, complete = [], compiled
    for op, reference in all_ops().items():
        def has(key: str) -> bool:
            return compiled and torch._C._dispatch_has_kernel_for_dispatch_key(f"lostprune::{op}", key)

        cpu, cuda = has("CPU"), has("CUDA")
        complete &= cpu and (cuda or not state.cuda)
        active = ["CPU: " + ("kernel" if cpu else "reference")]
        if gpu:
            active.append("CUDA: " + ("kernel" if cuda else "reference"))
        rows.append((op, "compiled" if cpu else "-", "compiled" if cuda else "-",
                     reference.__name__, ", ".join(active)))
    return rows, complete


def cmd_build(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .ops import _build

    console = Console(width=max(120, shutil.get_terminal_size().columns))
    with console.status("compiling lostprune kernels (first time: about a minute)..."):
        state = _build.ensure_loaded(force=args.force, verbose=args.verbose)
    rows, complete = _kernel_table(state)
    table = Table(title=f"lostprune kernels: {state.backend} ({state.reason})")
    for column in ("op", "CPU kernel", "CUDA kernel", "reference", "active"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if state.library:
        console.print(f"library: {state.library}  ({state.seconds:.1f} s)")
    if state.log:
        console.print(f"[red]build log: {state.log}[/red]")
    console.print(f"CUDA kernels: {'compiled' if state.cuda else 'not compiled'}; "
                  f"cache: {_build.cache_root()}")
    if args.check and not complete:
        console.print("[red]--check: some kernels are missing[/red]")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="lostprune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lostprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="compile the C++/CUDA kernels now and show which are active")
    build.add_argument("--force", action="store_true", help="rebuild even after a failed build")
    build.add_argument("--verbose", action="store_true", help="show the compiler's output")
    build.add_argument("--check", action="store_true",
                       help="exit 1 unless every op has its CPU kernel (and CUDA kernel when CUDA is built)")
    build.set_defaults(func=cmd_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

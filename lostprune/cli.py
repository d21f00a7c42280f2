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

        def has(key: str, op: str = op) -> bool:
            return compiled and torch._C._dispatch_has_kernel_for_dispatch_key(f"lostprune::{op}", key)

        cpu, cuda = has("CPU"), has("CUDA")
        complete &= cpu and (cuda or not state.cuda)
        active = ["CPU: " + ("kernel" if cpu else "reference")]
        if gpu:
            active.append("CUDA: " + ("kernel" if cuda else "reference"))
        rows.append(
            (
                op,
                "compiled" if cpu else "-",
                "compiled" if cuda else "-",
                reference.__name__,
                ", ".join(active),
            )
        )
    return rows, complete


def cmd_build(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .ops import _build, _toolchain

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
    console.print(
        f"CUDA kernels: {'compiled' if state.cuda else 'not compiled'}; cache: {_build.cache_root()}"
    )
    isa = _build.vector_isa()
    if isa is not None:
        console.print(f"CPU kernels: {isa} vectors")
        note = _toolchain.vector_isa_note(isa, _toolchain.cpu_flags())
        if note:
            console.print(f"[yellow]no fast path: {note}[/yellow]")
    if args.check and not complete:
        console.print("[red]--check: some kernels are missing[/red]")
        return 1
    return 0


def _console():
    from rich.console import Console

    return Console(width=max(120, shutil.get_terminal_size().columns))


def print_potential_table(results_dir, console=None) -> None:
    """The prune-potential table of an experiment (methods × test distributions) per training
    arm, and where to stop pruning (``lostprune.metrics.recommend_ratio``)."""
    from .report import ExperimentResults
    from .report.render import potential_table
    from .report.robust import recommendation_table

    results = ExperimentResults(results_dir)
    console = console or _console()
    for arm in results.arms:
        _print_table(
            console,
            potential_table(results, arm),
            f"prune potential (%), δ = {100 * results.delta:g} %"
            + ("" if arm == "nominal" else f", {arm} training"),
        )
    _print_table(
        console,
        recommendation_table(results),
        f"where to stop pruning: within δ = {100 * results.delta:g} % of the parent (%)",
    )


def _print_table(console, data, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(data.header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in data.rows:
        table.add_row(*row)
    if data.rows:
        console.print(table)


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments import run
    from .report import write_report

    console = _console()
    root = run(
        args.config,
        args.out,
        workers=args.workers,
        ray_address=args.ray,
        retry_failed=args.retry_failed,
        threads=args.threads,
        data_root=getattr(args, "data", None),
    )
    print_potential_table(root, console)
    if not args.no_report:
        console.print(f"report: {write_report(root)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.results, args.out)
    print_potential_table(args.results)
    print(f"report: {path} (and {path.with_suffix('.html')})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.config import resolve_config_path

    args.config = str(resolve_config_path("demo_robust" if args.robust else "demo"))
    args.out = args.out or ("runs/demo_robust" if args.robust else "runs/demo")
    args.ray, args.retry_failed, args.no_report = None, False, False
    return cmd_run(args)


def cmd_configs(args: argparse.Namespace) -> int:
    from .experiments.config import SHIPPED, shipped_configs

    for name in shipped_configs():
        first = (SHIPPED / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:24s} {first}")
    return 0


def _load_data(spec: str | None, model):
    """--data: a built-in/loader name ('digits'), or a tensor file (N x C x H x W)."""
    if spec is None:
        return None
    from pathlib import Path

    import torch

    if Path(spec).is_file():
        return torch.load(spec, map_location="cpu")
    from . import data

    return data.load(spec).s  # S: held out of training, never the test set


def _method_options(pairs: list[str] | None) -> dict:
    """--option KEY=VALUE, repeatable; values read as YAML scalars (8 -> int, auto -> str)."""
    import yaml

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE (e.g. round_to=auto), got {pair!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def cmd_prune(args: argparse.Namespace) -> int:
    import lostprune

    from .io import load_network, read_network_file, save_network

    meta = read_network_file(args.model)
    model = load_network(args.model)
    result = lostprune.prune(
        model, args.method, args.ratio, data=_load_data(args.data, model), **_method_options(args.option)
    )
    out = args.out or str(args.model).replace(".pt", f"-{args.method}{round(100 * args.ratio)}.pt")
    save_network(
        out,
        result.model,
        meta["network"],
        meta["num_classes"],
        options=meta.get("options"),
        pruned_by=args.method,
        ratio=args.ratio,
    )
    print(result.stats.summary())
    print(f"saved: {out}")
    return 0


def cmd_slice(args: argparse.Namespace) -> int:
    import torch

    import lostprune

    from .io import load_network

    model = load_network(args.model).eval()
    sliced = lostprune.slice_model(model, inplace=True)  # loaded here, nobody else holds it
    out = args.out or str(args.model).replace(".pt", "-sliced.pt")
    torch.save({"format": "lostprune-sliced/1", "module": sliced}, out)
    print(sliced.slice_report.summary())
    print(f"saved: {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_network

    console = _console()
    console.print(bench_network(args.model, batches=args.batch, repeat=args.repeat))
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr (exit 2), pointing at --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(prog="lostprune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lostprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    # --debug also after the command; SUPPRESS keeps the subcommand from resetting the global flag
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)

    build = sub.add_parser("build", help="compile the C++/CUDA kernels now and show which are active")
    build.add_argument("--force", action="store_true", help="rebuild even after a failed build")
    build.add_argument("--verbose", action="store_true", help="show the compiler's output")
    build.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless every op has its CPU kernel (and CUDA kernel when CUDA is built)",
    )
    build.set_defaults(func=cmd_build)

    run = sub.add_parser("run", help="run (or resume) an experiment config, then write its report")
    run.add_argument(
        "config", help="a YAML config file, or the name of a shipped one (see `lostprune configs`)"
    )
    run.add_argument("--out", help="results directory (default runs/<name>)")
    run.add_argument(
        "--data",
        help="where the data set is (overrides the config's data.root): e.g. the CIFAR-10 "
        "folder with train/ and test/, or its .tar.gz",
    )
    run.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    run.add_argument(
        "--ray", metavar="ADDRESS", help="spread the work over a Ray cluster (needs lostprune[dist])"
    )
    run.add_argument("--retry-failed", action="store_true", help="run failed tasks again")
    run.add_argument(
        "--threads",
        type=int,
        help="torch threads, all workers together (default: the config's threads, else the physical cores)",
    )
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="write the Markdown/HTML report of a results directory")
    report.add_argument("results", help="results directory of `lostprune run`")
    report.add_argument("--out", help="report directory (default RESULTS/report)")
    report.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="the whole study on the built-in data in a few minutes")
    demo.add_argument("--out", help="results directory (default runs/demo)")
    demo.add_argument("--workers", type=int, default=1)
    demo.add_argument("--robust", action="store_true", help="add a shift-aware training arm")
    demo.add_argument("--threads", type=int, help="torch threads (default: the physical cores)")
    demo.set_defaults(func=cmd_demo)

    configs = sub.add_parser("configs", help="list the shipped experiment configs")
    configs.set_defaults(func=cmd_configs)

    prune = sub.add_parser("prune", help="prune a saved network")
    prune.add_argument("model", help="network file (lostprune.io.save_network)")
    prune.add_argument("--method", required=True)
    prune.add_argument(
        "--ratio", type=float, required=True, help="fraction of prunable weights removed, [0, 1)"
    )
    prune.add_argument(
        "--data", help="S for data-informed methods: a data set name (its S split) or a tensor file"
    )
    prune.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a method option, repeatable (e.g. round_to=auto, coupled=per_layer)",
    )
    prune.add_argument("--out", help="output network file")
    prune.set_defaults(func=cmd_prune)

    slice_ = sub.add_parser("slice", help="physically remove pruned channels of a saved network")
    slice_.add_argument("model")
    slice_.add_argument("--out")
    slice_.set_defaults(func=cmd_slice)

    bench = sub.add_parser("bench", help="CPU latency of a saved network: dense, masked, sliced, sparse")
    bench.add_argument("model")
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    bench.add_argument("--repeat", type=int, default=5)
    bench.set_defaults(func=cmd_bench)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    plain = (ValueError, TypeError, OSError, RuntimeError, ImportError)
    return (
        text
        if text and isinstance(exc, plain) and type(exc).__name__ not in ("KeyError", "IndexError")
        else f"{type(exc).__name__}: {text}"
    )


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"lostprune: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command; an error is one line on stderr and a non-zero exit (``--debug``: the
    traceback)."""
    import warnings

    args = build_parser().parse_args(argv)
    if args.debug:
        try:
            return args.func(args)
        except Exception as exc:
            details = getattr(exc, "details", None)  # a failed experiment task's own traceback
            if details:
                print(details, file=sys.stderr)
            raise
    show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(
            f"lostprune {args.command}: interrupted; finished work is kept (rerun the same command to resume)",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:  # noqa: BLE001 - the command line reports every error the same way
        print(
            f"lostprune {args.command}: error: {_one_line(exc)} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())

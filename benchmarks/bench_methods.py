"""What a structured prune costs: PFP's time against a forward pass of its sample S and
against FT, for the paper's per-layer variants and the group-aware ones.

    python benchmarks/bench_methods.py            # writes benchmarks/results/methods.md (a few minutes)
    python benchmarks/bench_methods.py --quick    # ResNet18 and ResNet20 only

Each ratio is of two timings sampled alternately in one run (``interleaved_ratio``).
Models have random weights and trained-like BN statistics (``randomize_norm_statistics``)
so that activations carry signal; S is 16 random images.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lostprune
import lostprune.models as models
from benchmarks._util import interleaved_ratio, write_section

MODELS = [("resnet20", 32), ("resnet18", 224), ("resnet50", 224), ("mobilenet_v2", 224)]


def prune_call(model, method: str, S: torch.Tensor, **options):
    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return lostprune.prune(
                model,
                method,
                0.5,
                data=S if method == "pfp" else None,
                example_input=S[:1],
                progress=False,
                **options,
            )

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name, size in MODELS[:2] if args.quick else MODELS:
        torch.manual_seed(0)
        model = models.randomize_norm_statistics(models.create(name), 0).eval()
        S = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(1))

        def forward(model=model, S=S):
            with torch.inference_mode():
                return model(S)

        for variant, options in (("paper (per layer)", {}), ("group-aware (sum)", {"coupled": "sum"})):
            pfp = prune_call(model, "pfp", S, **options)
            ft = prune_call(model, "ft", S, **options)
            t_fwd, t_pfp, fwd_ratio = interleaved_ratio(forward, pfp, rounds=args.rounds, min_time=0.0)
            t_ft, _t_pfp2, ft_ratio = interleaved_ratio(ft, pfp, rounds=args.rounds, min_time=0.0)
            achieved = pfp().stats.achieved_ratio
            rows.append(
                f"| {name} | {size}² | {variant} | {1e3 * t_fwd:.0f} | {t_pfp:.2f} | {1 / fwd_ratio:.1f}× | "
                f"{t_ft:.2f} | {1 / ft_ratio:.1f}× | {100 * achieved:.2f} % |"
            )
            print(rows[-1], flush=True)
    body = (
        '`prune(model, "pfp", 0.5, data=S)` with S = 16 images; *PFP / forward* is PFP\'s time over one '
        "eval forward pass of S (goal ≤ 8× for ResNet50), *PFP / FT* over FT on the same model. PFP's "
        "time is one channel-sensitivity pass over S plus an allocation that evaluates candidate ε on "
        "flat per-layer arrays (`structure.Propagation`, `GroupPlan`): no re-evaluation of the network "
        "per ε, no loop over channels.\n\n"
        "| model | input | variant | forward of S (ms) | PFP (s) | PFP / forward | FT (s) | PFP / FT | "
        "PFP achieved (target 50 %) |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    write_section(
        "methods",
        "Structured pruning cost: PFP against a forward pass and against FT",
        "python benchmarks/bench_methods.py",
        body,
    )


if __name__ == "__main__":
    main()

"""The command line: lostprune prune (with method options) and slice on saved networks."""

import pytest
import torch

import lostprune.models as models
from lostprune.cli import main
from lostprune.io import load_network, save_network


def test_cli_prune_with_options_then_slice(tmp_path, capsys):
    path = save_network(tmp_path / "net.pt", models.create("small_cnn"), "small_cnn")
    assert main(["prune", str(path), "--method", "ft", "--ratio", "0.5", "--option", "round_to=4",
                 "--option", "coupled=skip", "--out", str(tmp_path / "ft.pt")]) == 0
    pruned = load_network(tmp_path / "ft.pt")
    kept = [int(m.weight_mask.flatten(1).any(1).sum()) for m in pruned.modules() if hasattr(m, "weight_mask")
            and m.weight_mask.dim() == 4]
    assert kept and all(k % 4 == 0 for k in kept), kept
    assert main(["slice", str(tmp_path / "ft.pt"), "--out", str(tmp_path / "ft-sliced.pt")]) == 0
    out = capsys.readouterr().out
    assert "sliced: " in out and f"saved: {tmp_path / 'ft-sliced.pt'}" in out
    sliced = torch.load(tmp_path / "ft-sliced.pt", weights_only=False)["module"]
    assert [m.out_channels for m in sliced.modules() if isinstance(m, torch.nn.Conv2d)] == kept
    with pytest.raises(SystemExit, match="--option takes KEY=VALUE"):
        main(["prune", str(path), "--method", "ft", "--ratio", "0.5", "--option", "round_to"])
    with pytest.raises(TypeError, match="unexpected options: roundto"):
        main(["prune", str(path), "--method", "ft", "--ratio", "0.5", "--option", "roundto=4"])

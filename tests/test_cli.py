"""The command line: lostprune prune (with method options) and slice on saved networks."""

import subprocess
import sys

import pytest
import torch

import lostprune.models as models
from lostprune.cli import main
from lostprune.io import load_network, save_network


def test_cli_prune_with_options_then_slice(tmp_path, capsys):
    path = save_network(tmp_path / "net.pt", models.create("small_cnn"), "small_cnn")
    assert (
        main(
            [
                "prune",
                str(path),
                "--method",
                "ft",
                "--ratio",
                "0.5",
                "--option",
                "round_to=4",
                "--option",
                "coupled=skip",
                "--out",
                str(tmp_path / "ft.pt"),
            ]
        )
        == 0
    )
    pruned = load_network(tmp_path / "ft.pt")
    kept = [
        int(m.weight_mask.flatten(1).any(1).sum())
        for m in pruned.modules()
        if hasattr(m, "weight_mask") and m.weight_mask.dim() == 4
    ]
    assert kept and all(k % 4 == 0 for k in kept), kept
    assert main(["slice", str(tmp_path / "ft.pt"), "--out", str(tmp_path / "ft-sliced.pt")]) == 0
    out = capsys.readouterr().out
    assert "sliced: " in out and f"saved: {tmp_path / 'ft-sliced.pt'}" in out
    sliced = torch.load(tmp_path / "ft-sliced.pt", weights_only=False)["module"]
    assert [m.out_channels for m in sliced.modules() if isinstance(m, torch.nn.Conv2d)] == kept
    assert main(["prune", str(path), "--method", "ft", "--ratio", "0.5", "--option", "round_to"]) == 1
    assert "lostprune prune: error: --option takes KEY=VALUE" in capsys.readouterr().err
    assert main(["prune", str(path), "--method", "ft", "--ratio", "0.5", "--option", "roundto=4"]) == 1
    assert "unexpected options: roundto" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unexpected options: roundto"):  # --debug: the exception itself
        main(["--debug", "prune", str(path), "--method", "ft", "--ratio", "0.5", "--option", "roundto=4"])
    with pytest.raises(TypeError, match="unexpected options: roundto"):
        main(["prune", str(path), "--method", "ft", "--ratio", "0.5", "--option", "roundto=4", "--debug"])


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (
            ["run", "no-such-config"],
            1,
            "lostprune run: error: config 'no-such-config' not found (shipped configs: ",
        ),
        (
            ["run", "tiny", "--workers", "0"],
            1,
            "lostprune run: error: workers must be an integer >= 1, got 0",
        ),
        (
            ["run", "tiny", "--threads", "-1"],
            1,
            "lostprune run: error: threads must be an integer >= 1, got -1",
        ),
        (["report", "/no/such/dir"], 1, "lostprune report: error: no results store at /no/such/dir "),
        (["prune", "/no/such.pt", "--method", "wt", "--ratio", "0.5"], 1, "lostprune prune: error: "),
        (
            ["run"],
            2,
            "lostprune run: error: the following arguments are required: config (see lostprune run --help)",
        ),
        (["frobnicate"], 2, "lostprune: error: argument command: invalid choice: 'frobnicate'"),
    ],
)
def test_cli_errors_are_one_line_on_stderr(argv, code, message, capsys):
    try:
        returned = main(argv)
    except SystemExit as exc:  # usage errors exit from argparse
        returned = exc.code
    err = capsys.readouterr().err
    assert returned == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), err


def test_cli_bad_config_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe name: x")
    result = subprocess.run(
        [sys.executable, "-m", "lostprune.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "not UTF-8 text" in result.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "lostprune.cli", "run", str(bad), "--debug"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr

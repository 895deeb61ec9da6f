"""Figures (:mod:`pushforward.plots`): written without touching matplotlib's backend."""

import subprocess
import sys

import torch

from pushforward import plots


def test_importing_plots_leaves_the_backend_alone():
    """A user's backend (here svg, chosen before the import) is still the backend after it."""
    code = ("import matplotlib; matplotlib.use('svg'); import pushforward.plots, pushforward.cli; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"


def test_figures_are_written_as_png_without_pyplot(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0, "valid_log_likelihood": -1.2},
               {"epoch": 2, "train_loss": 0.8, "valid_log_likelihood": -1.0}]
    plots.learning_curve(history, tmp_path / "curve.png")
    plots.image_grid(torch.rand(5, 1, 3, 4) * 256, (1, 3, 4), 256, tmp_path / "grid.png")
    for name in ("curve.png", "grid.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "matplotlib.pyplot" not in sys.modules or not __import__("matplotlib.pyplot").pyplot.get_fignums()

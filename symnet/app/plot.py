"""Training curves as a PNG: mean loss and test accuracy per epoch (``symnet train --plot``).

Matplotlib is the optional ``plot`` extra.  Figures are drawn on the Agg canvas directly,
without ``pyplot``, so no display is needed and the global backend is left alone.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
    >>> plot_curves([(1, 2.1, 0.40), (2, 1.7, 0.62), (3, 1.2, 0.81)], path)
    >>> open(path, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

INSTALL = "pip install 'symnet[plot]' (matplotlib)"


def require() -> None:
    """Fail early, before any training, when matplotlib is not installed."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise ValueError(f"--plot needs matplotlib, which is not installed: {INSTALL}") from None


def plot_curves(history: Sequence[tuple[int, float, float]], path: str | os.PathLike[str],
                metric: str = "test accuracy") -> None:
    """Write loss (left) and ``metric`` (right) against the epoch to ``path`` (PNG).

    ``history`` holds ``(epoch, mean training loss, metric)`` rows, as `TrainResult` does.
    """
    require()  # the optional plot extra: imported here, so training never waits for it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not history:
        raise ValueError("--plot: no finished epoch to plot")
    epochs, losses, scores = zip(*history)
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, values, label, color in zip(figure.subplots(1, 2), (losses, scores),
                                          ("training loss", metric), ("tab:red", "tab:blue")):
        axes.plot(epochs, values, marker="o", markersize=3, color=color)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(label)
        axes.set_title(label)
        axes.grid(alpha=0.3)
    figure.savefig(os.fspath(path), format="png", dpi=100)

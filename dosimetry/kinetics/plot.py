"""Plot fitted time-activity curves (matplotlib Agg canvas, no pyplot state), written atomically."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dosimetry import units
from dosimetry.errors import DependencyError
from dosimetry.io.atomic import atomic_path
from dosimetry.kinetics.fit import KineticFit, ModelName


def plot_fits(fits: Sequence[KineticFit], path: str | os.PathLike[str], *,
              log_y: bool = False, title: str = "") -> Path:
    """Draw one panel per VOI: data ± σ, every candidate fit, the chosen one bold.

    Parameters
    ----------
    fits : sequence of KineticFit
        One per VOI.
    path : path
        Output file; the format follows its suffix (``.png``, ``.pdf``, ``.svg``).
    log_y : bool
        Logarithmic activity axis.
    title : str
        Figure title.

    Returns
    -------
    Path
        The written file (written under a temporary name, then renamed).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a core dependency
        raise DependencyError("plotting needs matplotlib (pip install matplotlib)") from exc
    n = max(len(fits), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.0 * cols, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, fit in enumerate(fits):
        ax = fig.add_subplot(rows, cols, i + 1)
        _panel(ax, fit, log_y)
    if title:
        fig.suptitle(title)
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    return target


def _panel(ax, fit: KineticFit, log_y: bool) -> None:
    t_h = units.s_to_hours(fit.tac.times)
    a = units.bq_to_mbq(fit.tac.activity)
    s = units.bq_to_mbq(np.array(fit.sigma_bq))
    t_max = float(t_h[-1]) * 1.6
    grid_h = np.linspace(0.0, t_max, 400)
    grid_s = units.hours_to_s(grid_h)
    ax.errorbar(t_h, a, yerr=s, fmt="o", color="black", capsize=3, zorder=5,
                label="data ± σ" + (" (assumed)" if fit.sigma_assumed else ""))
    for cand in fit.candidates:
        if not cand.success:
            continue
        chosen = fit.success and cand.model is fit.model
        if cand.model is ModelName.TRAPEZOID:
            curve = fit.evaluate(grid_s) if chosen else None
        else:
            curve = cand.evaluate(grid_s)
        if curve is None:
            continue
        label = str(cand.model)
        if np.isfinite(cand.akaike_weight):
            label += f" (w={cand.akaike_weight:.2f})"
        ax.plot(grid_h, units.bq_to_mbq(curve), lw=2.8 if chosen else 1.0,
                ls="-" if chosen else "--", alpha=1.0 if chosen else 0.7,
                label=label + (" ★" if chosen else ""))
    if log_y:
        ax.set_yscale("log")
        pos = a[a > 0]
        if pos.size:
            ax.set_ylim(bottom=pos.min() / 20)
    else:
        ax.set_ylim(bottom=0)
    tia = units.bq_s_to_mbq_h(fit.tia_bq_s)
    sig = units.bq_s_to_mbq_h(fit.tia_sigma_bq_s)
    ax.set_title(f"{fit.voi}: {fit.model}, TIA {tia:.4g} ± {sig:.3g} MBq·h"
                 if fit.success else f"{fit.voi}: fit failed", fontsize=9)
    ax.set_xlabel("time after injection [h]")
    ax.set_ylabel("activity [MBq]")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

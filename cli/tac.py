"""``rptdose tac``: fit time-activity curves from a CSV file, choose a model, integrate.

Thin layer: parse, call :mod:`dosimetry.kinetics`, print. Register it with
``app.add_typer(tac_app, name="tac")`` (``from cli.tac import tac_app``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dosimetry import units
from dosimetry.errors import FitError

tac_app = typer.Typer(
    help="Time-activity curves: fit with AICc model selection, integrate to the TIA ± σ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@tac_app.callback()
def _tac_root() -> None:
    """Time-activity curves: fit with AICc model selection, integrate to the TIA ± σ."""


def _mbq_h(x: float) -> float | None:
    v = units.bq_s_to_mbq_h(x)
    return v if math.isfinite(v) else None


def _half_lives_h(fit) -> list[float]:
    """Effective half-lives [h] of the chosen model's exponential terms."""
    from dosimetry.kinetics import models as km

    if not fit.success or not fit.params:
        return []
    _, k, _, _ = km.get_model(fit.model).terms(np.array(list(fit.params.values())))
    return [float(units.s_to_hours(math.log(2) / r)) for r in k]


def _voi_record(fit, budget, mc, calib: float) -> dict[str, Any]:
    from dosimetry.kinetics.fit import clean_json

    rec: dict[str, Any] = {
        "voi": fit.voi,
        "success": fit.success,
        "message": fit.message,
        "model": str(fit.model),
        "reason": fit.reason,
        "tia_mbq_h": _mbq_h(fit.tia_bq_s),
        "tia_sigma_mbq_h": _mbq_h(budget.sigma_bq_s) if budget else None,
        "tia_sigma_fit_mbq_h": _mbq_h(fit.tia_sigma_bq_s),
        "tia_sigma_mc_mbq_h": _mbq_h(mc.sigma_bq_s) if mc else None,
        "calibration_relative_sigma": calib,
        "params": fit.params,
        "param_sigmas": fit.sigmas,
        "effective_half_lives_h": _half_lives_h(fit),
        "aicc": fit.aicc,
        "akaike_weights": fit.akaike_weights,
        "extrapolated_fraction": fit.extrapolated_fraction,
        "goodness_of_fit": {"chi_square": fit.chi_square, "dof": fit.dof,
                            "reduced_chi_square": fit.reduced_chi_square,
                            "r_squared": fit.r_squared},
        "sigma_assumed": fit.sigma_assumed,
        "fallback": fit.fallback,
        "warnings": list(fit.warnings),
        "candidates": [c.to_dict() for c in fit.candidates],
    }
    return clean_json(rec)


def _fmt(x: float, spec: str = ".4g") -> str:
    return format(x, spec) if math.isfinite(x) else "–"


def _print_human(out: Console, fit, budget, mc) -> None:
    t = Table("model", "k", "χ²", "AICc", "weight", "accepted", "TIA [MBq·h]", "notes",
              title=f"VOI {escape(fit.voi)}", title_justify="left")
    for c in fit.candidates:
        chosen = fit.success and c.model is fit.model
        style = "bold green" if chosen else None
        t.add_row(("★ " if chosen else "  ") + str(c.model), str(c.n_params),
                  _fmt(c.chi_square, ".3g"), _fmt(c.aicc, ".2f"), _fmt(c.akaike_weight, ".2f"),
                  "yes" if c.accepted else "no",
                  _fmt(units.bq_s_to_mbq_h(c.tia_bq_s)),
                  escape("; ".join(c.rejection_reasons)
                         or ("chosen" if chosen else "accepted" if c.accepted else "")),
                  style=style)
    out.print(t)
    if not fit.success:
        out.print(f"[red]fit failed:[/red] {escape(fit.message)}")
        return
    out.print(f"chosen: [bold]{fit.model}[/bold] — {escape(fit.reason)}")
    line = (f"TIA {units.bq_s_to_mbq_h(fit.tia_bq_s):.5g} ± "
            f"{units.bq_s_to_mbq_h(budget.sigma_bq_s):.3g} MBq·h "
            f"({budget.relative * 100:.1f} %; fit {units.bq_s_to_mbq_h(fit.tia_sigma_bq_s):.3g}")
    if budget.calibration_relative:
        line += f", calibration {budget.calibration_relative * 100:.1f} %"
    if mc is not None:
        line += (f", Monte Carlo fit σ {units.bq_s_to_mbq_h(mc.sigma_bq_s):.3g} "
                 f"({mc.n_samples} draws)")
    line += f"); extrapolated beyond the last sample: {fit.extrapolated_fraction * 100:.1f} %"
    out.print(line)
    hl = _half_lives_h(fit)
    if hl:
        out.print("effective half-lives: " + ", ".join(f"{h:.4g} h" for h in hl))


@tac_app.command("fit")
def fit_cmd(
    csv_path: Annotated[Path, typer.Argument(
        metavar="TAC.csv",
        help="CSV with columns time_h, activity_mbq[, sigma_mbq][, voi].")],
    nuclide: Annotated[str, typer.Option(help="Nuclide (physical decay bound and tail).")]
    = "Lu-177",
    model: Annotated[str, typer.Option(
        help="auto (AICc selection) | mono | mono-uptake | biexp | triexp | trapezoid.")]
    = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
    = False,
    plot: Annotated[Path | None, typer.Option(help="Write a plot of data and fits (.png).")]
    = None,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic activity axis in the plot.")]
    = False,
    seed: Annotated[int, typer.Option(help="Seed of the Monte Carlo resampling.")] = 0,
    mc_samples: Annotated[int, typer.Option(
        help="Monte Carlo resamples for the σ cross-check (0: none).", min=0)] = 200,
    relative_sigma_percent: Annotated[float, typer.Option(
        help="Per-sample σ [%] when the CSV has no sigma_mbq column.", min=0.0)] = 10.0,
    calibration_sigma_percent: Annotated[float, typer.Option(
        help="Calibration-factor σ [%], fully correlated across timepoints.", min=0.0)] = 0.0,
    trapezoid_head: Annotated[str, typer.Option(
        help="Trapezoid before the first sample: zero (rise from 0) | constant.")] = "zero",
) -> None:
    """Fit each VOI's time-activity curve, choose a model by AICc, report TIA ± σ."""
    from dosimetry.errors import InputError
    from dosimetry.kinetics import (
        ModelName,
        TrapezoidHead,
        fit_tac,
        monte_carlo_tia,
        read_tac_csv,
        tia_uncertainty,
    )
    from dosimetry.nuclides import get_nuclide

    try:
        model_name = ModelName(model)
    except ValueError:
        raise InputError(f"--model {model!r} is not one of "
                         f"{', '.join(m.value for m in ModelName)}") from None
    try:
        head = TrapezoidHead(trapezoid_head)
    except ValueError:
        raise InputError(f"--trapezoid-head {trapezoid_head!r} is not one of "
                         f"{', '.join(h.value for h in TrapezoidHead)}") from None
    if relative_sigma_percent <= 0:
        raise InputError(f"--relative-sigma-percent must be > 0, got {relative_sigma_percent}")
    nuc = get_nuclide(nuclide)
    lam = nuc.decay_constant_per_s
    tacs = read_tac_csv(csv_path)
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    seeds = np.random.SeedSequence(seed).spawn(len(tacs))
    calib = calibration_sigma_percent / 100.0
    records, fits, failed = [], [], []
    for (name, tac), ss in zip(tacs.items(), seeds, strict=True):
        with warnings.catch_warnings(record=True):
            # Fallbacks are announced as warnings *and* kept in fit.warnings, printed below.
            warnings.simplefilter("always")
            fit = fit_tac(tac, lam, model_name, relative_sigma=relative_sigma_percent / 100.0,
                          trapezoid_head=head)
            mc = (monte_carlo_tia(fit, np.random.default_rng(ss), mc_samples)
                  if fit.success and mc_samples >= 2 else None)
        budget = (tia_uncertainty(fit, calibration_relative_sigma=calib, monte_carlo=mc)
                  if fit.success else None)
        fits.append(fit)
        records.append(_voi_record(fit, budget, mc, calib))
        if not fit.success:
            failed.append(f"{name}: {fit.message}")
        if not as_json:
            _print_human(out, fit, budget, mc)
            for w in fit.warnings:
                err.print("[yellow]warning:[/yellow] " + escape(f"{name}: {w}"))
            out.print()
    if as_json:
        doc = {"source": str(csv_path), "nuclide": nuc.name, "decay_constant_per_s": lam,
               "requested_model": str(model_name), "seed": seed, "mc_samples": mc_samples,
               "vois": records}
        typer.echo(json.dumps(doc, indent=2, allow_nan=False))
    if plot is not None:
        from dosimetry.kinetics.plot import plot_fits

        plot_fits(fits, plot, log_y=log_y, title=f"{csv_path.name} ({nuc.name})")
        if not as_json:
            out.print(f"wrote {plot}")
    if failed:
        raise FitError("fit failed for " + "; ".join(failed))

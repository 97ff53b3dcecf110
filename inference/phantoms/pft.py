"""Pulmonary function tests that follow ILD extent like the SSc cohorts of Chassagnon et al.

Cross-sectional model (a Gaussian copula): with ``z_E = Φ⁻¹(F_E(extent))`` the normal score of
the extent in the reference extent distribution (median 12.7 %, IQR 4.0-24.7 %), each PFT has
the normal score ``z_m = -ρ_m z_E + √(1-ρ_m²) ε_m`` and the value ``Q_m(Φ(z_m))`` where ``Q_m``
follows the cohort quartiles (TLC 91 [83-105], FVC 78 [64-96], DLCO 47 [34-67],
KCO 66 [55-74] % predicted). ``ρ_m = 2 sin(π|ρ_s|/6)`` gives the Spearman correlations
-0.76 (DLCO), -0.70 (TLC), -0.62 (FVC), -0.54 (KCO) for a cohort whose extents follow ``F_E``.

Longitudinal model: changes in % predicted driven by the change in extent, the regional
shrinkage (log-Jacobian) and fibrotic volume loss, plus measurement noise. Functional worsening
(ATS/ERS): FVC drop ≥ 10 or DLCO drop ≥ 15 points of % predicted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from inference.phantoms._grid import F64

QUANTILE_LEVELS = np.array([0.0, 0.05, 0.25, 0.50, 0.75, 0.95, 1.0])
EXTENT_QUANTILES_PCT = np.array([0.2, 0.9, 4.0, 12.7, 24.7, 42.0, 60.0])
PFT_QUANTILES = {
    "fvc": np.array([35.0, 47.0, 64.0, 78.0, 96.0, 116.0, 135.0]),
    "tlc": np.array([45.0, 66.0, 83.0, 91.0, 105.0, 122.0, 140.0]),
    "dlco": np.array([15.0, 21.0, 34.0, 47.0, 67.0, 88.0, 110.0]),
    "kco": np.array([28.0, 40.0, 55.0, 66.0, 74.0, 88.0, 105.0]),
}
SPEARMAN_WITH_EXTENT = {"fvc": -0.62, "tlc": -0.70, "dlco": -0.76, "kco": -0.54}
PFT_NAMES = ("fvc", "tlc", "dlco", "kco")
# correlation of the residuals (volumes together, gas transfer together)
_RESIDUAL_CORR = np.array(
    [[1.0, 0.6, 0.3, 0.0], [0.6, 1.0, 0.3, 0.0], [0.3, 0.3, 1.0, 0.5], [0.0, 0.0, 0.5, 1.0]]
)

FVC_WORSENING_DROP = 10.0
DLCO_WORSENING_DROP = 15.0

CSV_HEADER = (
    "patient_id,date,fvc_pct_predicted,tlc_pct_predicted,dlco_pct_predicted,kco_pct_predicted,"
    "fvc_l,tlc_l,dlco_mmol_min_kpa,kco_mmol_min_kpa_l"
)


def extent_from_level(level: F64 | float) -> F64:
    """Reference extent distribution's quantile function (% of lung volume)."""
    return np.asarray(np.interp(level, QUANTILE_LEVELS, EXTENT_QUANTILES_PCT))


def level_from_extent(extent_pct: F64 | float) -> F64:
    """Reference extent distribution's CDF, kept inside (0.002, 0.998)."""
    return np.clip(np.interp(extent_pct, EXTENT_QUANTILES_PCT, QUANTILE_LEVELS), 0.002, 0.998)


def sample_cohort_extents(rng: np.random.Generator, count: int) -> F64:
    """``count`` baseline extents (%) from the reference distribution (stratified, shuffled)."""
    levels = (np.arange(count) + rng.uniform(0.0, 1.0, count)) / max(count, 1)
    rng.shuffle(levels)
    return extent_from_level(levels)


@dataclass(frozen=True)
class PftLatent:
    """A patient's PFT residuals (normal scores, correlated across tests)."""

    fvc: float
    tlc: float
    dlco: float
    kco: float


def draw_latent(rng: np.random.Generator) -> PftLatent:
    chol = np.linalg.cholesky(_RESIDUAL_CORR)
    e = chol @ rng.standard_normal(4)
    return PftLatent(*(float(v) for v in e))


def percent_predicted(extent_pct: float, latent: PftLatent) -> dict[str, float]:
    """% predicted FVC, TLC, DLCO, KCO for an ILD extent (%) and the patient's residuals."""
    z_extent = float(ndtri(level_from_extent(extent_pct)))
    out = {}
    for name in PFT_NAMES:
        rho = 2.0 * math.sin(math.pi * abs(SPEARMAN_WITH_EXTENT[name]) / 6.0)
        z = -rho * z_extent + math.sqrt(1.0 - rho * rho) * getattr(latent, name)
        out[name] = float(np.interp(ndtr(z), QUANTILE_LEVELS, PFT_QUANTILES[name]))
    return out


@dataclass(frozen=True)
class PredictedValues:
    """Reference values for a patient (ECSC-like linear equations; litres, mmol/min/kPa)."""

    fvc_l: float
    tlc_l: float
    dlco_mmol_min_kpa: float
    kco_mmol_min_kpa_l: float


def predicted_values(sex: str, age_years: float, height_cm: float) -> PredictedValues:
    h = height_cm / 100.0
    if sex == "M":
        fvc = 5.76 * h - 0.026 * age_years - 4.34
        tlc = 7.99 * h - 7.08
        dlco = 11.11 * h - 0.066 * age_years - 6.03
    else:
        fvc = 4.43 * h - 0.026 * age_years - 2.89
        tlc = 6.60 * h - 5.79
        dlco = 8.18 * h - 0.049 * age_years - 2.74
    return PredictedValues(fvc, tlc, dlco, dlco / max(tlc - 0.15, 1.0))


@dataclass(frozen=True)
class PftResult:
    """One PFT session: % predicted and absolute values (the columns of ``pft.csv``)."""

    fvc_pct_predicted: float
    tlc_pct_predicted: float
    dlco_pct_predicted: float
    kco_pct_predicted: float
    fvc_l: float
    tlc_l: float
    dlco_mmol_min_kpa: float
    kco_mmol_min_kpa_l: float

    @classmethod
    def from_percent(cls, pct: dict[str, float], predicted: PredictedValues) -> PftResult:
        p = {k: round(float(np.clip(v, 10.0, 160.0)), 1) for k, v in pct.items()}
        return cls(
            fvc_pct_predicted=p["fvc"],
            tlc_pct_predicted=p["tlc"],
            dlco_pct_predicted=p["dlco"],
            kco_pct_predicted=p["kco"],
            fvc_l=round(p["fvc"] / 100.0 * predicted.fvc_l, 2),
            tlc_l=round(p["tlc"] / 100.0 * predicted.tlc_l, 2),
            dlco_mmol_min_kpa=round(p["dlco"] / 100.0 * predicted.dlco_mmol_min_kpa, 2),
            kco_mmol_min_kpa_l=round(p["kco"] / 100.0 * predicted.kco_mmol_min_kpa_l, 3),
        )

    def percent(self) -> dict[str, float]:
        return {
            "fvc": self.fvc_pct_predicted,
            "tlc": self.tlc_pct_predicted,
            "dlco": self.dlco_pct_predicted,
            "kco": self.kco_pct_predicted,
        }

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def followup_percent(
    baseline: PftResult,
    rng: np.random.Generator,
    *,
    extent_change_pct: float,
    regional_log_jacobian: float,
    fibrotic_volume_loss: float,
) -> dict[str, float]:
    """Follow-up % predicted values from the baseline and the morphologic change.

    ``extent_change_pct``: follow-up minus baseline extent (points); ``regional_log_jacobian``:
    mean log-Jacobian of the regional (non-breathing) deformation over the shrinking region;
    ``fibrotic_volume_loss``: log lung-volume change due to fibrosis (≤ 0 when worsening).
    """
    d_ext, lj, vol = extent_change_pct, regional_log_jacobian, 100.0 * fibrotic_volume_loss
    base = baseline.percent()
    change = {
        "fvc": -1.0 * d_ext + 30.0 * lj + vol + rng.normal(0.0, 6.0),
        "tlc": -0.7 * d_ext + 20.0 * lj + vol + rng.normal(0.0, 5.0),
        "dlco": -1.4 * d_ext + 25.0 * lj + rng.normal(0.0, 7.0),
        "kco": -0.8 * d_ext + 10.0 * lj + rng.normal(0.0, 7.0),
    }
    return {k: base[k] + change[k] for k in PFT_NAMES}


def functional_worsening(baseline: PftResult, followup: PftResult) -> bool:
    """ATS/ERS: absolute FVC % predicted drop ≥ 10 or DLCO % predicted drop ≥ 15."""
    fvc_drop = baseline.fvc_pct_predicted - followup.fvc_pct_predicted
    dlco_drop = baseline.dlco_pct_predicted - followup.dlco_pct_predicted
    return bool(fvc_drop >= FVC_WORSENING_DROP - 1e-9 or dlco_drop >= DLCO_WORSENING_DROP - 1e-9)

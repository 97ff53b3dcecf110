"""Losses of Chassagnon et al. 2020: weighted cross-entropy per decoder plus a semantic term.

For a dual-decoder network (lung decoder ``l``, disease decoder ``d``), per pixel::

    L_l = - Σ_k ω_k y_{l,k} log p_{l,k}          k ∈ {background, lung},    ω = (1, 4)
    L_d = - Σ_m ω_m y_{d,m} log p_{d,m}          m ∈ {background, disease}, ω = (1, 65)
    L_s = - log(1 - p_{d,1}) · (1 - y_{l,1})     disease predicted outside the lung
    L   = ω_1 L_l + ω_2 L_d + ω_3 L_s            ω_1 = ω_2 = ω_3 = 1

each averaged over the (valid) pixels of the batch — the paper's sums are per pixel and do not
renormalise by the class weights, so neither do we (``torch.nn.functional.cross_entropy`` with
``weight=`` and ``reduction="mean"`` would divide by the summed weights instead).

About ``L_s``: the paper prints ``-log(p_{d,1}) · (1 - y_{l,1})``, which, taken literally,
*rewards* disease probability outside the lung and, against the disease term's ``-log(p_{d,0})``
at the same pixels, drives ``p_{d,1}`` to 0.5 everywhere outside the lung. Its stated intent is
the opposite ("penalizing detections of the disease class that were not also detected within
the lung class"), so we implement the penalty ``-log(p_{d,0}) = -log(1 - p_{d,1})`` on pixels
whose lung label is 0.

Shapes: logits ``[N, C, H, W]``; integer targets ``[N, H, W]``; optional ``valid`` ``[N, H, W]``
bool/float mask of annotated pixels (partially annotated reader contours), where 0 excludes a
pixel from every term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAPER_LUNG_WEIGHTS: tuple[float, float] = (1.0, 4.0)
PAPER_DISEASE_WEIGHTS: tuple[float, float] = (1.0, 65.0)
PAPER_TERM_WEIGHTS: tuple[float, float, float] = (1.0, 1.0, 1.0)
#: U-Net comparator (3 classes: background, lung without ILD, ILD): the paper's lung and
#: disease weights carried over to a single softmax.
UNET_CLASS_WEIGHTS: tuple[float, float, float] = (1.0, 4.0, 65.0)


def _mean_over_valid(per_pixel: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return per_pixel.mean()
    weight = valid.to(per_pixel.dtype)
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: Sequence[float],
    *,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``-Σ_c ω_c y_c log p_c`` per pixel, averaged over (valid) pixels.

    Args:
        logits: ``[N, C, H, W]`` unnormalised scores.
        target: ``[N, H, W]`` integer class indices in ``[0, C)``.
        class_weights: ``C`` weights ``ω_c``.
        valid: optional ``[N, H, W]`` mask; pixels where it is 0 do not count.

    Raises:
        ValueError: if the number of weights differs from ``C`` or shapes disagree.
    """
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"logits [N, C, H, W] and target [N, H, W] disagree: "
            f"{tuple(logits.shape)} vs {tuple(target.shape)}"
        )
    if len(class_weights) != logits.shape[1]:
        raise ValueError(f"{len(class_weights)} class weights for {logits.shape[1]} classes")
    weights = torch.as_tensor(list(class_weights), dtype=logits.dtype, device=logits.device)
    log_p = F.log_softmax(logits, dim=1)
    picked = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    per_pixel = -weights[target.long()] * picked
    return _mean_over_valid(per_pixel, valid)


def semantic_constraint(
    disease_logits: torch.Tensor,
    lung_target: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``-log(1 - p_disease) · (1 - y_lung)`` averaged over (valid) pixels (see module docs).

    Args:
        disease_logits: ``[N, 2, H, W]`` (background, disease).
        lung_target: ``[N, H, W]``, 1 inside the lung (ILD included), 0 outside.
        valid: optional ``[N, H, W]`` mask of pixels that count.
    """
    log_p_background = F.log_softmax(disease_logits, dim=1)[:, 0]
    outside = 1.0 - lung_target.to(disease_logits.dtype)
    return _mean_over_valid(-log_p_background * outside, valid)


@dataclass(frozen=True)
class AtlasNetLoss:
    """The total loss ``ω_1 L_l + ω_2 L_d + ω_3 L_s`` of the dual-decoder network.

    Attributes:
        lung_weights: ``ω_k`` of the lung decoder (background, lung).
        disease_weights: ``ω_m`` of the disease decoder (background, disease).
        term_weights: ``(ω_1, ω_2, ω_3)``.
    """

    lung_weights: tuple[float, float] = PAPER_LUNG_WEIGHTS
    disease_weights: tuple[float, float] = PAPER_DISEASE_WEIGHTS
    term_weights: tuple[float, float, float] = PAPER_TERM_WEIGHTS

    def terms(
        self,
        lung_logits: torch.Tensor,
        disease_logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The three unweighted terms and the weighted ``total``.

        Args:
            lung_logits: ``[N, 2, H, W]``.
            disease_logits: ``[N, 2, H, W]``.
            labels: ``[N, H, W]`` label map (0 background, 1 lung without ILD, 2 ILD).
            valid: optional ``[N, H, W]`` annotated-pixel mask.
        """
        lung_target = (labels >= 1).long()
        disease_target = (labels == 2).long()
        lung = weighted_cross_entropy(lung_logits, lung_target, self.lung_weights, valid=valid)
        disease = weighted_cross_entropy(
            disease_logits, disease_target, self.disease_weights, valid=valid
        )
        semantic = semantic_constraint(disease_logits, lung_target, valid=valid)
        w1, w2, w3 = self.term_weights
        return {
            "lung": lung,
            "disease": disease,
            "semantic": semantic,
            "total": w1 * lung + w2 * disease + w3 * semantic,
        }

    def __call__(
        self,
        lung_logits: torch.Tensor,
        disease_logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.terms(lung_logits, disease_logits, labels, valid=valid)["total"]

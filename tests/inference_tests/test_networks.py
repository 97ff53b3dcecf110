"""Networks and losses of Chassagnon et al. 2020: shapes, the paper's architecture, the loss terms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from inference.networks.atlasnet import DualDecoderSegNet, scaled_channels
from inference.networks.losses import (
    PAPER_DISEASE_WEIGHTS,
    PAPER_LUNG_WEIGHTS,
    AtlasNetLoss,
    semantic_constraint,
    weighted_cross_entropy,
)
from inference.networks.unet import UNet2D

TINY = 1 / 32


def test_paper_width_gives_64_to_1024_channels_in_five_blocks() -> None:
    assert scaled_channels(64, 1.0, 5) == [64, 128, 256, 512, 1024]
    assert scaled_channels(64, 1 / 8, 5) == [8, 16, 32, 64, 128]


def test_segnet_has_five_double_conv_blocks_and_four_poolings() -> None:
    net = DualDecoderSegNet(width=TINY)
    assert len(net.encoder) == 5
    for block in net.encoder:
        convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
        norms = [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(convs) == 2 and len(norms) == 2
    assert net.channels == [2, 4, 8, 16, 32]
    assert net.size_multiple == 16  # four 2x2 poolings


@pytest.mark.parametrize("upsampling", ["indices", "nearest"])
@pytest.mark.parametrize("size", [32, 48])
def test_segnet_returns_lung_and_disease_logits_at_input_size(size: int, upsampling: str) -> None:
    net = DualDecoderSegNet(width=TINY, upsampling=upsampling).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        lung, disease = net(torch.randn(2, 1, size, size))
    assert lung.shape == (2, 2, size, size)
    assert disease.shape == (2, 2, size, size)


@pytest.mark.parametrize("upsampling", ["indices", "nearest"])
def test_decoders_unpool_at_the_pooling_indices_or_repeat_each_value(upsampling: str) -> None:
    net = DualDecoderSegNet(width=TINY, upsampling=upsampling).eval()  # type: ignore[arg-type]
    seen: list[torch.Tensor] = []
    net.disease_decoder.refine[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        net(torch.randn(1, 1, 32, 32))
    upsampled = seen[0]  # the last x2 upsampling, [1, C, 32, 32]
    blocks = upsampled.reshape(*upsampled.shape[:2], 16, 2, 16, 2).permute(0, 1, 2, 4, 3, 5)
    blocks = blocks.reshape(*upsampled.shape[:2], 16, 16, 4)
    assert upsampled.abs().sum() > 0
    if upsampling == "indices":  # one value per 2x2 cell, where the encoder's maximum was
        assert int((blocks != 0).sum(-1).max()) == 1
    else:  # the coarse value in all four
        assert torch.equal(blocks, blocks[..., :1].expand_as(blocks))


def test_the_two_decoders_are_separate_branches() -> None:
    net = DualDecoderSegNet(width=TINY)
    lung_params = {id(p) for p in net.lung_decoder.parameters()}
    disease_params = {id(p) for p in net.disease_decoder.parameters()}
    assert lung_params and disease_params and not lung_params & disease_params


def test_unet_returns_three_class_logits() -> None:
    net = UNet2D(width=TINY).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("factory", [DualDecoderSegNet, UNet2D])
def test_sizes_that_cannot_be_pooled_four_times_are_refused(factory: type) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        factory(width=TINY)(torch.randn(1, 1, 40, 40))


@pytest.mark.parametrize(
    "bad", [{"width": 0.0}, {"depth": 0}, {"base_channels": 0}, {"upsampling": "bilinear"}]
)
def test_bad_hyper_parameters_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DualDecoderSegNet(**bad)  # type: ignore[arg-type]


def test_weighted_cross_entropy_is_the_papers_per_pixel_sum() -> None:
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 1.5]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[0, 1]]])
    log_p = torch.log_softmax(logits, dim=1)
    expected = -(1.0 * log_p[0, 0, 0, 0] + 65.0 * log_p[0, 1, 0, 1]) / 2
    got = weighted_cross_entropy(logits, target, PAPER_DISEASE_WEIGHTS)
    assert float(got) == pytest.approx(float(expected))


def test_weighted_cross_entropy_ignores_pixels_outside_valid() -> None:
    logits = torch.randn(1, 2, 4, 4)
    target = torch.randint(0, 2, (1, 4, 4))
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[0, :2] = True
    partial = weighted_cross_entropy(logits, target, (1.0, 4.0), valid=valid)
    whole = weighted_cross_entropy(logits[:, :, :2], target[:, :2], (1.0, 4.0))
    assert float(partial) == pytest.approx(float(whole))


def test_weight_count_must_match_classes() -> None:
    with pytest.raises(ValueError, match="class weights"):
        weighted_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2), (1.0, 2.0))


def _disease_logits(p_disease: float) -> torch.Tensor:
    logit = math.log(p_disease / (1 - p_disease))
    return torch.tensor([0.0, logit]).view(1, 2, 1, 1)


def test_semantic_term_penalises_disease_outside_the_lung_only() -> None:
    outside = torch.zeros(1, 1, 1)
    inside = torch.ones(1, 1, 1)
    low, high = _disease_logits(0.1), _disease_logits(0.9)
    assert float(semantic_constraint(high, outside)) > float(semantic_constraint(low, outside))
    assert float(semantic_constraint(high, outside)) == pytest.approx(-math.log(0.1), rel=1e-5)
    assert float(semantic_constraint(high, inside)) == 0.0


def test_total_loss_sums_the_three_terms_with_unit_weights() -> None:
    torch.manual_seed(0)
    lung, disease = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    terms = AtlasNetLoss().terms(lung, disease, labels)
    assert float(terms["total"]) == pytest.approx(
        float(terms["lung"] + terms["disease"] + terms["semantic"])
    )
    assert AtlasNetLoss().lung_weights == PAPER_LUNG_WEIGHTS == (1.0, 4.0)
    assert AtlasNetLoss().disease_weights == (1.0, 65.0)


def test_a_few_sgd_steps_reduce_the_atlasnet_loss() -> None:
    torch.manual_seed(0)
    net = DualDecoderSegNet(width=TINY)
    images = torch.randn(4, 1, 16, 16)
    labels = (images[:, 0] < 0).long() + (images[:, 0] < -1).long()
    criterion = AtlasNetLoss()
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(5):
        lung, disease = net(images)
        loss = criterion(lung, disease, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_removing_class_weights_gives_back_the_unweighted_probabilities() -> None:
    import numpy as np

    from inference.networks.slicewise import remove_class_weights

    # A weighted cross-entropy is minimised by p~_c ∝ w_c p_c; removal must return p.
    p = torch.tensor([[0.90, 0.08, 0.02], [0.30, 0.60, 0.10]]).T[None, :, :, None]  # [1,3,2,1]
    weights = (1.0, 4.0, 65.0)
    w = torch.tensor(weights)[None, :, None, None]
    shifted = p * w / (p * w).sum(dim=1, keepdim=True)
    assert shifted[0, 2, 0, 0] > 0.5  # argmax of the shifted softmax calls the rare class
    back = remove_class_weights(shifted, weights, axis=1)
    assert isinstance(back, torch.Tensor)
    assert torch.allclose(back, p, atol=1e-6)
    assert back[0].argmax(dim=0).flatten().tolist() == [0, 1]
    back_np = remove_class_weights(shifted[0].numpy(), weights, axis=0)
    assert isinstance(back_np, np.ndarray) and back_np.dtype == np.float32
    np.testing.assert_allclose(back_np, p[0].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="3 class weights for 2"):
        remove_class_weights(shifted[:, :2], weights, axis=1)
    with pytest.raises(ValueError, match="positive"):
        remove_class_weights(shifted, (1.0, 0.0, 2.0), axis=1)


@pytest.mark.parametrize("specks", [False, True])
def test_the_body_is_the_largest_tissue_component_with_its_holes_filled(specks: bool) -> None:
    from inference.networks.slicewise import body_mask

    hu = np.full((96, 96, 96), -1000.0, np.float32)
    hu[8:88, 20:76, 20:76] = 40.0  # the body
    hu[8:88, 35:60, 30:45] = -850.0  # a lung inside it
    hu[8:88, 85:90, 10:86] = 300.0  # the table, apart from the body
    if specks:  # more than 65 535 one-voxel specks of tissue in the air: 32-bit labels
        k, j, i = np.indices(hu.shape)
        checker = (k + j + i) % 2 == 0  # no two share a face
        air = (k < 6) | (k >= 90) | (j < 14)
        hu[checker & air] = 100.0
        assert ndimage.label(hu > -500)[1] > 65_535
    body = body_mask(hu)
    expected = np.zeros(hu.shape, bool)
    expected[8:88, 20:76, 20:76] = True
    assert np.array_equal(body, expected)

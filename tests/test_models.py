"""Backbones, decoders and task heads: output shapes on both backbones and two image sizes."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mtlrun.engine import Run
from mtlrun.errors import UserError
from mtlrun.models.backbones import ConvNet, ResNet18
from mtlrun.models.decoders import UpsampleDecoder
from mtlrun.models.multitask import MultiTaskModel

BuildRun = Callable[..., Run]

BACKBONES = ["cnn", "resnet18"]
IMAGE_SIZES = [32, 64]
BATCH = 2


@dataclass
class ForwardPass:
    """A run with the cls, seg and gen tasks and its outputs on a batch of random images."""

    run: Run
    features: torch.Tensor
    outputs: dict[str, Any]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.run.data.info.image_size


def forward(run: Run) -> tuple[torch.Tensor, dict[str, Any]]:
    images = torch.rand(BATCH, 3, *run.data.info.image_size)
    run.model.eval()
    with torch.no_grad():
        return run.model(images)


@pytest.fixture(scope="module", params=[(b, s) for b in BACKBONES for s in IMAGE_SIZES], ids=str)
def passed(
    request: pytest.FixtureRequest,
    build_tiny_run: BuildRun,
    tmp_path_factory: pytest.TempPathFactory,
) -> ForwardPass:
    backbone, size = request.param
    run = build_tiny_run(
        tmp_path_factory.mktemp("heads"),
        f"backbone={backbone}",
        f"dataset.image_size={size}",
        "tasks=[cls,seg,gen]",
    )
    return ForwardPass(run, *forward(run))


def test_backbone_features_have_the_stated_stride(passed: ForwardPass) -> None:
    backbone = passed.run.model.backbone
    height, width = passed.image_size
    expected = (BATCH, backbone.out_channels, height // backbone.stride, width // backbone.stride)
    assert passed.features.shape == expected


def test_classification_head_gives_one_logit_per_class(passed: ForwardPass) -> None:
    assert passed.outputs["cls"].shape == (BATCH, passed.run.data.info.num_classes["cls"])


def test_segmentation_head_gives_class_maps_at_input_resolution(passed: ForwardPass) -> None:
    classes = passed.run.data.info.num_classes["seg"]
    assert passed.outputs["seg"].shape == (BATCH, classes, *passed.image_size)


def test_generation_head_gives_images_in_unit_range(passed: ForwardPass) -> None:
    image = passed.outputs["gen"]["image"]
    assert set(passed.outputs["gen"]) == {"image"}
    assert image.shape == (BATCH, 3, *passed.image_size)
    assert image.min() >= 0 and image.max() <= 1


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_vae_head_gives_image_and_latent_statistics(
    backbone: str, size: int, build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    run = build_tiny_run(
        tmp_path,
        f"backbone={backbone}",
        f"dataset.image_size={size}",
        "tasks=[gen]",
        "tasks.gen.variant=vae",
        "tasks.gen.latent_channels=5",
    )
    _, outputs = forward(run)
    stride = run.model.backbone.stride
    latent = (BATCH, 5, size // stride, size // stride)
    assert outputs["gen"]["image"].shape == (BATCH, 3, size, size)
    assert outputs["gen"]["mean"].shape == latent
    assert outputs["gen"]["log_variance"].shape == latent
    samples = run.tasks["gen"].head.sample(3, torch.Generator().manual_seed(0))
    assert samples.shape == (3, 3, size, size)
    assert samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize(("channels", "stride"), [((8,), 1), ((8, 16), 2), ((8, 8, 8, 16), 8)])
def test_convnet_stride_follows_its_stages(channels: tuple[int, ...], stride: int) -> None:
    network = ConvNet(channels=list(channels), blocks_per_stage=1)
    features = network(torch.rand(1, 3, 32, 32))
    assert network.stride == stride and network.out_channels == channels[-1]
    assert features.shape == (1, channels[-1], 32 // stride, 32 // stride)


@pytest.mark.parametrize(("small_input", "stride"), [(True, 8), (False, 32)])
def test_resnet18_stride(small_input: bool, stride: int) -> None:
    network = ResNet18(small_input=small_input)
    with torch.no_grad():
        features = network.eval()(torch.rand(1, 3, 64, 64))
    assert network.stride == stride
    assert features.shape == (1, network.out_channels, 64 // stride, 64 // stride)


def test_bad_convnet_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="channels"):
        ConvNet(channels=[])
    with pytest.raises(UserError, match="blocks_per_stage"):
        ConvNet(blocks_per_stage=0)


def test_pretrained_resnet_without_cached_weights_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is downloaded: missing weights are an error that says where to put them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=str(tmp_path)):
        ResNet18(pretrained=True)


@pytest.mark.parametrize("stride", [4, 8])
def test_decoder_restores_input_resolution(stride: int) -> None:
    decoder = UpsampleDecoder(in_channels=12, hidden=32, out_channels=5, stride=stride)
    assert decoder(torch.rand(2, 12, 3, 4)).shape == (2, 5, 3 * stride, 4 * stride)


def test_decoder_rejects_a_stride_that_is_not_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        UpsampleDecoder(in_channels=8, hidden=8, out_channels=1, stride=6)


def test_shared_parameters_are_the_backbone_only() -> None:
    backbone, head = nn.Linear(3, 4), nn.Linear(4, 2)
    model = MultiTaskModel(backbone, {"task": head})
    shared = {id(parameter) for parameter in model.shared_parameters()}
    assert shared == {id(parameter) for parameter in backbone.parameters()}
    backbone.bias.requires_grad_(False)
    assert [id(p) for p in model.shared_parameters()] == [id(backbone.weight)]

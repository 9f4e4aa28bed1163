"""ResNet backbones: feature shapes for every depth, stem, output stride and neck; the
stages + neck contract; pretrained weights from the local cache only."""

from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtlrun.cli import config_dir
from mtlrun.errors import UserError
from mtlrun.models.backbones import ResNet

WIDTH = {18: 512, 34: 512, 50: 2048}
HEIGHT, BREADTH = 32, 64  # a non-square input, so height and width cannot be swapped


def features(network: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return network.eval()(torch.rand(2, 3, HEIGHT, BREADTH))


def assert_shape(network: ResNet, output: torch.Tensor, channels: int, stride: int) -> None:
    assert (network.out_channels, network.stride) == (channels, stride)
    assert output.shape == (2, channels, HEIGHT // stride, BREADTH // stride)


@pytest.mark.parametrize(
    ("depth", "output_stride"), [(18, None), (18, 16), (18, 8), (34, None), (50, None), (50, 8)]
)
def test_dilation_sets_the_output_stride(depth: int, output_stride: int | None) -> None:
    network = ResNet(depth, output_stride=output_stride)
    assert_shape(network, features(network), WIDTH[depth], output_stride or 32)


@pytest.mark.parametrize(("depth", "output_stride"), [(18, 2), (50, 4)])
def test_small_input_stem_with_dilation(depth: int, output_stride: int) -> None:
    network = ResNet(depth, small_input=True, output_stride=output_stride)
    assert_shape(network, features(network), WIDTH[depth], output_stride)


@pytest.mark.parametrize("depth", [18, 50])
def test_fpn_neck_reads_every_stage_at_layer1_stride(depth: int) -> None:
    network = ResNet(depth, neck="fpn", neck_channels=32)
    assert_shape(network, features(network), 32, 4)


@pytest.mark.parametrize(("depth", "output_stride"), [(34, 8), (50, 16)])
def test_aspp_neck_on_the_dilated_last_stage(depth: int, output_stride: int) -> None:
    network = ResNet(depth, output_stride=output_stride, neck="aspp", neck_channels=48)
    assert_shape(network, features(network), 48, output_stride)
    aspp = network.decoder.aspp
    rates = [branch[0].dilation[0] for branch in list(aspp.convs)[1:-1]]
    assert rates == [96 // output_stride * factor for factor in (1, 2, 3)]


def test_forward_is_the_stages_in_order_then_the_neck() -> None:
    """The contract cross-stitch sharing relies on: `stages` then `neck(stage_outputs)`."""
    network = ResNet(18, neck="fpn", neck_channels=16).eval()
    images = torch.rand(1, 3, 32, 32)
    outputs, current = [], images
    with torch.no_grad():
        for stage in network.stages:
            current = stage(current)
            outputs.append(current)
        assert len(outputs) == 5
        assert torch.equal(network.neck(outputs), network(images))


def test_dilation_keeps_the_weights_so_pretrained_ones_fit() -> None:
    plain, dilated = ResNet(50), ResNet(50, output_stride=8)
    shapes = {key: value.shape for key, value in plain.state_dict().items()}
    assert {key: value.shape for key, value in dilated.state_dict().items()} == shapes


@pytest.mark.parametrize("option", ["resnet18", "resnet34", "resnet50"])
def test_config_files_build_backbones_of_the_stated_stride(option: str) -> None:
    node = OmegaConf.load(config_dir() / "backbone" / f"{option}.yaml")
    network = instantiate(node)
    assert isinstance(network, ResNet)
    output = features(network)
    assert output.shape[-2:] == (HEIGHT // network.stride, BREADTH // network.stride)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"depth": 101}, "backbone.depth"),
        ({"neck": "unet"}, "backbone.neck"),
        ({"output_stride": 4}, "backbone.output_stride"),
        ({"small_input": True, "output_stride": 16}, "backbone.output_stride"),
    ],
)
def test_bad_settings_are_user_errors(settings: dict, named: str) -> None:
    with pytest.raises(UserError, match=named.replace(".", r"\.")):
        ResNet(**settings)


@pytest.mark.parametrize("depth", [34, 50])
def test_missing_pretrained_weights_name_the_path_and_the_url(
    depth: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as raised:
        ResNet(depth, pretrained=True)
    message = str(raised.value)
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/" in message and "\n" not in message


def test_pretrained_weights_load_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached file's weights end up in the stages; inputs get ImageNet normalisation."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    network = ResNet(18, pretrained=True)
    assert torch.equal(network.stages[4][1].conv2.weight, reference.layer4[1].conv2.weight)
    stem = network.stages[0]
    images = torch.rand(1, 3, 8, 8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(stem[0](images), (images - mean) / std)

import pytest
import torch

import lostprune.models as models


@pytest.mark.parametrize(
    "name, params",
    [
        ("resnet20", 272_474),
        ("resnet56", 855_770),
        ("resnet110", 1_730_714),
        ("vgg16_bn", 14_987_722),
        ("small_cnn", 141_034),
    ],
)
def test_cifar_models_shape_and_size(name, params):
    model = models.create(name).eval()
    assert model.input_size == (3, 32, 32) and model.task == "classification"
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_models_build_without_downloads():
    model = models.create("resnet18", num_classes=7)
    assert model.fc.out_features == 7 and model.input_size == (3, 224, 224)
    seg = models.create("deeplabv3_resnet50")
    assert seg.task == "segmentation" and seg.classifier[-1].out_channels == 21


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'; available: .*resnet20"):
        models.create("resnet21")


def test_cifar_resnet_depth_check():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.CifarResNet(depth=21)

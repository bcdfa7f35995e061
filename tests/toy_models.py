"""Small models for exporter tests, importable as `toy_models:FACTORY` model specs."""

from collections import namedtuple

import torch
from torch import nn


def relu_net() -> nn.Module:
    """Built from nn.ReLU modules only (what Captum's GuidedBackprop hooks), GAP->linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


def faint_gradient_net() -> nn.Module:
    """relu_net with a head 1000 times weaker: its target-layer gradients (about 1e-8) are below float16's
    smallest number (6e-8), so a half-precision graph keeps them only by scaling."""
    model = relu_net()
    with torch.no_grad():
        model[-1].weight.mul_(1e-3)
    return model


def mlp() -> nn.Module:
    """No spatial feature map at all."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 4))


def not_a_module():
    return "a string"


@torch.library.custom_op("onnxcam_test::wobble", mutates_args=())
def wobble(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sin(x)


@wobble.register_fake
def _(x):
    return torch.empty_like(x)


wobble.register_autograd(lambda ctx, grad: grad * 2, setup_context=lambda ctx, inputs, output: None)


class _Wobbly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, stride=4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(wobble(self.conv(x)).mean(dim=(2, 3)))


def custom_op_net() -> nn.Module:
    """Uses an op with no ONNX translation."""
    return _Wobbly()


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, stride=4), nn.Linear(4, 3)

    def forward(self, x):
        features = self.conv(x)
        return self.head((features + torch.rand_like(features)).mean(dim=(2, 3)))


def noisy_net() -> nn.Module:
    """Random noise in the forward: ORT and PyTorch cannot agree, so the export must refuse."""
    return _Noisy()


def flat_head_net() -> nn.Module:
    """Head is Flatten -> Linear over the whole map (no global pooling): CAM is undefined."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 3))


class _Returns(nn.Module):
    """relu_net whose forward wraps its logits: in a dict, a named tuple, or a tuple beside another tensor."""

    def __init__(self, kind: str):
        super().__init__()
        self.net, self.kind = relu_net(), kind

    def forward(self, x):
        logits = self.net(x)
        if self.kind == "dict":
            return {"logits": logits, "features": logits * 2}
        if self.kind == "named":
            return _Outputs(logits=logits, aux=logits * 2)
        return logits, logits * 2


_Outputs = namedtuple("_Outputs", ["logits", "aux"])


def returns_dict() -> nn.Module:
    return _Returns("dict")


def returns_named_tuple() -> nn.Module:
    return _Returns("named")


def returns_tuple() -> nn.Module:
    return _Returns("tuple")


def vit_b_16_live_head() -> nn.Module:
    """torchvision's vit_b_16 with random weights, its head too (torchvision zeroes it: every logit 0)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def upsampling_net() -> nn.Module:
    """Upsamples between its convolutions: ops CNN fixations cannot backtrack through (the upsampling's matrix
    products)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear"),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )


class _ToySegmenter(nn.Module):
    """An encoder at stride 4 and a 1x1 head whose class scores are upsampled bilinearly to the input's size, as
    torchvision's segmenters do; returns {"out": [N, 4, H, W]}."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        scores = nn.functional.interpolate(self.head(self.encoder(x)), size=x.shape[2:], mode="bilinear",
                                           align_corners=False)
        return {"out": scores}


def segmenter() -> nn.Module:
    torch.manual_seed(0)
    return _ToySegmenter()

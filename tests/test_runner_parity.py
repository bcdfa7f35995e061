"""The runner's heatmaps match pytorch-grad-cam and Captum on the same model, images and targets.

Compared at model input resolution after per-image min-max normalisation (max |delta| <= 1e-3), on
the bundled pretrained efficientnet-lite0 with real photographs and on two torchvision
architectures with random weights.
"""

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_grad_cam")

from captum.attr import GuidedBackprop  # noqa: E402
from onnxcam.runner.inputs.decode import decode_image  # noqa: E402
from onnxcam.runner.inputs.preprocess import to_input  # noqa: E402
from onnxcam.runner.methods import METHODS  # noqa: E402
from onnxcam.runner.methods.maps import normalise, resize_maps  # noqa: E402
from onnxcam.runner.model.backend import OnnxRuntimeBackend  # noqa: E402
from onnxcam.runner.model.graph import read_graph_info  # noqa: E402
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from reference_model import gradcam_plus_plus_with_epsilon, reference_model  # noqa: E402
from sample_photos import write_photos  # noqa: E402

TOLERANCE = 1e-3
# Guided gradients against float64 autograd, of maps scaled to [0, 1]: they jump at ReLU/max-pool kinks, which a
# float32 run meets on deep random-weight stacks such as VGG (measured: resnet18 2e-7, efficientnet-lite0 2.6e-4,
# vgg11 5.2e-3, where a few pixels move).
GUIDED_TOLERANCE = {"efficientnet-lite0": 1e-3, "torchvision:resnet18": 1e-3, "torchvision:vgg11": 1e-2}
REFERENCES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
              "layercam": LayerCAM, "eigencam": EigenCAM}
# Random-weight mobilenet_v3_small is no use here: its last feature map is ~1e-7, so every map is float noise.
MODELS = (pytest.param("efficientnet-lite0", marks=pytest.mark.slow), "torchvision:resnet18",
          pytest.param("torchvision:vgg11", marks=pytest.mark.slow))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Natural photographs. Large flat saturated areas (the sky of skimage's rocket) make max-pool windows exact
    ties, where routing the gradient is arbitrary (PyTorch takes the first index, ONNX Runtime whichever its
    float32 convolution made an ulp larger), so those are left to the exporter's own tests."""
    return write_photos(tmp_path_factory.mktemp("photos"), ("chelsea", "coffee", "astronaut", "immunohistochemistry"))


@pytest.fixture(scope="module", params=MODELS)
def case(request, exported, photos):
    loaded, result = exported(request.param)
    info = read_graph_info(result.path)
    # The whole photographs, stretched, as before torchvision exports took their recipe's centre crop: the crop
    # moves which pixels of random-weight VGG sit on max-pool ties, where guided gradients jump (see below; the
    # exporter's tests check the graph against autograd taking ONNX Runtime's tie decisions).
    stretched = dataclasses.replace(info.preprocessing, resize="stretch")
    batch = np.stack([to_input(decode_image(p, 10**8)[0], stretched)[0] for p in photos])
    backend = OnnxRuntimeBackend(result.path, ["cpu"])
    outputs = ("logits", "activations", "gradients", "input_gradients")
    out = backend.run(outputs, batch, np.full(len(batch), -1))
    targets = out["logits"].argmax(axis=1)
    targets[-1] = np.argsort(out["logits"][-1])[-2]  # one image explains its second class
    out = backend.run(outputs, batch, targets)
    return loaded, result, batch, targets, out


def _pytorch_grad_cam(method, case) -> np.ndarray:
    loaded, result, batch, targets, _ = case
    model, layer = reference_model(loaded, result.layer.name, result.info.activation_shape[0])
    with REFERENCES[method](model=model, target_layers=[layer]) as reference:
        return reference(input_tensor=torch.from_numpy(batch).requires_grad_(),
                         targets=[ClassifierOutputTarget(int(t)) for t in targets])


def _at_input_size(maps: np.ndarray, batch: np.ndarray) -> np.ndarray:
    return normalise(resize_maps(maps, batch.shape[2:]))


@pytest.mark.parametrize("method", [m for m in REFERENCES if m != "gradcam++"])
def test_cam_methods_match_pytorch_grad_cam(case, method):
    loaded, _, batch, _, out = case
    ours, theirs = _at_input_size(METHODS[method](out, {}), batch), _pytorch_grad_cam(method, case)
    assert ours.shape == theirs.shape
    error = np.abs(ours - theirs).max()
    assert error <= TOLERANCE, f"{loaded.spec} {method}: max |delta| {error:.2e} after normalisation"


def test_gradcam_plus_plus_is_eq19_and_pytorch_grad_cam_adds_an_epsilon(case):
    """pytorch-grad-cam computes alpha = G^2 / (2 G^2 + sum(A) G^3 + 1e-6). Where gradients are small (|G| ~ 1e-3,
    typical for random weights) the 1e-6 outweighs G^2 and changes the map. onnxcam follows eq. 19 exactly;
    with pytorch-grad-cam's epsilon put back, the two agree."""
    loaded, _, batch, _, out = case
    theirs = _pytorch_grad_cam("gradcam++", case)
    g, a = out["gradients"].astype(np.float64), out["activations"].astype(np.float64)
    with_epsilon = gradcam_plus_plus_with_epsilon(g, a)
    error = np.abs(_at_input_size(with_epsilon.astype(np.float32), batch) - theirs).max()
    assert error <= TOLERANCE, f"{loaded.spec}: eq. 19 + 1e-6 vs pytorch-grad-cam {error:.2e}"
    ours = _at_input_size(METHODS["gradcam++"](out, {}), batch)
    exact = np.maximum(np.einsum("nc,nchw->nhw", np.where(g > 0, g / (2 + a.sum(axis=(2, 3))[:, :, None, None] * g),
                                                          0).sum(axis=(2, 3)), a), 0)
    np.testing.assert_allclose(ours, _at_input_size(exact.astype(np.float32), batch), atol=TOLERANCE)
    print(f"{loaded.spec}: gradcam++ vs pytorch-grad-cam max |delta| {np.abs(ours - theirs).max():.2e} "
          "(its epsilon)")


class GuidedClamp(torch.autograd.Function):
    """ReLU (`top` None) or ReLU6 (`top` 6) whose backward passes only positive gradients, and only where the input
    is inside (0, top): guided backprop (Springenberg et al.), written here apart from the exporter's."""

    @staticmethod
    def forward(ctx, x, top):
        ctx.save_for_backward(x)
        ctx.top = top
        return x.clamp(0, top)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        inside = (x > 0) if ctx.top is None else (x > 0) & (x < ctx.top)
        return grad.clamp(min=0) * inside, None


class Guided(torch.nn.Module):
    def __init__(self, top: float | None):
        super().__init__()
        self.top = top

    def forward(self, x):
        return GuidedClamp.apply(x, self.top)


def guided_backprop(model: torch.nn.Module, batch: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Guided input gradients in float64, every nn.ReLU and nn.ReLU6 of a copy of `model` made guided."""
    model = copy.deepcopy(model).double()
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) in (torch.nn.ReLU, torch.nn.ReLU6):
                setattr(module, name, Guided(None if type(child) is torch.nn.ReLU else 6.0))
                replaced += 1
    assert replaced, "a model with ReLU or ReLU6 modules"
    inputs = torch.from_numpy(batch).double().requires_grad_()
    logits = model(inputs)
    logits[torch.arange(len(batch)), torch.from_numpy(targets)].sum().backward()
    return inputs.grad.numpy()


def test_guided_backprop_matches_autograd_with_guided_activations(case):
    """Against the guided ReLU and ReLU6 above in float64 (exact up to kinks; on ReLU nets also against Captum).
    Within GUIDED_TOLERANCE of the float64 map scaled to [0, 1]."""
    loaded, result, batch, targets, out = case
    model = reference_model(loaded, result.layer.name, result.info.activation_shape[0])[0]
    exact = normalise(guided_backprop(model, batch, targets))
    if not any(isinstance(module, torch.nn.ReLU6) for module in model.modules()):  # Captum hooks nn.ReLU only
        captum = GuidedBackprop(copy.deepcopy(model).double()).attribute(torch.from_numpy(batch).double(),
                                                                         target=torch.from_numpy(targets))
        np.testing.assert_allclose(exact, normalise(captum.detach().numpy()), atol=1e-9)
    ours = normalise(METHODS["guided_backprop"](out, {}))
    errors = np.abs(ours - exact).max(axis=(1, 2, 3))
    print(f"{loaded.spec}: guided backprop max |delta| per image {', '.join(f'{e:.1e}' for e in errors)}")
    assert errors.max() <= GUIDED_TOLERANCE[loaded.spec], loaded.spec


def test_cam_equals_gradcam_on_gap_linear_heads(case):
    """With a GAP->linear head Grad-CAM's weights are the linear weights / (h w): CAM is Grad-CAM before ReLU."""
    _, result, _, _, out = case
    if not result.info.gap_linear_head:
        pytest.skip("VGG's head is not GAP->linear: CAM is undefined (the runner refuses it)")
    cam, gradcam = METHODS["cam"](out, {}), METHODS["gradcam"](out, {})
    h, w = cam.shape[1:]
    np.testing.assert_allclose(np.maximum(cam, 0), gradcam * h * w, rtol=1e-4, atol=1e-5 * np.abs(cam).max())


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(case):
    """Against guided backprop (above) times pytorch-grad-cam's Grad-CAM at input size."""
    loaded, result, batch, targets, out = case
    model = reference_model(loaded, result.layer.name, result.info.activation_shape[0])[0]
    expected = guided_backprop(model, batch, targets) * _pytorch_grad_cam("gradcam", case)[:, None]
    ours = METHODS["guided_gradcam"](out, {})
    assert ours.shape == expected.shape
    scale = lambda maps: maps / np.abs(maps).max(axis=(1, 2, 3), keepdims=True)  # noqa: E731
    error = np.abs(scale(ours) - scale(expected)).max()
    print(f"{loaded.spec}: guided Grad-CAM max |delta| {error:.1e}")
    assert error <= GUIDED_TOLERANCE[loaded.spec] + TOLERANCE, f"{loaded.spec}: {error:.2e}"

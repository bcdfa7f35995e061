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
from reference_model import reference_model  # noqa: E402
from sample_photos import write_photos  # noqa: E402

TOLERANCE = 1e-3
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
    alpha = np.where(g != 0, g**2 / (2 * g**2 + a.sum(axis=(2, 3))[:, :, None, None] * g**3 + 1e-6), 0)
    with_epsilon = np.maximum(np.einsum("nc,nchw->nhw", (np.maximum(g, 0) * alpha).sum(axis=(2, 3)), a), 0)
    error = np.abs(_at_input_size(with_epsilon.astype(np.float32), batch) - theirs).max()
    assert error <= TOLERANCE, f"{loaded.spec}: eq. 19 + 1e-6 vs pytorch-grad-cam {error:.2e}"
    ours = _at_input_size(METHODS["gradcam++"](out, {}), batch)
    exact = np.maximum(np.einsum("nc,nchw->nhw", np.where(g > 0, g / (2 + a.sum(axis=(2, 3))[:, :, None, None] * g),
                                                          0).sum(axis=(2, 3)), a), 0)
    np.testing.assert_allclose(ours, _at_input_size(exact.astype(np.float32), batch), atol=TOLERANCE)
    print(f"{loaded.spec}: gradcam++ vs pytorch-grad-cam max |delta| {np.abs(ours - theirs).max():.2e} "
          "(its epsilon)")


def test_guided_backprop_matches_captum(case):
    """Against Captum in float64 (exact up to kinks). Guided gradients jump at ReLU/max-pool kinks, so any float32
    run (Captum's own included) moves a few pixels on deep random-weight stacks such as VGG: ours must then be
    within twice the distance of Captum's float32 run from its float64 run."""
    loaded, result, batch, targets, out = case
    if loaded.spec == "efficientnet-lite0":
        pytest.skip("Captum's GuidedBackprop hooks nn.ReLU only; lite0's ReLU6 is covered by the exporter tests")
    model = reference_model(loaded, result.layer.name, result.info.activation_shape[0])[0]
    exact, float32 = (
        normalise(GuidedBackprop(m).attribute(torch.from_numpy(batch).to(dtype), target=torch.from_numpy(targets))
                  .detach().numpy())
        for m, dtype in ((copy.deepcopy(model).double(), torch.float64), (model, torch.float32)))
    ours = normalise(METHODS["guided_backprop"](out, {}))
    for i in range(len(batch)):
        error, captum_float32 = np.abs(ours[i] - exact[i]).max(), np.abs(float32[i] - exact[i]).max()
        print(f"{loaded.spec} image {i}: guided max |delta| onnxcam {error:.1e}, Captum float32 {captum_float32:.1e}")
        assert error <= max(TOLERANCE, 2 * captum_float32), f"{loaded.spec} image {i}: {error:.2e}"


def test_cam_equals_gradcam_on_gap_linear_heads(case):
    """With a GAP->linear head Grad-CAM's weights are the linear weights / (h w): CAM is Grad-CAM before ReLU."""
    _, result, _, _, out = case
    if not result.info.gap_linear_head:
        pytest.skip("VGG's head is not GAP->linear: CAM is undefined (the runner refuses it)")
    cam, gradcam = METHODS["cam"](out, {}), METHODS["gradcam"](out, {})
    h, w = cam.shape[1:]
    np.testing.assert_allclose(np.maximum(cam, 0), gradcam * h * w, rtol=1e-4, atol=1e-5 * np.abs(cam).max())


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(case):
    _, _, batch, _, out = case
    expected = out["input_gradients"] * resize_maps(normalise(METHODS["gradcam"](out, {})), batch.shape[2:])[:, None]
    np.testing.assert_allclose(METHODS["guided_gradcam"](out, {}), expected, rtol=1e-6)

"""A segmenter's maps match pytorch-grad-cam's with its SemanticSegmentationTarget, set up as its segmentation
tutorial does: the model wrapped to return `out`, the target layer `backbone.layer4`, and the mask the pixels the
model predicts as the class (or a given mask). Seeded random weights, real photographs stretched to the input;
compared at the input's size after per-image min-max normalisation, max |delta| <= 1e-3."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_grad_cam")

pytestmark = pytest.mark.slow  # exports two ResNet-50 segmenters

from onnxcam.runner.inputs.decode import decode_image  # noqa: E402
from onnxcam.runner.inputs.preprocess import to_input  # noqa: E402
from onnxcam.runner.methods import METHODS  # noqa: E402
from onnxcam.runner.methods.maps import normalise, resize_maps  # noqa: E402
from onnxcam.runner.model.graph import PREDICTED_MASK  # noqa: E402
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget  # noqa: E402
from reference_model import OutOnly, gradcam_plus_plus_with_epsilon  # noqa: E402
from sample_photos import write_photos  # noqa: E402

TOLERANCE = 1e-3
REFERENCES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
              "layercam": LayerCAM}
SIZE = (160, 224)  # the recipe's 520x520 costs minutes a model on 2 cores; the maps' arithmetic is the same


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"), ("chelsea", "astronaut"))


@pytest.fixture(scope="module", params=["torchvision:deeplabv3_resnet50", "torchvision:fcn_resnet50"])
def case(request, exported, photos):
    loaded, result = exported(request.param, input_size=SIZE)
    assert result.layer.name == "backbone.layer4", "--layer auto picked another layer"
    batch = np.stack([to_input(decode_image(path, 10**8)[0], result.info.preprocessing)[0] for path in photos])
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    return loaded, result, batch, session


def _run(session, batch, targets, mask) -> dict[str, np.ndarray]:
    names = [output.name for output in session.get_outputs()]
    values = session.run(None, {"input": batch, "target": np.asarray(targets, np.int64), "target_mask": mask})
    return dict(zip(names, values, strict=True))


def _targets(session, batch) -> tuple[list[int], np.ndarray]:
    """Per photograph, the class predicted on most pixels for the first and the second most for the second (random
    weights still predict several classes), and the predicted label maps."""
    out = _run(session, batch, [-1] * len(batch), PREDICTED_MASK)
    order = np.argsort(-out["class_share"], axis=1, kind="stable")
    targets = [int(order[0, 0]), int(order[1, 1])]
    assert out["class_share"][1, targets[1]] > 0.01, "the second photograph's second class covers almost nothing"
    return targets, out["label_map"]


def _theirs(loaded, method, batch, targets, masks) -> np.ndarray:
    model = OutOnly(loaded.model)
    with REFERENCES[method](model=model, target_layers=[model.model.backbone.layer4]) as reference:
        return reference(input_tensor=torch.from_numpy(batch).requires_grad_(),
                         targets=[SemanticSegmentationTarget(t, m.astype(np.float32))
                                  for t, m in zip(targets, masks, strict=True)])


def _ours(method, out, batch) -> np.ndarray:
    return normalise(resize_maps(METHODS[method](out, {}), batch.shape[2:]))


@pytest.mark.parametrize("method", list(REFERENCES))
def test_maps_over_the_predicted_pixels_match_pytorch_grad_cam(case, method):
    """Grad-CAM++ against pytorch-grad-cam's formula with its epsilon (see test_runner_parity.py: onnxcam follows the
    paper's eq. 19 without it), whose map it is checked to equal; onnxcam's own is printed."""
    loaded, result, batch, session = case
    targets, label_map = _targets(session, batch)
    masks = [label_map[i] == t for i, t in enumerate(targets)]
    out = _run(session, batch, targets, PREDICTED_MASK)
    shares = [float(mask.mean()) for mask in masks]
    assert np.allclose(out["class_share"][[0, 1], targets], shares, atol=1e-6)
    with torch.no_grad():
        scores = OutOnly(loaded.model)(torch.from_numpy(batch)).numpy()
    for i, (target, mask) in enumerate(zip(targets, masks, strict=True)):
        assert out["logits"][i, target] == pytest.approx(scores[i, target][mask].mean(), rel=1e-4)
    theirs, ours = _theirs(loaded, method, batch, targets, masks), _ours(method, out, batch)
    if method == "gradcam++":
        print(f"{loaded.spec}: gradcam++ (eq. 19) vs pytorch-grad-cam {np.abs(ours - theirs).max():.2e} (its epsilon)")
        ours = normalise(resize_maps(gradcam_plus_plus_with_epsilon(out["gradients"], out["activations"]).astype(
            np.float32), batch.shape[2:]))
    error = np.abs(ours - theirs).max()
    assert error <= TOLERANCE, f"{loaded.spec} {method}: max |delta| {error:.2e} after normalisation"


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_maps_over_a_given_mask_match_pytorch_grad_cam(case, method):
    """A ground-truth-like mask (a rectangle each) fed as target_mask [N, H, W]: the same maps as pytorch-grad-cam's
    target with that mask, and not the maps of the predicted pixels."""
    loaded, result, batch, session = case
    targets, label_map = _targets(session, batch)
    masks = np.zeros((len(batch), *batch.shape[2:]), np.float32)
    masks[0, 40:120, 60:180], masks[1, 10:90, 20:100] = 1, 1
    out = _run(session, batch, targets, masks)
    theirs, ours = _theirs(loaded, method, batch, targets, masks), _ours(method, out, batch)
    error = np.abs(ours - theirs).max()
    assert error <= TOLERANCE, f"{loaded.spec} {method} (given mask): max |delta| {error:.2e} after normalisation"
    predicted = _ours(method, _run(session, batch, targets, PREDICTED_MASK), batch)
    assert np.abs(predicted - ours).max() > 0.05, "the given mask made no difference"

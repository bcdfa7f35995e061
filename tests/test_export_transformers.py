"""Vision transformers: a ViT's tokens and Swin's channels-last maps become [C, h, w] inside the explain graph, and
Grad-CAM on them matches pytorch-grad-cam with the `reshape_transform` its tutorials give (random weights)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_grad_cam")

pytestmark = pytest.mark.slow  # two transformer exports, about a minute each on two cores

from onnxcam.runner.inputs.decode import decode_image  # noqa: E402
from onnxcam.runner.inputs.preprocess import to_input  # noqa: E402
from onnxcam.runner.methods import METHODS  # noqa: E402
from onnxcam.runner.methods.maps import normalise, resize_maps  # noqa: E402
from onnxcam.runner.model.backend import OnnxRuntimeBackend  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from sample_photos import write_photos  # noqa: E402

TOLERANCE = 1e-3


def vit_tokens(tensor, height=14, width=14):
    """pytorch-grad-cam's ViT tutorial: drop the class token, lay the rest on the 14x14 grid, channels first."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_channels_last(tensor):
    return tensor.permute(0, 3, 1, 2)


CASES = {
    "toy_models:vit_b_16_live_head": ("encoder.layers.encoder_layer_11.ln_1", "tokens", (768, 14, 14), vit_tokens),
    "torchvision:swin_t": ("features.7.1.norm1", "nhwc", (768, 7, 7), swin_channels_last),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"), ("chelsea", "coffee", "astronaut"))


@pytest.mark.parametrize("spec", list(CASES))
def test_gradcam_matches_pytorch_grad_cam_with_its_reshape_transform(spec, exported, photos):
    layer, layout, shape, reshape = CASES[spec]
    loaded, result = exported(spec)
    assert (result.layer.name, result.layer.layout) == (layer, layout), "--layer auto: the last block's first norm"
    assert result.info.activation_shape == shape
    batch = np.stack([to_input(decode_image(p, 10**8)[0], result.info.preprocessing)[0] for p in photos])
    backend = OnnxRuntimeBackend(result.path, ["cpu"])
    logits = backend.run(("logits",), batch, np.full(len(batch), -1))["logits"]
    targets = logits.argmax(axis=1)
    targets[-1] = np.argsort(logits[-1])[-2]  # one image explains its second class
    out = backend.run(("logits", "activations", "gradients"), batch, targets)
    ours = normalise(resize_maps(METHODS["gradcam"](out, {}), batch.shape[2:]))
    model = copy.deepcopy(loaded.model)
    with GradCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape) as cam:
        theirs = cam(input_tensor=torch.from_numpy(batch).requires_grad_(),
                     targets=[ClassifierOutputTarget(int(t)) for t in targets])
    assert ours.shape == theirs.shape and np.ptp(theirs) > 0
    error = np.abs(ours - theirs).max()
    print(f"{spec}: Grad-CAM vs pytorch-grad-cam, max |delta| {error:.2e} after normalisation")
    assert error <= TOLERANCE, f"{spec}: max |delta| {error:.2e} after normalisation"

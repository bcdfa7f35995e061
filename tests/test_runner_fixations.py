"""CNN fixations (Mopuri, Garg & Babu 2017) step by step on networks small enough to work out by hand, then on
a trained network and real photographs."""

from __future__ import annotations

import numpy as np
import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.methods import METHODS
from onnxcam.runner.methods.fixations import Backtrack
from onnxcam.runner.model.backend import OnnxRuntimeBackend
from onnxcam.runner.model.graph import read_graph_info
from onnxcam.runner.model.passes import ExtraPasses
from runner_helpers import write_images, write_manifest

torch = pytest.importorskip("torch")
from onnxcam.exporter.export import export_explain_graph  # noqa: E402
from onnxcam.exporter.sources import LoadedModel  # noqa: E402

R, B = 0, 2  # colour channels


def colour_detector(head: torch.nn.Module, pool: torch.nn.Module) -> torch.nn.Sequential:
    """Conv channel 0 copies the red input, channel 1 the blue one (3x3 kernels, only the centre set)."""
    conv = torch.nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, R, 1, 1] = conv.weight[1, B, 1, 1] = 1
    return torch.nn.Sequential(conv, torch.nn.ReLU(), pool, torch.nn.Flatten(), head)


def export(model: torch.nn.Module, folder, name: str):
    model.eval()
    loaded = LoadedModel(model, f"test:{name}", (8, 8), (0, 0, 0), (1, 1, 1), labels=["a", "b"])
    return export_explain_graph(loaded, "0", folder / f"{name}.onnx", guided=False, log=lambda _: None).path


def fixations_of(path, image: np.ndarray, target: int) -> set[tuple[int, int]]:
    backend = OnnxRuntimeBackend(path, ["cpu"])
    graph, values = ExtraPasses(backend, read_graph_info(path)).forward(image[None])
    own = {name: value[0] if name in graph.dynamic else value for name, value in values.items()} | {"input": image}
    return {tuple(int(v) for v in p) for p in Backtrack(graph, own).input_pixels(target)}


def scene() -> np.ndarray:
    image = np.zeros((3, 8, 8), np.float32)
    image[R, 3, 2], image[R, 5, 7], image[R, 0, 0] = 1.0, 0.9, 0.2
    image[B, 6, 1] = 0.8
    return image


def test_a_flattened_map_keeps_only_the_largest_contribution(tmp_path):
    """fc over a flattened 2x4x4 map (VGG's fc6 rule): class 0 weighs red block (1,1) by 1 and red block (2,3) by
    0.5, blue block (3,0) by 2. Contributions: 1 x 1.0, 0.5 x 0.9, 2 x 0.8 -> only blue (3,0) is kept; max pooling
    takes the block's largest input, (6,1); the conv keeps the channel (blue) and the position in its 3x3 window
    with the largest activation x weight: the centre, (6,1)."""
    head = torch.nn.Linear(32, 2, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, 0 * 16 + 1 * 4 + 1], head.weight[0, 0 * 16 + 2 * 4 + 3] = 1, 0.5
        head.weight[0, 1 * 16 + 3 * 4 + 0] = 2
        head.weight[1, 0 * 16 + 1 * 4 + 1] = 1
    path = export(colour_detector(head, torch.nn.MaxPool2d(2)), tmp_path, "flat")
    assert fixations_of(path, scene(), 0) == {(6, 1)}
    assert fixations_of(path, scene(), 1) == {(3, 2)}, "class 1 weighs only red block (1,1), whose max is (3,2)"


def test_a_pooled_vector_keeps_every_positive_contribution(tmp_path):
    """fc over global-average-pooled channels (ResNet's rule): every channel with a_i w_i > 0 is kept, then the
    pooling keeps each channel's largest input (the largest contribution to the mean)."""
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.5], [1.0, -1.0]]))
    path = export(colour_detector(head, torch.nn.AdaptiveAvgPool2d(1)), tmp_path, "pooled")
    assert fixations_of(path, scene(), 0) == {(3, 2), (6, 1)}, "red and blue both contribute positively"
    assert fixations_of(path, scene(), 1) == {(3, 2)}, "blue's contribution is negative: only red"


def test_residual_add_follows_the_larger_branch(tmp_path):
    """x + conv(x): a point follows the branch whose value is larger there (the authors' ResNet rule)."""

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 1, 1, bias=False)
            self.branch = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
            self.head = torch.nn.Linear(1, 1, bias=False)
            with torch.no_grad():
                self.stem.weight.copy_(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1))  # the red input
                self.branch.weight.zero_()
                self.branch.weight[0, 0, 0, 0] = 3  # the value up and to the left, tripled
                self.head.weight.fill_(1)

        def forward(self, x):
            y = self.stem(x)
            y = torch.relu(y + self.branch(y))
            return self.head(y.mean(dim=(2, 3)))

    image = np.zeros((3, 8, 8), np.float32)
    image[R, 2, 2], image[R, 6, 6] = 0.5, 1.0
    model = Residual()
    loaded = LoadedModel(model.eval(), "test:residual", (8, 8), (0, 0, 0), (1, 1, 1), labels=["a"])
    path = export_explain_graph(loaded, "stem", tmp_path / "r.onnx", guided=False, log=lambda _: None).path
    # After the add: 0.5 at (2,2) + 1.5 at (3,3) from the branch, 1.0 at (6,6) + 3.0 at (7,7). The mean's largest
    # input is (7,7), where the branch (3.0) beats the skip (0): through the branch's kernel to (6,6).
    assert fixations_of(path, image, 0) == {(6, 6)}


def test_a_model_it_cannot_serve_is_one_line(exported, tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    path = exported("toy_models:upsampling_net", "4", guided=False)[1].path  # no backward through the resize
    manifest = write_manifest(tmp_path, path, tmp_path / "images", methods=["fixations"])
    assert main(["run", str(manifest)]) == 2
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    # the exporter traces the bilinear upsampling as products with constant matrices broadcast over the batch
    assert line.startswith("onnxcam run: error: ") and "methods: 'fixations': cannot backtrack through Expand" in line
    assert line.endswith("fixations serve convolutional networks (VGG, AlexNet, ResNet, EfficientNet-Lite): use "
                         "gradcam for this one")


def test_the_method_writes_a_density_peaking_at_the_fixations(tmp_path):
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.5], [1.0, -1.0]]))
    path = export(colour_detector(head, torch.nn.AdaptiveAvgPool2d(1)), tmp_path, "pooled")
    passes = ExtraPasses(OnnxRuntimeBackend(path, ["cpu"]), read_graph_info(path))
    out = {"input": np.stack([scene(), scene()]), "target": np.array([0, 1])}
    maps = METHODS["fixations"](out, {"sigma": 0.0, "batch_size": 1}, passes)
    assert maps.shape == (2, 8, 8) and maps[0].sum() == 2 and maps[1].sum() == 1
    assert maps[0][3, 2] == maps[0][6, 1] == 1 and maps[1][3, 2] == 1
    assert passes.count == 2


@pytest.mark.slow
def test_on_photographs_the_densest_fixations_are_on_gradcams_object(exported, tmp_path):
    """The pretrained efficientnet-lite0 on five photographs: at the fixation density's peak, Grad-CAM (min-max
    scaled) is at least half its maximum on four of them. (The camera man's fixations gather on the top edge,
    where many channels peak; the paper's figures show the same kind of stray fixations.)"""
    from onnxcam.runner.inputs.decode import decode_image
    from onnxcam.runner.inputs.preprocess import to_input
    from onnxcam.runner.methods.maps import normalise, resize_maps
    from sample_photos import write_photos

    path = exported("efficientnet-lite0", saliency=True, guided=False)[1].path
    info, backend = read_graph_info(path), OnnxRuntimeBackend(path, ["cpu"])
    photos = write_photos(tmp_path, ("chelsea", "coffee", "astronaut", "rocket", "camera"))
    x = np.stack([to_input(decode_image(p, 10**8)[0], info.preprocessing)[0] for p in photos])
    out = backend.run(("logits", "activations", "gradients"), x, np.full(len(x), -1))
    out |= {"input": x, "target": out["logits"].argmax(axis=1)}
    gradcam = resize_maps(normalise(METHODS["gradcam"](out, {})), x.shape[2:])
    density = METHODS["fixations"](out, METHODS["fixations"].defaults, ExtraPasses(backend, info))
    at_peak = [float(cam.flat[fixed.argmax()]) for cam, fixed in zip(gradcam, density, strict=True)]
    print("Grad-CAM at the fixations' peak:", dict(zip((p.stem for p in photos), np.round(at_peak, 2), strict=True)))
    assert sum(value >= 0.5 for value in at_peak) >= 4, at_peak

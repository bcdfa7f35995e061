"""Half-precision explain graphs (`onnxcam export --fp16`): float32 at their edges, float16 inside, the class score
scaled by a power of two so that small gradients survive; on real photographs their maps agree with float32's.

ONNX Runtime's CPU provider runs a float16 graph by casting around the ops it has no float16 kernel for, rounding
every op's result to float16 as a GPU does; the CUDA test runs the graph as a GPU server would.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnxcam.exporter import export
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.parity import cosine
from onnxcam.exporter.sources import load_model
from onnxcam.runner.cli import main
from onnxcam.runner.inputs.decode import decode_image
from onnxcam.runner.inputs.preprocess import normalised, to_input
from onnxcam.runner.methods import METHODS
from onnxcam.runner.methods.maps import normalise, resize_maps
from onnxcam.runner.model.backend import OnnxRuntimeBackend
from onnxcam.runner.model.graph import GRAPH_MAP_METHODS, map_output, read_graph_info
from sample_photos import write_photos

RAW = ("logits", "activations", "gradients")
COSINE = 0.999


@pytest.fixture(scope="module")
def graphs(exported):
    """The bundled pretrained model (real ImageNet weights), as float32 and as float16 graphs."""
    return exported("efficientnet-lite0")[1].path, exported("efficientnet-lite0", fp16=True)[1].path


@pytest.fixture(scope="module")
def photographs(graphs, tmp_path_factory) -> np.ndarray:
    info = read_graph_info(graphs[0])
    paths = write_photos(tmp_path_factory.mktemp("photos"), ("chelsea", "coffee", "astronaut", "rocket"))
    assert len(paths) == 4
    return np.stack([to_input(decode_image(path, 1 << 26)[0], info.preprocessing)[0] for path in paths])


def maps_of(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: METHODS[name](outputs, METHODS[name].defaults) for name in GRAPH_MAP_METHODS}


def assert_maps_agree(half: dict[str, np.ndarray], full: dict[str, np.ndarray]) -> None:
    assert np.array_equal(half["logits"].argmax(1), full["logits"].argmax(1)), "the same top-1 classes"
    half_maps, full_maps = maps_of(half), maps_of(full)
    for method, expected in full_maps.items():
        for i, (a, b) in enumerate(zip(half_maps[method], expected, strict=True)):
            assert cosine(a, b) >= COSINE, f"{method}, photograph {i}: cosine {cosine(a, b):.6f}"
            assert np.unravel_index(a.argmax(), a.shape) == np.unravel_index(b.argmax(), b.shape), \
                f"{method}, photograph {i}: the peak moved"


@pytest.mark.slow  # exports efficientnet-lite0 twice
def test_the_graph_is_float16_inside_and_float32_at_its_edges(graphs, capsys):
    info = read_graph_info(graphs[1])
    assert info.precision == "f16" and read_graph_info(graphs[0]).precision == "f32"
    assert info.gradient_scale > 1 and math.log2(info.gradient_scale).is_integer()
    graph = onnx.load(str(graphs[1])).graph
    weights = [t for t in graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights), "every weight is float16"
    kinds = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert kinds["input"] == kinds["logits"] == kinds["gradients"] == onnx.TensorProto.FLOAT
    assert (graphs[1].stat().st_size - 0.5 * graphs[0].stat().st_size) < 0.1 * graphs[0].stat().st_size
    assert main(["info", str(graphs[1])]) == 0
    assert (f"precision        f16 inside (float32 in and out); gradients scaled by "
            f"2^{round(math.log2(info.gradient_scale))} before the backward, exactly undone") in capsys.readouterr().out


@pytest.mark.slow  # exports efficientnet-lite0 twice
def test_maps_agree_with_float32_on_real_photographs(graphs, photographs):
    targets = np.array([-1, -1, 281, -1])  # 281: tabby cat, also asked of the other photographs' graph
    full = OnnxRuntimeBackend(graphs[0], ["cpu"]).run(RAW, photographs, targets)
    half = OnnxRuntimeBackend(graphs[1], ["cpu"]).run(RAW, photographs, targets)
    assert_maps_agree(half, full)


@pytest.mark.slow  # exports efficientnet-lite0 twice
def test_float16_graph_on_cuda_agrees_with_float32_on_the_cpu(graphs, photographs):
    """Exercised on a GPU machine (where float16 runs on tensor cores); skipped where CUDA cannot run."""
    cuda = OnnxRuntimeBackend(graphs[1], "auto")
    if cuda.provider != "CUDAExecutionProvider":
        pytest.skip("no usable CUDA provider here: " + "; ".join(cuda.notes))
    targets = np.full(len(photographs), -1)
    assert_maps_agree(cuda.run(RAW, photographs, targets),
                      OnnxRuntimeBackend(graphs[0], ["cpu"]).run(RAW, photographs, targets))


def test_gradients_below_float16s_range_survive_by_scaling(tmp_path, monkeypatch):
    loaded = load_model("toy_models:faint_gradient_net")
    result = export.export_explain_graph(loaded, "auto", tmp_path / "scaled.onnx", fp16=True, log=lambda _: None)
    assert result.info.gradient_scale == 2.0 ** export.FP16_MAX_EXPONENT
    assert result.info.parity["gradients"]["relative_error"] < 1e-2

    monkeypatch.setattr(export, "fp16_gradient_scale", lambda reference: 1.0)
    with pytest.raises(ExportError, match=r"^parity check failed: gradients relative error .* in float16; export "
                                          r"in float32; not writing"):
        export.export_explain_graph(load_model("toy_models:faint_gradient_net"), "auto", tmp_path / "plain.onnx",
                                    fp16=True, log=lambda _: None)
    assert not (tmp_path / "plain.onnx").exists()


@pytest.mark.slow  # exports efficientnet-lite0 twice
def test_serving_options_apply_to_a_float16_graph(exported, graphs, tmp_path):
    """The served float16 graph (uint8 pixels in, maps out) against the PyTorch model in float64 with
    pytorch-grad-cam on the same photographs: the same top-1, maps as close as float16's are to float32's."""
    from onnxcam.exporter.serving import convert
    from pytorch_grad_cam import GradCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from reference_model import reference_model

    info, _ = convert(graphs[1], tmp_path / "served.onnx", ["gradcam", "layercam"], uint8=True)
    assert (info.precision, info.input_format, info.graph_maps) == ("f16", "uint8", ["gradcam", "layercam"])
    pre = info.preprocessing
    paths = write_photos(tmp_path / "photos", ("chelsea", "coffee", "astronaut", "rocket"))
    pixels = np.stack([to_input(decode_image(path, 1 << 26)[0], pre, uint8=True)[0] for path in paths])
    served = OnnxRuntimeBackend(tmp_path / "served.onnx", ["cpu"]).run(
        ("logits", *map(map_output, info.graph_maps)), pixels, np.full(len(pixels), -1))
    loaded, result = exported("efficientnet-lite0")
    model, layer = reference_model(loaded, result.layer.name, result.info.activation_shape[0])
    model = model.double().eval()
    inputs = torch.from_numpy(np.stack([normalised(picture, pre) for picture in pixels])).double()
    with torch.no_grad():
        top1 = model(inputs).numpy().argmax(axis=1)
    np.testing.assert_array_equal(served["logits"].argmax(axis=1), top1)
    for method, reference in (("gradcam", GradCAM), ("layercam", LayerCAM)):
        with reference(model=model, target_layers=[layer]) as cam:
            theirs = cam(input_tensor=inputs.clone().requires_grad_(),  # its weights are frozen
                         targets=[ClassifierOutputTarget(int(t)) for t in top1])
        ours = normalise(resize_maps(served[map_output(method)], pre.size))
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert cosine(a, b) >= COSINE, f"{method}, photograph {i}: cosine {cosine(a, b):.6f}"

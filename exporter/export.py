"""Export one (model, target layer) to a parity-checked ONNX explain graph."""

from __future__ import annotations

import copy
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.explain_fn import FeatureLayout, LayerTap, trace_explain_graph
from onnxcam.exporter.layers import LayerInfo, probe_layers, resolve_layer
from onnxcam.exporter.parity import INPUT_GRADIENT_COSINE, INPUT_GRADIENT_FACTOR, compare, format_parity
from onnxcam.exporter.reference import reference_outputs
from onnxcam.exporter.sources import LoadedModel
from onnxcam.exporter.write import publish, run_staged, stage, staging_folder
from onnxcam.runner import __version__
from onnxcam.runner.model.graph import (
    INPUTS,
    REQUIRED_OUTPUTS,
    SEGMENTATION_OUTPUTS,
    TARGET_MASK,
    GraphInfo,
    Preprocessing,
    external_data_path,
)
from onnxcam.runner.size import Size
from torch import nn

OPSET = 18
PARITY_TOLERANCE = 1e-3
# fp16: the gradients of the export example, scaled, peak at FP16_HEADROOM (float16 holds up to 65504: 64x room for
# images with larger gradients); the scale stays within 2^-14..2^14 (the scaled score's own gradient is the scale).
FP16_HEADROOM, FP16_MAX_EXPONENT = 2.0 ** 10, 14
# fp16 parity against float64 PyTorch: float16 keeps 11 significant bits, and rounding at every op adds up over a
# deep network (ResNet-50: about 1e-3 norm-wise); the cosine shows the maps keep their shape. Input gradients go back
# through the whole network, and float16's rounding moves more activations across a ReLU6's kinks, each of which
# switches a patch of the guided gradient on or off (efficientnet-lite0: 7.6e-2, cosine 0.997).
FP16_TOLERANCE, FP16_COSINE = 2e-2, 0.999
FP16_INPUT_GRADIENT_TOLERANCE, FP16_INPUT_GRADIENT_COSINE = 0.15, 0.99
GRADIENT_OUTPUTS = ("gradients", "input_gradients", "plain_input_gradients")


@dataclass
class ExportResult:
    path: Path
    info: GraphInfo
    layer: LayerInfo
    seconds: float
    graph: torch.fx.GraphModule | None = field(default=None, repr=False)  # what was converted (tests read it)


def _versions() -> dict[str, str]:
    import onnxscript
    import torchvision

    return {"onnxcam": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": ort.__version__}


def _unsupported_ops(message: str) -> list[str]:
    """Op names from the exporter's "No ONNX function found for <OpOverload(op='x', overload='y')>"."""
    ops = {f"{op}.{overload}" for op, overload in re.findall(r"op='([\w.:]+)', overload='(\w+)'", message)}
    return sorted(ops)[:5]


def _to_onnx(graph: torch.fx.GraphModule, example: tuple[torch.Tensor, ...], output_names: list[str]
             ) -> onnx.ModelProto:
    graph.eval()  # a traced GraphModule starts in training mode; nothing in it depends on that
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings():
            # The inputs share the batch dimension; torch warns that the other names for it go unused.
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used")
            program = torch.onnx.export(
                graph, example, dynamo=True, input_names=[*INPUTS, TARGET_MASK][:len(example)],
                output_names=output_names, dynamic_shapes=tuple({0: batch} for _ in example), opset_version=OPSET,
                verbose=False,
                # onnxscript's optimizer nearly doubles the export time (DenseNet-121: 177 s vs 94 s) and the
                # graph runs no faster for it: ONNX Runtime applies its own graph optimizations at load.
                optimize=False,
            )
    except Exception as error:  # noqa: BLE001 - the exporter raises many types; name the op if we can
        text = str(error)
        ops = _unsupported_ops(text)
        first = next((line for line in text.splitlines() if line.strip()), type(error).__name__)
        detail = f"unsupported op(s): {', '.join(ops)}" if ops else first[:200]
        raise ExportError(f"cannot export to ONNX: {detail}; add a decomposition in exporter/decompositions.py "
                          "or pick an earlier --layer") from None
    proto = program.model_proto
    if len(example) > 2:
        _broadcast_target_mask(proto)
    return proto


def _broadcast_target_mask(proto: onnx.ModelProto) -> None:
    """Let `target_mask` take any broadcastable shape: traced as [N, H, W], it only meets the prediction in a Where,
    which broadcasts, so [1, 1, 1] (-1: the prediction for every image) serves a whole batch in four bytes. The
    shapes the tracer recorded for the values computed from it are dropped with it."""
    mask = next(value for value in proto.graph.input if value.name == TARGET_MASK)
    for dim, name in zip(mask.type.tensor_type.shape.dim, ("mask_batch", "mask_height", "mask_width"), strict=True):
        dim.Clear()
        dim.dim_param = name
    derived, nodes = {TARGET_MASK}, list(proto.graph.node)
    for node in nodes:
        if derived.intersection(node.input):
            derived.update(node.output)
    kept = [value for value in proto.graph.value_info if value.name not in derived]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)


def fp16_gradient_scale(reference: dict[str, torch.Tensor]) -> float:
    """The power of two that brings the largest gradient of the export example to about FP16_HEADROOM."""
    largest = max(float(reference[name].abs().max()) for name in GRADIENT_OUTPUTS if name in reference)
    exponent = math.floor(math.log2(FP16_HEADROOM / largest)) if largest > 0 else FP16_MAX_EXPONENT
    return 2.0 ** max(-FP16_MAX_EXPONENT, min(FP16_MAX_EXPONENT, exponent))


def _fp16_problem(name: str, figure: dict[str, float]) -> str:
    """Why a float16 graph's output fails the export gate ("" if it passes)."""
    if not math.isfinite(figure["relative_error"]):
        return "is not finite in float16 (overflow); export in float32"
    tolerance, least = ((FP16_INPUT_GRADIENT_TOLERANCE, FP16_INPUT_GRADIENT_COSINE) if name.endswith("input_gradients")
                        else (FP16_TOLERANCE, FP16_COSINE))
    if figure["relative_error"] > tolerance or figure["cosine"] < least:
        return (f"relative error {figure['relative_error']:.2e} (limit {tolerance:.0e}), cosine "
                f"{figure['cosine']:.6f} (limit {least}) in float16; export in float32")
    return ""


def _parity_problem(name: str, figure: dict[str, float], tolerance: float, task: str = "classification") -> str:
    """Why an output fails the export gate ("" if it passes).

    Input gradients jump where a ReLU/ReLU6 input or a max-pool window sits on a tie, and float32 ONNX Runtime
    and float64 PyTorch settle such near-ties differently now and then; that moves one receptive-field patch
    (plain input gradients of efficientnet-lite0: 3.9e-3 norm-wise, 5e-7 once both take the same decisions,
    see tests/kink_reference.py). So input gradients may be INPUT_GRADIENT_FACTOR times looser provided the
    cosine similarity shows the rest agrees; every other output is held to `tolerance`. A segmenter's gradients
    too: its head runs ReLUs over maps of the input's size after the target layer (LR-ASPP at 520x520, random
    weights: 4.3e-3, cosine 0.99999, the largest error at a few places).
    """
    error = figure["relative_error"]
    if name.endswith("input_gradients") or (task == "segmentation" and name == "gradients"):
        if error > INPUT_GRADIENT_FACTOR * tolerance or figure["cosine"] < INPUT_GRADIENT_COSINE:
            return (f"relative error {error:.2e} (limit {INPUT_GRADIENT_FACTOR * tolerance:.0e}), cosine "
                    f"{figure['cosine']:.6f} (limit {INPUT_GRADIENT_COSINE})")
        return ""
    return f"relative error {error:.2e} > {tolerance:.0e}" if error > tolerance else ""


def _gap_linear_head(model: nn.Module, reference: dict[str, torch.Tensor]) -> bool:
    """True when logits == Linear(mean_hw(A)) for the model's last Linear: then CAM is exact."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    activations = reference["activations"]
    if not linears or linears[-1].in_features != activations.shape[1]:
        return False
    with torch.no_grad():
        predicted = linears[-1].double()(activations.mean(dim=(2, 3)))
        linears[-1].float()
    error = (predicted - reference["logits"]).abs().max() / reference["logits"].abs().max()
    return bool(error < 1e-6)


def _convolution_names(model: nn.Module, graph: torch.fx.GraphModule) -> dict[str, str]:
    """ONNX weight name -> PyTorch module, for every Conv2d the graph reads (for `onnxcam filters --layer`).

    The traced graph reads parameters as constants named `_param_constantN`, names the ONNX initializers keep.
    """
    owners = {id(module.weight): name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    names = {}
    for node in graph.graph.nodes:
        owner = owners.get(id(getattr(graph, str(node.target), None))) if node.op == "get_attr" else None
        if owner is not None:
            names[str(node.target)] = owner
    return names


def _example(logits_shape: tuple[int, ...], input_size: Size) -> tuple[torch.Tensor, ...]:
    """The batch the graph is traced on and checked with: two random images, the first explained for its top-1 class
    and the second for the last class; a segmenter's first over the pixels it predicts, its second over a random
    half of the pixels (a given mask)."""
    generator = torch.Generator().manual_seed(0)
    example = (torch.randn(2, 3, *input_size, generator=generator),
               torch.tensor([-1, logits_shape[1] - 1], dtype=torch.int64))
    if len(logits_shape) == 4:
        given = (torch.rand(1, *logits_shape[2:], generator=generator) < 0.5).float()
        example += (torch.cat([torch.full_like(given, -1), given]),)
    return example


def _on_the_graphs_prediction(model: nn.Module, layer: LayerInfo, example: tuple[torch.Tensor, ...],
                              actual: dict[str, np.ndarray], guided: bool, saliency: bool) -> dict[str, torch.Tensor]:
    """A segmenter's reference over the regions the graph itself chose: where the example asks for the predicted
    pixels (target_mask -1) and the class on most of them (target -1), the graph's own label map and class, spelt out.
    A pixel on a near-tie between two classes may go either way in float32 and float64 (random weights make many),
    and would move the region rather than test the graph's arithmetic. The prediction itself is held
    through class_share, which the caller keeps from the reference's own prediction."""
    input, target, target_mask = example
    chosen = torch.where(target < 0, torch.from_numpy(actual["class_share"].argmax(axis=1)), target)
    predicted = torch.from_numpy(actual["label_map"]).long() == chosen[:, None, None]
    spelt_out = torch.where(target_mask < 0, predicted.to(target_mask.dtype), target_mask)
    return reference_outputs(model, layer, input, chosen, guided, saliency=saliency, target_mask=spelt_out)


def describe_layer(layer: LayerInfo) -> str:
    """`name (Kind, output [C, h, w])`, with what the graph does to tokens or a channels-last map."""
    shape = list(layer.map_shape)
    if layer.layout == "tokens":
        return (f"{layer.name} ({layer.kind}, tokens {list(layer.shape[1:])} -> {shape}: {layer.prefix_tokens} "
                f"prefix token{'s' * (layer.prefix_tokens != 1)} dropped, grid {layer.grid[0]}x{layer.grid[1]})")
    if layer.layout == "nhwc":
        return f"{layer.name} ({layer.kind}, channels-last {list(layer.shape[1:])} -> {shape})"
    return f"{layer.name} ({layer.kind}, output {shape})"


def export_explain_graph(
    loaded: LoadedModel, layer: str, out: Path, guided: bool = True, multilabel: bool = False,
    tolerance: float = PARITY_TOLERANCE, log=print, saliency: bool = False, grid: Size | None = None,
    fp16: bool = False,
) -> ExportResult:
    """Trace, convert, parity-check against eager PyTorch, then write `out` atomically.

    `fp16`: the graph computes in float16 (weights and tensors; inputs and outputs stay float32), with the class
    score scaled by a power of two so that its gradients keep their precision (`fp16_gradient_scale`)."""
    started = time.perf_counter()
    model = loaded.model
    probe = probe_layers(model, loaded.input_size, grid)
    chosen = resolve_layer(probe.layers, layer, probe.task)
    log(f"target layer: {describe_layer(chosen)}" + (" [auto]" if layer == "auto" else ""))
    num_classes = probe.logits_shape[1]
    labels = loaded.labels or [str(i) for i in range(num_classes)]
    if len(labels) != num_classes:
        raise ExportError(f"--labels: {len(labels)} names for a model with {num_classes} classes")
    if probe.task == "segmentation" and num_classes > 256:
        raise ExportError(f"the segmenter has {num_classes} classes; onnxcam's label map is uint8 (256 classes at "
                          "most): report the model to onnxcam")

    example = _example(probe.logits_shape, loaded.input_size)
    reference = reference_outputs(model, chosen, *example[:2], guided, saliency=saliency,
                                  target_mask=example[2] if len(example) > 2 else None)
    scale = fp16_gradient_scale(reference) if fp16 else 1.0
    traced = copy.deepcopy(model).half() if fp16 else model
    tap = LayerTap(traced.get_submodule(chosen.name), chosen.calls)
    try:
        graph = trace_explain_graph(traced, tap, FeatureLayout(chosen), guided, example, saliency, fp16, scale)
    finally:
        tap.remove()
    output_names = [*REQUIRED_OUTPUTS, *(["input_gradients"] if guided else []),
                    *(["plain_input_gradients"] if saliency else []),
                    *(SEGMENTATION_OUTPUTS if probe.task == "segmentation" else [])]
    proto = _to_onnx(graph, example, output_names)
    with staging_folder(out) as staging:
        staged = stage(proto, staging / out.name)
        actual = dict(zip(output_names, run_staged(staged, *(tensor.numpy() for tensor in example)), strict=True))
        if probe.task == "segmentation":
            reference = _on_the_graphs_prediction(model, chosen, example, actual, guided, saliency) | {
                "class_share": reference["class_share"]}
        figures = compare(actual, {name: value.numpy() for name, value in reference.items()})
        log(f"parity vs PyTorch (float64), relative error: {format_parity(figures)}"
            + (f"; float16, gradients scaled by 2^{round(math.log2(scale))}" if fp16 else ""))
        for name, figure in figures.items():
            problem = _fp16_problem(name, figure) if fp16 else _parity_problem(name, figure, tolerance, probe.task)
            if problem:
                raise ExportError(f"parity check failed: {name} {problem}; not writing {out}")

        info = GraphInfo(
            preprocessing=Preprocessing(size=loaded.input_size, mean=tuple(loaded.mean), std=tuple(loaded.std),
                                        resize=loaded.resize, crop_fraction=loaded.crop_fraction,
                                        interpolation=loaded.interpolation),
            labels=labels, target_layer=chosen.name, activation_shape=tuple(chosen.map_shape),
            output_activation="sigmoid" if multilabel else "softmax", outputs=output_names,
            gap_linear_head=probe.task == "classification" and _gap_linear_head(model, reference), model=loaded.spec,
            versions=_versions(), parity=figures, convolutions=_convolution_names(traced, graph),
            precision="f16" if fp16 else "f32", gradient_scale=scale, task=probe.task,
        )
        for key, value in info.to_metadata().items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(staged))  # the weights stay where stage put them
        publish(staging, out)
    seconds = time.perf_counter() - started
    size = sum(path.stat().st_size for path in (out, external_data_path(out)) if path.exists())
    log(f"wrote {out} ({size / 1e6:.1f} MB) in {seconds:.1f} s")
    return ExportResult(path=out, info=info, layer=chosen, seconds=seconds, graph=graph)

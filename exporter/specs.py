"""How `--model` names a model, for both sources: PyTorch (exporter/sources.py, needs torch) and a plain ONNX file
(exporter/onnx_source.py, torch-free)."""

BUNDLED = "efficientnet-lite0"
ONNX_PREFIX = "onnx:"
SPEC_HELP = (f"use torchvision:NAME, timm:NAME, smp:ARCH:ENCODER, package.module:factory, {BUNDLED}, or "
             f"{ONNX_PREFIX}MODEL.onnx")


def is_onnx(spec: str) -> bool:
    """A plain ONNX classifier (Keras, TensorFlow, PaddlePaddle, a zoo): `onnx:MODEL.onnx`, or a path ending .onnx."""
    return spec.startswith(ONNX_PREFIX) or spec.lower().endswith(".onnx")

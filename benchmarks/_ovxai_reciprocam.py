"""OpenVINO XAI's side of the peer benchmark (not a benchmark of its own): `benchmarks/peer_benchmark.py` runs it with
the Python of its own environment (`.venv-ovxai`: OpenVINO XAI 1.1 pins OpenVINO 2024.4), on the same JPEGs as onnxcam.

    python benchmarks/_ovxai_reciprocam.py MODEL.onnx PREPROCESSING.json IMAGES_DIR OUT_DIR [--f32]

A user's loop with OpenVINO XAI: an Explainer (white box, ReciproCAM, the layer it finds itself) over the classifier
as OpenVINO reads it, then per JPEG: read it, preprocess it (the model's recipe, as onnxcam's graph metadata gives
it), one inference that returns the logits and every class's ReciproCAM map, the top-1 class's map drawn by OpenVINO
XAI's Visualizer (resized to the photograph, colour-mapped, overlaid) and written by Explanation.save. One inference
per image is the fastest use of its API (a user who classifies first, then asks for the top-1 class, pays two).
--f32 recompiles the explained model with INFERENCE_PRECISION_HINT f32: OpenVINO XAI compiles with OpenVINO's
defaults (bf16 where the CPU has it) and has no option for it. Prints one JSON line: images, the seconds from the
first image to the last overlay written, start-up seconds (reading, inserting the explanation branch, compiling), the
precision the compiled model runs, peak RSS in MiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np


def preprocess_fn(recipe: dict):
    """BGR uint8 -> [1,3,H,W] float32: the recipe's resize (stretch, or torchvision's centre crop), RGB, mean/std."""
    height, width = recipe["size"]
    mean = np.asarray(recipe["mean"], np.float32) * 255
    std = np.asarray(recipe["std"], np.float32) * 255

    def preprocess(image: np.ndarray) -> np.ndarray:
        if recipe["resize"] == "center_crop":
            scale = min(height, width) / recipe["crop_fraction"] / min(image.shape[:2])
            crop_h, crop_w = min(image.shape[0], round(height / scale)), min(image.shape[1], round(width / scale))
            y0, x0 = (image.shape[0] - crop_h) // 2, (image.shape[1] - crop_w) // 2
            image = image[y0:y0 + crop_h, x0:x0 + crop_w]
        x = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        if recipe["channel_order"] == "RGB":
            x = x[:, :, ::-1]
        return ((x.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None]

    return preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("preprocessing", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--f32", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.common.parameters import Task
    from openvino_xai.explainer.explainer import ExplainMode
    from openvino_xai.explainer.explanation import Explanation

    recipe = json.loads(args.preprocessing.read_text())
    explainer = xai.Explainer(ov.Core().read_model(args.model), task=Task.CLASSIFICATION,
                              preprocess_fn=preprocess_fn(recipe), explain_mode=ExplainMode.WHITEBOX,
                              explain_method=xai.Method.RECIPROCAM)
    if args.f32:
        explainer.method._model_compiled = ov.Core().compile_model(explainer.method._model, "CPU",
                                                                   {"INFERENCE_PRECISION_HINT": "f32"})
    precision = str(explainer.method.model_compiled.get_property("INFERENCE_PRECISION_HINT"))
    paths = sorted(args.images.glob("*.jpg"))
    first = time.perf_counter()
    for path in paths:
        image = cv2.imread(str(path))
        out = explainer.model_forward(image)
        top1 = int(np.argmax(out["logits"][0]))
        explanation = Explanation(saliency_map=out["saliency_map"], targets=[top1], task=Task.CLASSIFICATION)
        explanation = explainer.visualizer(explanation, original_input_image=image, output_size=image.shape[:2],
                                           overlay=True)
        explanation.save(args.out, prefix=f"{path.stem}.reciprocam.")
    done = time.perf_counter()
    print(json.dumps({"images": len(paths), "seconds": done - first, "startup_s": first - start,
                      "precision": {"<Type: 'bfloat16'>": "bf16", "<Type: 'float32'>": "f32"}.get(precision, precision),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "openvino": ov.get_version().split("-")[0]}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

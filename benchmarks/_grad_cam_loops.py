"""pytorch-grad-cam's usual loops, the reference the benchmarks time onnxcam against (`make bench`, `make bench-gpu`).

End to end: decode, preprocess, GradCAM, show_cam_on_image, imwrite, one batch at a time (a segmenter: as its
segmentation tutorial, a forward pass for the predicted mask, then GradCAM with SemanticSegmentationTarget). Compute
only: preprocessed batches -> maps. Needs only torch, OpenCV and pytorch-grad-cam (no captum, no torchvision).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
from onnxcam.runner.inputs.preprocess import to_input
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from reference_model import OutOnly


def _largest_class_targets(model: torch.nn.Module, tensor: torch.Tensor) -> list[SemanticSegmentationTarget]:
    """Per image, the class predicted on most pixels, over its predicted pixels (onnxcam's `targets: top1`)."""
    with torch.no_grad():
        labels = model(tensor).argmax(dim=1).cpu().numpy()
    targets = []
    for label_map in labels:
        chosen = int(np.bincount(label_map.ravel()).argmax())
        targets.append(SemanticSegmentationTarget(chosen, (label_map == chosen).astype(np.float32)))
    return targets


def grad_cam_end_to_end(model, layer, paths: list[Path], pre, batch: int, device: str, out: Path,
                        segmenter: bool = False) -> float:
    """Images per second; `segmenter`: `model` returns {"out": ...} and each image is explained for its largest
    predicted class."""
    out.mkdir(parents=True, exist_ok=True)
    model = OutOnly(model) if segmenter else model
    start = time.perf_counter()
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for first in range(0, len(paths), batch):
            chunk = paths[first:first + batch]
            pictures = [cv2.imread(str(p)) for p in chunk]
            tensor = torch.from_numpy(np.stack([to_input(p, pre)[0] for p in pictures])).to(device)
            targets = _largest_class_targets(model, tensor) if segmenter else None
            maps = cam(input_tensor=tensor.requires_grad_(), targets=targets)
            for path, picture, grey in zip(chunk, pictures, maps, strict=True):
                rgb = picture[:, :, ::-1].astype(np.float32) / 255
                grey = cv2.resize(grey, (picture.shape[1], picture.shape[0]))
                overlay = show_cam_on_image(rgb, grey, use_rgb=True)
                cv2.imwrite(str(out / f"{path.name}.gradcam.jpg"), overlay[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if device == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def grad_cam_compute(model, layer, batches: list[np.ndarray], device: str) -> float:
    with GradCAM(model=model, target_layers=[layer]) as cam:
        cam(input_tensor=torch.from_numpy(batches[0]).to(device).requires_grad_(), targets=None)  # warm-up
        start = time.perf_counter()
        for x in batches:
            cam(input_tensor=torch.from_numpy(x).to(device).requires_grad_(), targets=None)
        if device == "cuda":
            torch.cuda.synchronize()
    return sum(len(x) for x in batches) / (time.perf_counter() - start)

"""Extra batched passes through the model, for perturbation methods and faithfulness metrics.

Perturbed inputs are streamed: a generator yields (input [3,H,W], class) pairs, which are copied into
one reusable batch buffer and run `batch_size` at a time, so memory does not depend on how many
perturbations a method needs (Score-CAM: one per channel; deletion: one per step).
A segmenter's stream yields (input, class, mask [H,W]) triples: the perturbed input is scored on the original
row's region (the pixels the model predicted as the class on the unperturbed image, or the given mask), kept fixed
as pytorch-grad-cam's SemanticSegmentationTarget keeps its mask, so that logits[n, class] is the region's mean score.
Each pass asks the backend for the one output it needs (`logits`, or `plain_input_gradients`); the ONNX
Runtime backend runs each such request on the graph cut down to it, so no pass pays for backward ops it
does not use.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import cv2
import numpy as np
from onnxcam.runner.model.backend import Backend
from onnxcam.runner.model.graph import GraphInfo, probabilities

BLUR_SIGMA = 5.0  # pixels at model input size (Gaussian, as RISE's insertion substrate)


class ExtraPasses:
    """Runs streams of perturbed inputs through the model; counts the inputs run and the seconds spent."""

    def __init__(self, backend: Backend, info: GraphInfo):
        self.backend, self.info = backend, info
        pre = info.preprocessing
        self.mean = np.array(pre.mean, np.float32)[:, None, None]
        self.std = np.array(pre.std, np.float32)[:, None, None]
        self.count, self.seconds = 0, 0.0

    def _batches(self, stream: Iterable[tuple], batch_size: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """The stream in batches: inputs, classes and (a segmenter's) regions, [1,H,W] where every input of the batch
        has the same region (the edited copies of one row: the region crosses once per batch, not once per input)."""
        buffer: np.ndarray | None = None
        masks: np.ndarray | None = None
        targets = np.zeros(batch_size, np.int64)
        count, shared = 0, True
        for x, target, *mask in stream:
            if buffer is None:
                buffer = np.empty((batch_size, *x.shape), np.float32)
                masks = np.empty((batch_size, *mask[0].shape), np.float32) if mask else None
            buffer[count], targets[count] = x, target
            if masks is not None:
                masks[count] = mask[0]
                shared = shared and (count == 0 or np.array_equal(masks[count], masks[0]))
            count += 1
            if count == batch_size:
                yield buffer, targets, _regions(masks, count, shared)
                count, shared = 0, True
        if count:
            yield buffer[:count], targets[:count], _regions(masks, count, shared)

    def _run(self, output: str, inputs: np.ndarray, targets: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        start = time.perf_counter()
        extra = () if masks is None else (masks,)  # a classifier's backend takes no masks
        result = self.backend.run((output,), inputs, targets, *extra)[output]
        self.seconds += time.perf_counter() - start
        self.count += len(inputs)
        return result

    def scores(self, stream: Iterable[tuple], batch_size: int, kind: str = "probability") -> np.ndarray:
        """The target class's probability (softmax/sigmoid) or raw logit for every input of the stream."""
        out = []
        for inputs, targets, masks in self._batches(stream, batch_size):
            logits = self._run("logits", inputs, targets, masks)
            values = probabilities(logits, self.info.output_activation) if kind == "probability" else logits
            out.append(values[np.arange(len(targets)), targets])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def forward(self, inputs: np.ndarray):
        """The forward graph and all its intermediate tensors for a batch (CNN fixations)."""
        start = time.perf_counter()
        result = self.backend.forward_values(inputs)
        self.seconds += time.perf_counter() - start
        self.count += len(inputs)
        return result

    def input_gradients(self, stream: Iterable[tuple], batch_size: int) -> Iterator[np.ndarray]:
        """Plain dS/dinput [3,H,W] for every input of the stream, in order."""
        for inputs, targets, masks in self._batches(stream, batch_size):
            yield from self._run("plain_input_gradients", inputs, targets, masks)

    # -- what a removed pixel becomes (in normalised input space) ------------------------------------------

    def fill(self, x: np.ndarray, how: str) -> np.ndarray:
        """mean: the preprocessing mean colour (0 after normalisation); zero: black; blur: Gaussian-blurred x."""
        if how == "mean":
            return np.zeros_like(x)
        if how == "zero":
            return np.broadcast_to(-self.mean / self.std, x.shape).astype(np.float32)
        return np.stack([cv2.GaussianBlur(channel, (0, 0), BLUR_SIGMA) for channel in x])

    def times_map(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The image multiplied by `weights` [H,W] before normalisation: ((x*std + mean) * E - mean) / std."""
        return ((x * self.std + self.mean) * weights - self.mean) / self.std


def _regions(masks: np.ndarray | None, count: int, shared: bool) -> np.ndarray | None:
    return None if masks is None else masks[:1] if shared else masks[:count]

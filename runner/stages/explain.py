"""The batch stage: decoded images -> per image and target, every method's map and (with evaluate) the scores
of the metrics that run the model, plus what it all cost.

Each image first runs with its initial targets (top-1, named classes, or its labels-file class); `topk` and
`threshold` targets then add follow-up passes for the further classes, which go first in the queue so an
image finishes within the call. Pairs (image, target) run through the model `batch_size` at a time. A failed
model batch, method or metric turns the images of that batch into error rows; the others go on. Results come
back in the order the images finished (those that could not run first).

A segmenter's rows are regions (targets.py): the main pass feeds the given masks (targets.masks) or asks for the
predicted regions (four bytes), and reads `class_share` (the `present` follow-ups, the image's top class) and, when
the outputs or the extra passes need the regions, `label_map`; each row then carries its region, which the extra
passes score every perturbed copy on.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
from onnxcam.runner.config import Evaluation
from onnxcam.runner.costs import Cost, Costs
from onnxcam.runner.evaluate.metrics import MetricRow, Scoring, explanation, score, wanted
from onnxcam.runner.inputs.preprocess import normalised
from onnxcam.runner.methods import METHODS
from onnxcam.runner.model.backend import Backend
from onnxcam.runner.model.graph import OUTPUTS, GraphInfo, map_output, probabilities
from onnxcam.runner.model.passes import ExtraPasses
from onnxcam.runner.stages.items import BatchResult, DecodedImage, ImageResult, TargetResult, one_line
from onnxcam.runner.targets import TOP1, TargetPlan

Pair = tuple[ImageResult, int]


def served_by_graph(methods: dict[str, dict[str, Any]], graph_maps: list[str]) -> list[str]:
    """The methods whose maps the graph computes itself (map_<method>): those it has, with their default options."""
    return [name for name, options in methods.items() if name in graph_maps and options == METHODS[name].defaults]


def main_outputs(methods: dict[str, dict[str, Any]], graph_maps: list[str] = ()) -> tuple[str, ...]:
    """The explain-graph outputs the main pass must return for these methods (logits always): a method the graph
    serves asks for its map, the others for the tensors their formulas read."""
    served = served_by_graph(methods, graph_maps)
    needed = {output for name, options in methods.items() if name not in served
              for output in METHODS[name].outputs_needed(options)}
    return ("logits", *(output for output in OUTPUTS[1:] if output in needed), *map(map_output, served))


class ExplainStage:
    def __init__(self, backend: Backend, info: GraphInfo, plan: TargetPlan, methods: dict[str, dict[str, Any]],
                 evaluation: Evaluation | None, batch_size: int, reported: tuple[str, ...] = ()):
        """`reported`: a segmenter's outputs beside the maps' (class_share, and label_map when the regions are
        drawn or scored; stages/__init__.py's `reported_outputs`)."""
        self.backend, self.info, self.plan, self.methods = backend, info, plan, methods
        self.evaluation, self.batch_size = evaluation, batch_size
        self.segmenter = info.task == "segmentation"
        self.outputs = main_outputs(methods, info.graph_maps) + reported
        self.served = served_by_graph(methods, info.graph_maps)
        # a uint8-input graph gets pixels; methods and metrics that edit the input get it normalised here
        self.host_input = info.input_format == "uint8" and (
            any(METHODS[name].extra_pass_output for name in methods) or bool(evaluation and
                                                                             wanted(evaluation, runs_model=True)))
        self.passes = ExtraPasses(backend, info)
        self.scoring = Scoring(self.passes, evaluation.batch_size) if evaluation else None
        self._batch = np.empty(0)  # the model input of the last chunk, its memory used again by the next

    def _stacked(self, tensors: list[np.ndarray]) -> np.ndarray:
        """The chunk's inputs as one batch, in the memory of the one before when it has the same shape: a batch of
        more than 32 MB (256 ResNet-50 inputs in uint8) is otherwise a fresh mapping whose pages fault in on every
        chunk, twice the copy's time. Nothing keeps a chunk's batch beyond the chunk (results hold copies)."""
        shape = (len(tensors), *tensors[0].shape)
        if self._batch.shape != shape or self._batch.dtype != tensors[0].dtype:
            self._batch = np.empty(shape, tensors[0].dtype)
        return np.stack(tensors, out=self._batch)

    def __call__(self, images: list[DecodedImage]) -> BatchResult:
        finished: list[ImageResult] = []
        pending: dict[int, int] = {}  # id(result) -> pairs not run yet
        pairs: deque[Pair] = deque()
        for image in images:
            result = ImageResult(image, error=image.error)
            if not result.error:
                try:
                    targets = self.plan.initial(image.ref.key, image.label)
                    if targets:  # (a label image may hold ignored pixels only: a no_target row)
                        pending[id(result)] = len(targets)
                        pairs.extend((result, target) for target in targets)
                        continue
                except KeyError:
                    result.error = f"no row for this image in {self.plan.targets.labels_file.name}"
            finished.append(result)
        costs, extra_seconds = Costs(), self.passes.seconds
        while pairs:
            chunk = [pairs.popleft() for _ in range(min(self.batch_size, len(pairs)))]
            finished += self._run_chunk(chunk, pairs, pending, costs)
        costs.extra_pass_seconds = self.passes.seconds - extra_seconds
        return BatchResult(finished, costs)

    def _run_chunk(self, chunk: list[Pair], pairs: deque[Pair], pending: dict[int, int], costs: Costs
                   ) -> list[ImageResult]:
        """Runs one model batch of (image, target) pairs; returns the images whose every target is now done."""
        start = time.perf_counter()
        given = (np.stack([result.decoded.label == target for result, target in chunk]).astype(np.float32)
                 if self.plan.given_masks else None)
        try:
            inputs = self._stacked([result.decoded.tensor for result, _ in chunk])
            out = self.backend.run(self.outputs, inputs, np.array([target for _, target in chunk], np.int64),
                                   *(() if given is None else (given,)))
        except Exception as error:  # noqa: BLE001 - ORT raises its own types (e.g. out of memory)
            return _fail(chunk, pairs, f"the model failed on this batch ({self.backend.provider}: {one_line(error)})")
        costs.model_seconds += time.perf_counter() - start
        scores = probabilities(out["logits"], self.info.output_activation)
        ranked = out["class_share"] if self.segmenter else scores  # a segmenter's top class: the most pixels'
        finished, kept, chosen = [], [], []
        for i, (result, target) in enumerate(chunk):
            top = int(np.argmax(ranked[i]))
            if result.pred is None:
                result.pred = (top, float(ranked[i, top]))
                if "label_map" in out:
                    result.label_map = out["label_map"][i].copy()
            keep = True
            if target == TOP1 and self.plan.needs_scores:
                keep, more = self.plan.follow_up(ranked[i])
                pending[id(result)] += len(more)
                pairs.extendleft((result, c) for c in reversed(more))
            if keep:
                kept.append(i)
                chosen.append(top if target == TOP1 else target)
            pending[id(result)] -= 1
            if pending[id(result)] == 0:
                finished.append(result)
        if not kept:
            return finished
        if len(kept) < len(chunk):  # (a copy of a whole batch's input costs milliseconds: only when some are dropped)
            out, inputs = {name: value[kept] for name, value in out.items()}, inputs[kept]
            given = None if given is None else given[kept]
        if self.host_input:
            inputs = normalised(inputs, self.info.preprocessing)
        out |= {"input": inputs, "target": np.array(chosen, np.int64)}
        regions = self._regions(out, given) if self.segmenter else None
        try:
            targets = self._explain(out, scores[kept, chosen], costs)
        except Exception as error:  # noqa: BLE001 - an extra pass can fail too (out of memory on a big batch)
            return _fail(chunk, pairs, f"a method or metric failed on this batch ({one_line(error)})")
        for j, (k, target_result) in enumerate(zip(kept, targets, strict=True)):
            if regions is not None:
                masks, shares = regions
                target_result.mask = None if masks is None else masks[j]
                target_result.mask_kind = "predicted" if given is None else "given"
                target_result.share = float(shares[j])
            chunk[k][0].targets.append(target_result)
        return finished

    def _regions(self, out: dict[str, np.ndarray], given: np.ndarray | None
                 ) -> tuple[np.ndarray | None, np.ndarray]:
        """The kept rows' regions [N,H,W] bool (None when neither given nor the label map fetched) and their shares
        of the pixels; with a region, `out["target_mask"]` holds it for the extra passes."""
        targets = out["target"]
        if given is not None:
            masks = given > 0
        elif "label_map" in out:
            masks = out["label_map"] == targets[:, None, None]
        else:
            return None, out["class_share"][np.arange(len(targets)), targets]
        out["target_mask"] = masks.astype(np.float32)
        return masks, masks.mean(axis=(1, 2))

    def _explain(self, out: dict[str, np.ndarray], scores: np.ndarray, costs: Costs) -> list[TargetResult]:
        """Every method's maps (and, with evaluate, the model-run metrics) for the kept (image, class) pairs."""
        maps, channels = {}, {}
        for name, options in self.methods.items():
            start, passes = time.perf_counter(), self.passes.count
            computed = ({name: (out[map_output(name)], None)} if name in self.served
                        else METHODS[name].maps(name, out, options, self.passes))
            for index_name, (values, shown) in computed.items():
                maps[index_name] = values
                if shown is not None:
                    channels[index_name] = shown
            cost = costs.methods.setdefault(name, Cost())
            cost.rows += len(scores)
            cost.seconds += time.perf_counter() - start
            cost.model_passes += self.passes.count - passes
        results = [TargetResult(int(out["target"][k]), float(scores[k]), {name: maps[name][k].copy() for name in maps},
                                channels={name: int(shown[k]) for name, shown in channels.items()})
                   for k in range(len(scores))]
        if self.evaluation and wanted(self.evaluation, runs_model=True):
            size = out["input"].shape[2:]
            pairs = [(result, name) for result in results for name in maps]
            regions = out.get("target_mask")
            rows = [MetricRow(result.target_class, result.score, out["input"][k], explanation(maps[name][k], size),
                              mask=None if regions is None else regions[k] > 0, map_=maps[name][k])
                    for k, result in enumerate(results) for name in maps]
            values = score(self.evaluation, rows, self.scoring, runs_model=True, costs=costs.metrics)
            for (result, name), metrics in zip(pairs, values, strict=True):
                result.metrics[name] = metrics
        return results


def _fail(chunk: list[Pair], pairs: deque[Pair], message: str) -> list[ImageResult]:
    """Every image of the chunk becomes an error row, its other targets dropped; the rest of the batch goes on.
    Returns those images (all finished now)."""
    failed = {id(result): result for result, _ in chunk}
    for result in failed.values():
        result.error, result.targets = message, []
    remaining = [(result, target) for result, target in pairs if id(result) not in failed]
    pairs.clear()
    pairs.extend(remaining)
    return list(failed.values())

"""The stages compute; they know nothing of threads, processes or machines (the engines schedule them).

    ImageRef --read--> DecodedImage --explain (a batch)--> ImageResult --write--> index rows

`read` decodes and preprocesses one file, `explain` runs a batch of decoded images through the model and
the methods (and the metrics that run the model), `write` renders and writes one image's files and returns
its index rows. Each is a callable built from the manifest and the model, once per process (the local engine
shares them between its threads, or sends the read and write stages to each of its worker processes).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxcam.runner.config import Manifest
from onnxcam.runner.evaluate.metrics import wanted
from onnxcam.runner.inputs.masks import LabelImages
from onnxcam.runner.methods import METHODS
from onnxcam.runner.model.backend import Backend
from onnxcam.runner.model.graph import SEGMENTATION_OUTPUTS, GraphInfo
from onnxcam.runner.stages.explain import ExplainStage, main_outputs
from onnxcam.runner.stages.read import ReadStage
from onnxcam.runner.stages.write import WriteStage
from onnxcam.runner.targets import TargetPlan


@dataclass
class Stages:
    read: ReadStage
    explain: ExplainStage
    write: WriteStage


def output_sets(manifest: Manifest, info: GraphInfo) -> list[tuple[str, ...]]:
    """The sets of outputs the stages ask the model for: the main pass, then each kind of extra pass."""
    extra = {METHODS[name].extra_pass_output for name in manifest.methods} - {"", "forward"}  # forward: its own graph
    if manifest.evaluate and wanted(manifest.evaluate, runs_model=True):
        extra.add("logits")
    return [main_outputs(manifest.methods, info.graph_maps) + reported_outputs(manifest, info),
            *((output,) for output in sorted(extra))]


def reported_outputs(manifest: Manifest, info: GraphInfo) -> tuple[str, ...]:
    """A segmenter's outputs beside the maps': class_share always ([N, K]), label_map where it is written
    (output.label_maps) or the predicted regions are drawn (overlays, thumbnails) or scored on (extra passes, model-run
    metrics); given masks (targets.masks) are the regions themselves."""
    if info.task != "segmentation":
        return ()
    regions = manifest.targets.kind != "masks" and (
        manifest.overlays is not None or manifest.thumbnails is not None
        or any(METHODS[name].extra_pass_output for name in manifest.methods)
        or bool(manifest.evaluate and wanted(manifest.evaluate, runs_model=True)))
    return SEGMENTATION_OUTPUTS if regions or manifest.label_maps else SEGMENTATION_OUTPUTS[:1]


def build_stages(manifest: Manifest, info: GraphInfo, backend: Backend | None) -> Stages:
    """The three stages of a run; raises ManifestError where the manifest and the model disagree. With no
    backend they serve only that check (a distributed engine's driver, whose workers build their own)."""
    plan = TargetPlan(manifest.targets, info.labels, info.output_activation, info.task)
    labels = (LabelImages(plan.targets.masks_dir, info.num_classes, plan.targets.ignore_index) if plan.given_masks
              else None)
    read = ReadStage(info.preprocessing, manifest.max_pixels, manifest.max_side,
                     keep_pixels=manifest.overlays is not None or manifest.thumbnails is not None,
                     uint8_input=info.input_format == "uint8", labels=labels)
    return Stages(read=read,
                  explain=ExplainStage(backend, info, plan, manifest.methods, manifest.evaluate, manifest.batch_size,
                                       reported_outputs(manifest, info)),
                  write=WriteStage(manifest, info.labels, segmenter=info.task == "segmentation"))

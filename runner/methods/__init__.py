"""Explanation methods: the registry. A method is one function (in gradients.py, perturbation.py or features.py)
plus one entry here saying which explain-graph outputs it needs, its options, and whether it runs extra passes.

The function takes the batch's outputs ({name: [N,...] array}; perturbation methods also get `input`, `target`
and `passes`, the model's extra passes) and returns one map per row: [N,h,w], or [N,3,H,W] for guided methods.
A multi-map method (`activations`) returns V maps per row [N,V,h,w] and the channel each shows [N,V]; index.csv
names each map `method.view` (`activations.c151`, `activations.top1`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxcam.runner.config import METHOD_OPTIONS, Option, defaults
from onnxcam.runner.methods import features, fixations, perturbation
from onnxcam.runner.methods.gradients import (
    cam,
    eigencam,
    gradcam,
    gradcam_plus_plus,
    guided_backprop,
    guided_gradcam,
    hirescam,
    layercam,
    saliency,
    xgradcam,
)
from onnxcam.runner.model.graph import GraphInfo
from onnxcam.runner.model.passes import ExtraPasses


@dataclass(frozen=True)
class Method:
    compute: Callable[..., np.ndarray]
    needs: tuple[str, ...] = ("activations", "gradients")  # explain-graph outputs of the main pass
    extra_pass_output: str = ""  # what its extra passes return: logits | plain_input_gradients ("" = none)
    guided: bool = False  # returns RGB [N,3,H,W]
    needs_gap_head: bool = False
    options: dict[str, Option] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], str] | None = None  # options -> what is wrong with them ("" if nothing)
    views: Callable[..., list[str]] | None = None  # a multi-map method: options -> the suffix of each map
    needs_when: Callable[[dict[str, Any]], tuple[str, ...]] | None = None  # outputs that only some options need
    model_check: Callable[[dict[str, Any], GraphInfo, Path], str] | None = None  # (options, the model's metadata,
    # its file) -> why the method cannot serve this model ("" if it can)
    not_for_segmenters: str = ""  # why the method cannot explain a region of a segmenter's output ("" if it can)

    @property
    def defaults(self) -> dict[str, Any]:
        """The options' defaults: what the compute function gets for an option not given (it has no defaults of its
        own, so each is written once, in config.py)."""
        return defaults(self.options)

    def outputs_needed(self, options: dict[str, Any]) -> tuple[str, ...]:
        return self.needs + (self.needs_when(options) if self.needs_when else ())

    def __call__(self, outputs: dict[str, np.ndarray], options: dict[str, Any],
                 passes: ExtraPasses | None = None) -> np.ndarray:
        extra = {"passes": passes} if self.extra_pass_output else {}
        return self.compute(outputs, **(self.defaults | options), **extra).astype(np.float32, copy=False)

    def maps(self, name: str, outputs: dict[str, np.ndarray], options: dict[str, Any],
             passes: ExtraPasses | None = None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """index name -> (maps [N,...], the channel each row shows or None)."""
        if self.views is None:
            return {name: (self(outputs, options, passes), None)}
        maps, channels = self.compute(outputs, **(self.defaults | options))
        return {index_name: (maps[:, v].astype(np.float32, copy=False), channels[:, v])
                for v, index_name in enumerate(self.index_names(name, options))}

    def index_names(self, name: str, options: dict[str, Any]) -> list[str]:
        """What index.csv's method column holds for this method's maps: its name, or one `name.view` per map."""
        return [f"{name}.{view}" for view in self.views(**(self.defaults | options))] if self.views else [name]


def _stride_within_patch(options: dict[str, Any]) -> str:
    if options["stride"] > options["patch"]:
        return f"stride {options['stride']} is larger than patch {options['patch']}, which leaves pixels unscored"
    return ""


def index_names(methods: dict[str, dict[str, Any]]) -> list[str]:
    """What index.csv's method column holds for these methods, in order (`activations` -> one per map)."""
    return [index_name for name, options in methods.items() for index_name in METHODS[name].index_names(name, options)]


def method_of(index_name: str) -> Method:
    return METHODS[index_name.split(".", 1)[0]]


METHODS: dict[str, Method] = {  # options: config.py's METHOD_OPTIONS, where the manifest reader finds them too
    "cam": Method(cam, needs_gap_head=True,
                  not_for_segmenters="CAM reads a classifier's global-average-pool -> linear head, which a segmenter "
                                     "has not; use gradcam"),
    "gradcam": Method(gradcam, options=METHOD_OPTIONS["gradcam"]),
    "gradcam++": Method(gradcam_plus_plus),
    "xgradcam": Method(xgradcam),
    "hirescam": Method(hirescam),
    "layercam": Method(layercam),
    "eigencam": Method(eigencam, needs=("activations",)),
    "activations": Method(features.activations, needs=("activations",), views=features.views, check=features.check,
                          model_check=features.check_model,
                          needs_when=lambda options: ("gradients",) if options["rank_by"] == "gradcam" else (),
                          options=METHOD_OPTIONS["activations"]),
    "guided_backprop": Method(guided_backprop, needs=("input_gradients",), guided=True),
    "guided_gradcam": Method(guided_gradcam, needs=("activations", "gradients", "input_gradients"), guided=True),
    "saliency": Method(saliency, needs=("plain_input_gradients",)),
    "smoothgrad": Method(perturbation.smoothgrad, needs=(), extra_pass_output="plain_input_gradients",
                         options=METHOD_OPTIONS["smoothgrad"]),
    "occlusion": Method(perturbation.occlusion, needs=(), extra_pass_output="logits", check=_stride_within_patch,
                        options=METHOD_OPTIONS["occlusion"]),
    "patches": Method(perturbation.patches, needs=(), extra_pass_output="logits", check=_stride_within_patch,
                      options=METHOD_OPTIONS["patches"],
                      not_for_segmenters="a patch classified alone has no region of the image's prediction to be "
                                         "scored on; use occlusion"),
    "fixations": Method(fixations.fixations, needs=(), extra_pass_output="forward", model_check=fixations.check_model,
                        options=METHOD_OPTIONS["fixations"],
                        not_for_segmenters="CNN fixations backtrack from one class logit through a classifier's "
                                           "forward graph, not from a region of a segmenter's output; use gradcam"),
    "scorecam": Method(perturbation.scorecam, needs=("activations",), extra_pass_output="logits",
                       options=METHOD_OPTIONS["scorecam"]),
}

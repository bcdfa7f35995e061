"""Explanation methods: the registry. A method is one function (in gradients.py or perturbation.py) plus one
entry here saying which explain-graph outputs it needs, its options, and whether it runs extra passes.

The function takes the batch's outputs ({name: [N,...] array}; perturbation methods also get `input`, `target`
and `passes`, the model's extra passes) and returns one map per row: [N,h,w], or [N,3,H,W] for guided methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnxcam.runner.methods import perturbation
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
from onnxcam.runner.model.passes import FILLS, ExtraPasses
from onnxcam.runner.options import Option, defaults


@dataclass(frozen=True)
class Method:
    compute: Callable[..., np.ndarray]
    needs: tuple[str, ...] = ("activations", "gradients")  # explain-graph outputs of the main pass
    extra_pass_output: str = ""  # what its extra passes return: logits | plain_input_gradients ("" = none)
    guided: bool = False  # returns RGB [N,3,H,W]
    needs_gap_head: bool = False
    options: dict[str, Option] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], str] | None = None  # options -> what is wrong with them ("" if nothing)

    @property
    def defaults(self) -> dict[str, Any]:
        return defaults(self.options)

    def __call__(self, outputs: dict[str, np.ndarray], options: dict[str, Any],
                 passes: ExtraPasses | None = None) -> np.ndarray:
        extra = {"passes": passes} if self.extra_pass_output else {}
        return self.compute(outputs, **options, **extra).astype(np.float32, copy=False)


def _stride_within_patch(options: dict[str, Any]) -> str:
    if options["stride"] > options["patch"]:
        return f"stride {options['stride']} is larger than patch {options['patch']}, which leaves pixels unscored"
    return ""


_BATCH = Option(64, 1, 4096)
METHODS: dict[str, Method] = {
    "cam": Method(cam, needs_gap_head=True),
    "gradcam": Method(gradcam, options={"guided_weights": Option(False)}),
    "gradcam++": Method(gradcam_plus_plus),
    "xgradcam": Method(xgradcam),
    "hirescam": Method(hirescam),
    "layercam": Method(layercam),
    "eigencam": Method(eigencam, needs=("activations",)),
    "guided_backprop": Method(guided_backprop, needs=("input_gradients",), guided=True),
    "guided_gradcam": Method(guided_gradcam, needs=("activations", "gradients", "input_gradients"), guided=True),
    "saliency": Method(saliency, needs=("plain_input_gradients",)),
    "smoothgrad": Method(perturbation.smoothgrad, needs=(), extra_pass_output="plain_input_gradients", options={
        "noise": Option(0.15, 0.0, 10.0), "samples": Option(25, 1, 10_000), "batch_size": Option(16, 1, 4096)}),
    "occlusion": Method(perturbation.occlusion, needs=(), extra_pass_output="logits", check=_stride_within_patch,
                        options={"patch": Option(32, 1, 4096), "stride": Option(16, 1, 4096),
                                 "fill": Option("mean", choices=FILLS), "batch_size": _BATCH}),
    "scorecam": Method(perturbation.scorecam, needs=("activations",), extra_pass_output="logits",
                       options={"batch_size": _BATCH}),
}

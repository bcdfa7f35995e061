"""`onnxcam doctor`: what runs the model on this machine, why not CUDA, and the one command that fixes it."""

from __future__ import annotations

import contextlib
import io
import platform

import numpy as np
import onnx
import onnx.helper
import onnxruntime as ort
from onnxcam.runner import __version__
from onnxcam.runner.model import cuda


def cuda_session() -> bool:
    """Whether a session asked for CUDA gets it: a one-node graph, so the provider itself is tried."""
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    value = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [4]) for n in ("x", "y")]
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "doctor", value[:1], value[1:]),
                                   opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    with contextlib.redirect_stdout(io.StringIO()):  # ORT's own fallback banner; its log line says why it failed
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=[cuda.CUDA_PROVIDER, "CPUExecutionProvider"])
    session.run(None, {"x": np.ones(4, np.float32)})
    return session.get_providers()[0] == cuda.CUDA_PROVIDER


def diagnose() -> tuple[list[str], bool]:
    """The lines `onnxcam doctor` prints, and whether there is something to fix."""
    lines = [f"onnxcam {__version__} (Python {platform.python_version()}, {platform.system()} {platform.machine()})"]
    installed = ", ".join(cuda.runtime_distributions()) or f"{ort.package_name or 'onnxruntime'} {ort.__version__}"
    build = f"built for CUDA {cuda.build_cuda()}" if cuda.build_cuda() else "a CPU build"
    providers = ", ".join(p.removesuffix("ExecutionProvider") for p in ort.get_available_providers())
    lines.append(f"onnxruntime  {installed}, {build}; providers {providers}")
    clash = cuda.clash()
    if clash:
        lines.append(f"clash        {clash.why}")
    gpus: tuple[str, ...] = ()
    if cuda.CUDA_PROVIDER not in ort.get_available_providers():
        problem = cuda.no_provider()
    else:
        found = cuda.driver()
        lines.append(f"driver       {found.describe() if found else f'none ({cuda.DRIVER_LIBRARY} not found)'}")
        loaded = cuda.load_libraries()
        state = {what: f"{what} {'yes' if loaded[what] else 'no'}" for what in loaded}
        lines.append(f"libraries    {', '.join(state[w] for w, (_, need) in cuda.libraries().items() if need)}; "
                     f"for some ops: {', '.join(state[w] for w, (_, need) in cuda.libraries().items() if not need)}")
        problem = (cuda.driver_problem(found) if found else cuda.no_driver()) or cuda.missing(loaded)
        if problem is None and not cuda_session():
            problem = cuda.Unavailable("the CUDA provider failed to initialise (ONNX Runtime's message above says "
                                       "why)")
        gpus = found.gpus if found else ()
    lines.append(f"runs on      CPU: {problem.why}" if problem else
                 f"runs on      CUDA ({', '.join(gpus)}), with the CPU for the ops CUDA lacks")
    fix = (clash and clash.fix) or (problem and problem.fix)
    lines.append(f"fix          {fix or ('nothing to fix for CPU runs' if problem else 'nothing to fix')}")
    return lines, bool(fix)

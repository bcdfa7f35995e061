"""`onnxcam --version`, `onnxcam doctor`, and why a run does not use CUDA: on this machine, and on the machines the
CUDA checks are made for (a GPU server, one with an old driver, one without the CUDA libraries, ...), seen through
the probes they call."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from onnxcam.runner import __version__, doctor
from onnxcam.runner.cli import main
from onnxcam.runner.model import cuda
from onnxcam.runner.model.backend import ModelError, OnnxRuntimeBackend

GPU_BUILD = f"{ort.package_name} {ort.__version__}"
PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def run_doctor(capsys) -> tuple[int, list[str]]:
    code = main(["doctor"])
    return code, capsys.readouterr().out.splitlines()


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"onnxcam {__version__}\n"


def test_doctor_on_this_machine(capsys):
    code, lines = run_doctor(capsys)
    assert lines[0].startswith(f"onnxcam {__version__} (Python ")
    assert lines[1].startswith("onnxruntime  ") and "providers " in lines[1]
    reason = cuda.cuda_unavailable()
    if reason is None:  # a GPU machine with everything in place
        assert lines[-2].startswith("runs on      CUDA (") and lines[-1] == "fix          nothing to fix"
    else:
        assert lines[-2] == f"runs on      CPU: {reason.why}"
        assert lines[-1] == f"fix          {reason.fix or 'nothing to fix for CPU runs'}"
    assert code == (1 if reason and reason.fix else 0) and len(lines) <= 6


@pytest.fixture
def gpu_server(monkeypatch):
    """What the probes find on a Linux x86_64 server with an H100, a driver for CUDA 13.0 and the `cuda` extra."""
    monkeypatch.setattr(cuda, "gpu_wheels", lambda: True)
    monkeypatch.setattr(cuda, "nvidia_on_pci_bus", lambda: True)
    monkeypatch.setattr(cuda, "runtime_distributions", lambda: [GPU_BUILD])
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", *PROVIDERS])
    monkeypatch.setattr(cuda, "build_cuda", lambda: "13.0")
    monkeypatch.setattr(cuda, "driver", lambda: cuda.Driver((13, 0), "580.65.06", ("NVIDIA H100 80GB HBM3",), ""))
    monkeypatch.setattr(cuda, "load_libraries", lambda: dict.fromkeys(cuda.libraries(), True))
    monkeypatch.setattr(doctor, "cuda_session", lambda: True)
    return monkeypatch


def test_doctor_on_a_gpu_server_with_everything(gpu_server, capsys):
    code, lines = run_doctor(capsys)
    assert code == 0 and lines[1:] == [
        f"onnxruntime  {GPU_BUILD}, built for CUDA 13.0; providers Tensorrt, CUDA, CPU",
        "driver       NVIDIA 580.65.06, CUDA 13.0; GPU NVIDIA H100 80GB HBM3",
        "libraries    CUDA runtime yes, cuBLAS yes, cuBLASLt yes, cuRAND yes, cuDNN yes; for some ops: cuFFT yes, "
        "NVRTC yes",
        "runs on      CUDA (NVIDIA H100 80GB HBM3), with the CPU for the ops CUDA lacks",
        "fix          nothing to fix",
    ]


CASES = {
    "no cuDNN": (
        {"load_libraries": lambda: {**dict.fromkeys(cuda.libraries(), True), "cuDNN": False, "NVRTC": False}},
        "CUDA libraries not found: libcudnn.so.9", 'pip install "onnxcam[cuda]"'),
    "an old driver": (
        {"driver": lambda: cuda.Driver((12, 8), "570.86.10", ("NVIDIA A100",), "")},
        f"the NVIDIA driver 570.86.10 runs CUDA up to 12.8, and {GPU_BUILD} needs CUDA 13",
        "install an NVIDIA driver for CUDA 13"),
    "a GPU without a driver": (
        {"driver": lambda: None},
        "an NVIDIA GPU but no driver (libcuda.so.1 not found)", "install the NVIDIA driver for CUDA 13"),
    "no GPU": (
        {"driver": lambda: None, "nvidia_on_pci_bus": lambda: False},
        "no NVIDIA GPU on this machine (libcuda.so.1 not found, none on the PCI bus)", ""),
    "a provider that fails": (
        {"cuda_session": lambda: False},
        "the CUDA provider failed to initialise (ONNX Runtime's message above says why)", ""),
    "the CPU build": (
        {"runtime_distributions": lambda: ["onnxruntime 1.32.0"], "get_available_providers": lambda: PROVIDERS[1:]},
        f"this onnxruntime ({GPU_BUILD}) has no CUDA provider", 'pip uninstall -y onnxruntime && pip install '
        '"onnxcam[cuda]"'),
    "an ARM GPU server": (
        {"gpu_wheels": lambda: False, "get_available_providers": lambda: PROVIDERS[1:]},
        f"this onnxruntime ({GPU_BUILD}) has no CUDA provider, and PyPI has no CUDA build of it for ",
        "build onnxruntime with CUDA from source (onnxruntime.ai/docs/build/eps.html#cuda)"),
    "a laptop": (
        {"gpu_wheels": lambda: False, "get_available_providers": lambda: PROVIDERS[1:],
         "nvidia_on_pci_bus": lambda: None},
        f"this onnxruntime ({GPU_BUILD}) has no CUDA provider, and PyPI has no CUDA build of it for ", ""),
}


@pytest.mark.parametrize("case", CASES)
def test_doctor_names_the_problem_and_its_fix(case, gpu_server, capsys):
    patches, why, fix = CASES[case]
    for name, value in patches.items():
        gpu_server.setattr(doctor if name == "cuda_session" else ort if name == "get_available_providers" else cuda,
                           name, value)
    code, lines = run_doctor(capsys)
    assert lines[-2].startswith(f"runs on      CPU: {why}")
    assert lines[-1] == f"fix          {fix or 'nothing to fix for CPU runs'}" and code == (1 if fix else 0)
    if "get_available_providers" in patches:  # no CUDA provider: nothing else to probe
        assert [line.split()[0] for line in lines[1:]] == ["onnxruntime", "runs", "fix"]


def test_doctor_names_both_runtimes_when_both_are_installed(gpu_server, capsys):
    gpu_server.setattr(cuda, "runtime_distributions", lambda: ["onnxruntime 1.32.0", GPU_BUILD])
    code, lines = run_doctor(capsys)
    assert lines[2] == f"clash        onnxruntime 1.32.0 and {GPU_BUILD} are both installed and overwrite each other"
    assert lines[-1] == f"fix          pip uninstall -y onnxruntime {ort.package_name} && pip install \"onnxcam[cuda]\""
    assert code == 1


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


def test_a_run_without_cudnn_says_why_in_one_line_with_the_fix(toy, gpu_server):
    gpu_server.setattr(cuda, "load_libraries", lambda: {**dict.fromkeys(cuda.libraries(), True), "cuDNN": False})
    backend = OnnxRuntimeBackend(toy, "auto", [("logits",)])
    assert backend.provider == "CPUExecutionProvider"
    assert backend.notes == ['CUDA not used: CUDA libraries not found: libcudnn.so.9; pip install "onnxcam[cuda]"']
    with pytest.raises(ModelError) as error:
        OnnxRuntimeBackend(toy, ["cuda"], [("logits",)])
    assert str(error.value) == ("runtime.providers: CUDA requested but unusable: CUDA libraries not found: "
                                'libcudnn.so.9; pip install "onnxcam[cuda]"; add cpu or use auto')

"""Whether ONNX Runtime's CUDA provider can run here, and if not, why, with the command that fixes it.

The provider needs, besides onnxruntime-gpu: an NVIDIA GPU and a driver for the CUDA version the build was made with
(CUDA 13 for onnxruntime-gpu 1.31), and the CUDA libraries: the runtime, cuBLAS and cuRAND to load at all, cuDNN for
convolutions, cuFFT and NVRTC for a few ops. The `cuda` extra brings them as pip packages (onnxruntime-gpu's
`[cuda,cudnn]` extras), which `onnxruntime.preload_dlls()` loads from site-packages; a system CUDA on the library
path does as well. The names below are those that preload_dlls() loads and the provider's library links to.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import onnxruntime as ort

CUDA_PROVIDER = "CUDAExecutionProvider"
DRIVER_LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
INSTALL_CUDA = 'pip install "onnxcam[cuda]"'  # double quotes: the same command in a POSIX shell and on Windows


def gpu_wheels() -> bool:
    """Whether PyPI has onnxruntime-gpu for this platform (where pyproject.toml's markers choose it)."""
    return (sys.platform, platform.machine()) in {("linux", "x86_64"), ("win32", "AMD64")}


def build_cuda() -> str:
    """The CUDA version this onnxruntime was built with ("13.0"), or "" for a build without CUDA."""
    return ort.cuda_version


def runtime_distributions() -> list[str]:
    """The installed distributions that own the `onnxruntime` package ("onnxruntime-gpu 1.31.1"): two of them
    overwrite each other's files."""
    found = set()
    for dist in metadata.distributions():
        if (dist.metadata["Name"] or "").lower().startswith("onnxruntime") and any(
                tuple(file.parts) == ("onnxruntime", "__init__.py") for file in dist.files or ()):
            found.add(f"{dist.metadata['Name']} {dist.version}")
    return sorted(found)


def libraries() -> dict[str, tuple[str, bool]]:
    """{what: (file name, needed)} for this build's CUDA version; the others only some ops need."""
    major = int(build_cuda().split(".")[0])
    fft = 12 if major >= 13 else 11
    if sys.platform == "win32":
        return {"CUDA runtime": (f"cudart64_{major}.dll", True), "cuBLAS": (f"cublas64_{major}.dll", True),
                "cuBLASLt": (f"cublasLt64_{major}.dll", True), "cuDNN": ("cudnn64_9.dll", True),
                "cuFFT": (f"cufft64_{fft}.dll", False)}
    return {"CUDA runtime": (f"libcudart.so.{major}", True), "cuBLAS": (f"libcublas.so.{major}", True),
            "cuBLASLt": (f"libcublasLt.so.{major}", True), "cuRAND": ("libcurand.so.10", True),
            "cuDNN": ("libcudnn.so.9", True), "cuFFT": (f"libcufft.so.{fft}", False),
            "NVRTC": (f"libnvrtc.so.{major}", False)}


def load_libraries() -> dict[str, bool]:
    """Load the CUDA libraries into this process (from the nvidia-* pip packages first, then the library path), as
    the CUDA provider needs them before its session is created; {what: loaded}."""
    with contextlib.redirect_stdout(io.StringIO()):  # its "Failed to load ..." lines; the caller says it in one
        ort.preload_dlls()
    loaded = {}
    for what, (name, _) in libraries().items():
        try:
            ctypes.CDLL(name)  # found by name once preload_dlls() has loaded it from site-packages
            loaded[what] = True
        except OSError:
            loaded[what] = False
    return loaded


@dataclass(frozen=True)
class Driver:
    cuda: tuple[int, int]  # the newest CUDA version it runs
    release: str  # the kernel module's version ("580.65.06"), "" where unknown
    gpus: tuple[str, ...]  # the GPUs it sees
    error: str  # why it sees no GPU (cuInit's error), or ""

    def describe(self) -> str:
        release = f"{self.release}, " if self.release else ""
        seen = f"GPU{'s' * (len(self.gpus) > 1)} {', '.join(self.gpus)}" if self.gpus else self.error
        return f"NVIDIA {release}CUDA {self.cuda[0]}.{self.cuda[1]}; {seen}"


def driver() -> Driver | None:
    """The NVIDIA driver, through its library (the CUDA driver API), or None where it cannot be loaded."""
    try:
        cuda = ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        return None
    version = ctypes.c_int(0)
    cuda.cuDriverGetVersion(ctypes.byref(version))
    release = ""
    with contextlib.suppress(OSError):
        found = re.search(r"Module\b.*?\s(\d+\.\d+(?:\.\d+)?)\s", Path("/proc/driver/nvidia/version").read_text())
        release = found.group(1) if found else ""
    gpus, error = [], ""
    code = cuda.cuInit(0)
    if code:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(code, ctypes.byref(name))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        error = f"cuInit gives {(name.value or b'an error').decode()} ({code})" + (
            f" with CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
    else:
        count = ctypes.c_int(0)
        cuda.cuDeviceGetCount(ctypes.byref(count))
        for index in range(count.value):
            device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
            cuda.cuDeviceGet(ctypes.byref(device), index)
            cuda.cuDeviceGetName(name, len(name), device)
            gpus.append(name.value.decode())
    return Driver((version.value // 1000, version.value % 1000 // 10), release, tuple(gpus), error)


def nvidia_on_pci_bus() -> bool | None:
    """Whether the PCI bus has an NVIDIA display or 3D controller (Linux; None elsewhere or where it cannot be read)."""
    devices = Path("/sys/bus/pci/devices")
    if not devices.is_dir():
        return None
    try:
        return any((d / "vendor").read_text().strip() == "0x10de" and (d / "class").read_text().startswith("0x03")
                   for d in devices.iterdir())
    except OSError:
        return None


@dataclass(frozen=True)
class Unavailable:
    """Why the CUDA provider cannot run here, and what makes it run: a command where pip can, "" where nothing here
    can (no GPU)."""

    why: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.why}; {self.fix}" if self.fix else self.why


def clash() -> Unavailable | None:
    """Two distributions that own the `onnxruntime` package (onnxruntime and onnxruntime-gpu): whichever was
    installed last overwrote the other's files."""
    installed = runtime_distributions()
    if len(installed) < 2:
        return None
    return Unavailable(f"{' and '.join(installed)} are both installed and overwrite each other",
                       f"pip uninstall -y {' '.join(i.split()[0] for i in installed)} && "
                       f"{INSTALL_CUDA if gpu_wheels() else 'pip install onnxcam'}")


def no_provider() -> Unavailable:
    build = f"this onnxruntime ({ort.package_name or 'onnxruntime'} {ort.__version__}) has no CUDA provider"
    if gpu_wheels():
        return Unavailable(build, f"pip uninstall -y onnxruntime && {INSTALL_CUDA}")
    why = f"{build}, and PyPI has no CUDA build of it for {platform.system()} {platform.machine()}"
    if nvidia_on_pci_bus():  # a GPU server on ARM (GH200, Graviton with GPUs)
        return Unavailable(why, "build onnxruntime with CUDA from source (onnxruntime.ai/docs/build/eps.html#cuda)")
    return Unavailable(why)


def no_driver() -> Unavailable:
    on_bus = nvidia_on_pci_bus()
    if on_bus is False:
        return Unavailable(f"no NVIDIA GPU on this machine ({DRIVER_LIBRARY} not found, none on the PCI bus)")
    if on_bus:
        return Unavailable(f"an NVIDIA GPU but no driver ({DRIVER_LIBRARY} not found)",
                           f"install the NVIDIA driver for CUDA {build_cuda().split('.')[0]}")
    return Unavailable(f"no NVIDIA driver ({DRIVER_LIBRARY} not found)")


def driver_problem(found: Driver) -> Unavailable | None:
    if found.error:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        fix = "name a GPU in CUDA_VISIBLE_DEVICES, or unset it" if visible is not None else ""
        return Unavailable(f"the NVIDIA driver sees no usable GPU: {found.error}", fix)
    need = int(build_cuda().split(".")[0])
    if found.cuda[0] < need:
        release = f" {found.release}" if found.release else ""
        return Unavailable(f"the NVIDIA driver{release} runs CUDA up to {found.cuda[0]}.{found.cuda[1]}, and "
                           f"{ort.package_name} {ort.__version__} needs CUDA {need}",
                           f"install an NVIDIA driver for CUDA {need}")
    return None


def missing(loaded: dict[str, bool]) -> Unavailable | None:
    names = [name for what, (name, needed) in libraries().items() if needed and not loaded[what]]
    return Unavailable(f"CUDA libraries not found: {', '.join(names)}", INSTALL_CUDA) if names else None


def cuda_unavailable() -> Unavailable | None:
    """Why the CUDA provider cannot run here, with the fix; None when it can, the CUDA libraries then being loaded
    into this process, as the provider needs them before its session is created."""
    if CUDA_PROVIDER not in ort.get_available_providers():
        return clash() or no_provider()
    found = driver()
    if found is None:
        return no_driver()
    return driver_problem(found) or missing(load_libraries())

"""The engines a run may use: the registry, like METHODS and BACKENDS. An engine is one class following the `Engine`
protocol (engines/__init__.py) plus one entry here saying what it needs and serves and how it is built, so `Run` and
the CLI ask the entry instead of testing an engine's name. The local engine is the default; `--ray` picks "ray".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from onnxcam.runner.config import Manifest, ManifestError
from onnxcam.runner.engines import Engine, EngineError
from onnxcam.runner.engines.local import LocalEngine
from onnxcam.runner.model.backend import Backend
from onnxcam.runner.model.graph import GraphInfo
from onnxcam.runner.model.registry import BACKENDS
from onnxcam.runner.stages import build_stages


@dataclass(frozen=True)
class EngineSetup:
    """What an engine is built from, once the run holds output.dir's lock."""

    manifest: Manifest
    info: GraphInfo
    open_backend: Callable[[], Backend]  # the manifest's backend, opened in this process (a test's, if it passed one)
    settings: object  # the engine's own settings (EngineKind.settings' result)


def _no_settings() -> None:
    return None


@dataclass(frozen=True)
class EngineKind:
    build: Callable[[EngineSetup], Engine]
    flag: str = ""  # the `onnxcam run` option that picks it ("" the default engine)
    ray_actors: bool = False  # runs the backend on Ray actors, across nodes (their package is needed there, not here)
    module: str = ""  # the module whose import needs the optional package ("" none)
    package: str = ""  # that package, as the missing-package line names it
    extra: str = ""  # the pip extra that brings it
    settings: Callable[..., object] = _no_settings  # the engine's settings from the command line's options

    def check_installed(self) -> None:
        """EngineError, one line naming the extra to install, when the package this engine needs is missing."""
        if not self.module:
            return
        try:
            importlib.import_module(self.module)
        except ImportError as error:
            raise EngineError(f"{self.flag} needs {self.package}, an optional extra ({error}): "
                              f"pip install 'onnxcam[{self.extra}]'") from None

    def serves(self, backend: str) -> bool:
        """Whether it can run this backend (BACKENDS' entry says whether that runs on Ray actors)."""
        return BACKENDS[backend].ray_actors or not self.ray_actors

    def check(self, manifest: Manifest) -> None:
        """Before anything loads: the engine's package, and the manifest's backend it runs (with that backend's
        package when it runs here)."""
        self.check_installed()
        if not self.serves(manifest.backend):
            raise ManifestError(f"{manifest.path}: runtime.backend: {manifest.backend} does not run with {self.flag}; "
                                f"run without {self.flag}")
        if not self.ray_actors:
            BACKENDS[manifest.backend].check_installed(manifest.backend)


def _local(setup: EngineSetup) -> Engine:
    m = setup.manifest
    return LocalEngine(build_stages(m, setup.info, setup.open_backend()), m.batch_size, m.workers, m.memory_budget,
                       m.worker_processes)


def _ray(setup: EngineSetup) -> Engine:
    from onnxcam.runner.engines.ray_data import RayEngine

    return RayEngine(setup.manifest, setup.settings)


def _ray_settings(**options: object) -> object:
    from onnxcam.runner.engines.ray_data import RaySettings

    return RaySettings(**options)


ENGINES: dict[str, EngineKind] = {
    "local": EngineKind(_local),
    "ray": EngineKind(_ray, flag="--ray", ray_actors=True, module="onnxcam.runner.engines.ray_data",
                      package="Ray Data", extra="ray", settings=_ray_settings),
}

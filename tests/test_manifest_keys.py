"""config.manifest_keys() is what the manifest reader accepts: every key it lists is read (a method's or a metric's
option at its default, a section's key misspelt is answered with that key), so the docs' key reference can be
checked against it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from onnxcam.runner.config import METHOD_OPTIONS, METRIC_OPTIONS, SECTIONS, manifest_keys
from onnxcam.runner.manifest import ManifestError, load_manifest


def manifest(folder: Path, **sections) -> Path:
    (folder / "model.onnx").write_bytes(b"")  # the reader checks that the file exists; the run reads it
    (folder / "images").mkdir(exist_ok=True)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump({"model": "model.onnx", "images": {"root": "images"}, "methods": ["gradcam"],
                                    "output": {"dir": "out"}} | sections))
    return path


def test_the_keys_name_every_section_and_option():
    keys = manifest_keys()
    assert len(keys) == len(set(keys))
    for key in ("model", "images.root", "output.overlays.quality", "runtime.backend", "runtime.providers",
                "evaluate.metrics", "scorecam.batch_size", "occlusion.fill", "evaluate.deletion.steps"):
        assert key in keys, key


@pytest.mark.parametrize("method", METHOD_OPTIONS)
def test_every_method_option_key_is_read(tmp_path, method):
    options = {name: list(option.default) if isinstance(option.default, tuple) else option.default
               for name, option in METHOD_OPTIONS[method].items()}
    if method == "activations":
        options["top"] = 1  # one of channels and top
    read = load_manifest(manifest(tmp_path, methods=[method], **{method: options}))
    listed = {key.split(".", 1)[1] for key in manifest_keys() if key.startswith(f"{method}.")}
    assert set(read.methods[method]) == listed


@pytest.mark.parametrize("metric", METRIC_OPTIONS)
def test_every_metric_option_key_is_read(tmp_path, metric):
    options = {name: option.default for name, option in METRIC_OPTIONS[metric].items()}
    read = load_manifest(manifest(tmp_path, evaluate={"metrics": [metric], metric: options}))
    prefix = f"evaluate.{metric}."
    listed = {key[len(prefix):] for key in manifest_keys() if key.startswith(prefix)}
    assert set(read.evaluate.metrics[metric]) == listed


@pytest.mark.parametrize("section", [section for section in SECTIONS if section not in ("", "targets")])
def test_a_misspelt_key_of_each_section_is_answered_with_the_key(tmp_path, section):
    for key in SECTIONS[section]:
        value = {key + "x": 1}
        sections = {"images": {"root": "images"}, "output": {"dir": "out"}}
        *parents, last = section.split(".")
        target = sections.setdefault(parents[0], {}) if parents else sections.setdefault(last, {})
        if parents:
            target[last] = value
        else:
            target.update(value)
        with pytest.raises(ManifestError, match=rf": {section}\.{key}x: unknown key; did you mean '{key}'\?$"):
            load_manifest(manifest(tmp_path, **sections))

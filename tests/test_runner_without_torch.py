"""The runner must import and work without torch installed."""

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")

    sys.meta_path.insert(0, BlockTorch())
""")


def test_runner_imports_with_torch_blocked():
    script = BLOCK_TORCH + textwrap.dedent("""
        import importlib, pkgutil
        import onnxcam.runner as runner
        modules = [m.name for m in pkgutil.walk_packages(runner.__path__, "onnxcam.runner.")]
        for name in modules:
            importlib.import_module(name)
        assert "torch" not in sys.modules
        from onnxcam.runner.cli import main
        assert main(["export", "--model", "efficientnet-lite0", "--out", "x.onnx"]) == 2
        print("imported", len(modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "needs the exporter extras" in result.stdout
    count = int(result.stdout.strip().splitlines()[-1].split()[-1])
    assert count >= 35


def test_a_full_run_needs_no_torch(exported, tmp_path):
    from runner_helpers import read_index, write_images, write_manifest

    write_images(tmp_path / "images", 3)
    manifest = write_manifest(tmp_path, exported("toy_models:relu_net")[1].path, tmp_path / "images",
                              methods=["gradcam", "guided_gradcam"])
    script = BLOCK_TORCH + textwrap.dedent("""
        from onnxcam.runner.cli import main
        code = main(["run", sys.argv[1], "--quiet"])
        assert "torch" not in sys.modules
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(manifest)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [row["status"] for row in read_index(tmp_path / "out")] == ["ok"] * 6


def test_filters_and_impressions_need_no_torch(exported, tmp_path):
    path = exported("toy_models:relu_net", saliency=True)[1].path
    script = BLOCK_TORCH + textwrap.dedent("""
        from onnxcam.runner.cli import main
        model, out = sys.argv[1], sys.argv[2]
        assert main(["filters", model, "--out", out + "/filters.png"]) == 0
        assert main(["impressions", model, "--classes", "0,3", "--steps", "3", "--out", out, "--providers", "cpu"]) == 0
        assert "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["0-0.png", "3-3.png", "filters.png"]

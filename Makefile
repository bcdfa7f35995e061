# onnxcam: export once, explain in bulk.  `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= efficientnet-lite0
LAYER ?= auto
OUT ?= exports/$(subst :,-,$(MODEL)).onnx
EXPORT_FLAGS ?= --saliency
MANIFEST ?= manifests/demo.yaml
DIR ?= demo/out
RUN_FLAGS ?=
BENCH_FLAGS ?=
OVXAI_VENV ?= .venv-ovxai
TF_VENV ?= .venv-tf

.PHONY: setup browser test test-fast lint export info run report doctor demo-images demo-segmenter demo bench bench-resume bench-big \
	bench-ray bench-report bench-stages bench-gpu bench-peer bench-onnx bench-smoke zoo wheel platforms docs tf clean help

setup: $(VENV)/.installed  ## create .venv, install onnxcam (editable) with the export, test, ray, openvino, docs, smp extras

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[export,test,ray,openvino,docs,smp]'
	touch $@

# report.html's browser tests drive Debian's chromium through Playwright; installed here where it is missing and apt-get
# can (as root); elsewhere those tests skip, saying why.
browser:  ## install Chromium for the report's browser tests, if missing (apt-get, as root)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo "make: installing chromium (apt-get)" \
	     && apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	|| echo "make: no Chromium (apt-get install -y chromium, or set ONNXCAM_CHROMIUM); the browser tests will skip"

lint: setup  ## ruff
	$(BIN)/ruff check .

# Both run every benchmark at its --smoke size (tests/test_benchmarks.py, about 2 minutes on 2 idle cores), so none
# rots. test builds .venv-tf (make tf) for the Keras and TensorFlow models' tests; test-fast leaves them out (slow).
test: lint browser docs tf  ## ruff, the docs site (--strict) and every test (about an hour on 2 cores; what CI runs)
	$(BIN)/pytest -q

# The everyday loop: everything but the tests marked slow (exports of real models, long runs); 9 minutes on 2 cores, of
# which about 2 the benchmarks' smoke runs.
test-fast: lint browser  ## ruff and the tests not marked slow (9 min on 2 cores)
	$(BIN)/pytest -q -m "not slow"

export: setup  ## export MODEL (efficientnet-lite0) to OUT with EXPORT_FLAGS (--saliency)
	$(BIN)/onnxcam export --model $(MODEL) --layer $(LAYER) --out $(OUT) $(EXPORT_FLAGS)

info: setup  ## print OUT's metadata and parity figures
	$(BIN)/onnxcam info $(OUT)

run: setup  ## run MANIFEST (manifests/demo.yaml) with RUN_FLAGS
	$(BIN)/onnxcam run $(MANIFEST) $(RUN_FLAGS)

report: setup  ## rebuild report.html for DIR (make report DIR=demo/out)
	$(BIN)/onnxcam report $(DIR)

doctor: setup  ## what runs the model here (CUDA or CPU), why, and the command that fixes it
	$(BIN)/onnxcam doctor

demo-images: setup  ## scikit-image's photographs into demo/images
	$(BIN)/python tools/sample_photos.py demo/images

# The segmentation demo's scenes (seed 1) and a tiny segmenter trained on others (seed 0, about two CPU minutes) and
# exported; file targets, so that a second `make` keeps them. Its layer is the decoder's last map, where Grad-CAM's
# peak falls inside the explained shape on all 36 of the demo's rows (the encoder's last map, --layer auto: 27).
SEG_DEMO := demo/segmentation
SEG_GRAPH := exports/tiny-segmenter.onnx
demo-segmenter: $(SEG_DEMO)/classes.txt $(SEG_DEMO)/segmenter.pth  ## synthetic scenes, their masks, a segmenter trained here

$(SEG_DEMO)/classes.txt: tools/segmentation_scenes.py | setup
	$(BIN)/python tools/segmentation_scenes.py $(SEG_DEMO) --count 24 --seed 1

$(SEG_DEMO)/segmenter.pth: tools/segmentation_scenes.py tools/tiny_segmenter.py | setup
	$(BIN)/python tools/tiny_segmenter.py --out $@

$(SEG_GRAPH): $(SEG_DEMO)/segmenter.pth $(SEG_DEMO)/classes.txt
	PYTHONPATH=tools $(BIN)/onnxcam export --model tiny_segmenter:build --weights $(SEG_DEMO)/segmenter.pth \
		--layer decoder.fuse --input-size 128 --labels $(SEG_DEMO)/classes.txt --out $@

# The main job on the bundled default: export efficientnet-lite0, explain scikit-image's photographs, measure
# how faithful four methods are on the photographs with object boxes, then look inside the model: channels,
# fixations and patch scores on five photographs, the first layer's filters, impressions of four classes; then a
# segmenter trained here on synthetic scenes, each shape explained over its predicted pixels.
demo: export demo-images $(SEG_GRAPH)  ## export, then every demo manifest, the filters and the impressions (see README)
	$(BIN)/onnxcam info $(OUT)
	rm -rf demo/out demo/evaluate demo/inside demo/impressions $(SEG_DEMO)/out
	$(BIN)/onnxcam run manifests/demo.yaml $(RUN_FLAGS)
	$(BIN)/onnxcam run manifests/demo-evaluate.yaml $(RUN_FLAGS)
	$(BIN)/onnxcam run manifests/demo-inside.yaml $(RUN_FLAGS)
	$(BIN)/onnxcam filters $(OUT) --out demo/filters.png
	$(BIN)/onnxcam impressions $(OUT) --classes 1,282,417,954 --out demo/impressions
	$(BIN)/onnxcam run manifests/demo-segmentation.yaml $(RUN_FLAGS)
	@echo "open in a browser: demo/out/report.html, demo/evaluate/report.html (faithfulness), demo/inside/report.html"
	@echo "overlays and heatmaps: demo/out/   index: demo/out/index.csv   run: demo/out/run.json"
	@echo "faithfulness: demo/evaluate/summary.csv   curves: demo/evaluate/curves/"
	@echo "channels, fixations, patches: demo/inside/   filters: demo/filters.png   impressions: demo/impressions/"
	@echo "a segmenter on synthetic scenes: $(SEG_DEMO)/out/report.html"

# onnxcam vs pytorch-grad-cam, side by side (prints images/s, ratios, peak RSS); not a test. The ONNX source's graph vs
# the torch-traced one is `make bench-onnx`.
bench: setup  ## onnxcam vs pytorch-grad-cam and Captum, side by side (BENCH_FLAGS)
	$(BIN)/python benchmarks/benchmark.py $(BENCH_FLAGS)

# The explain graph made from a plain ONNX file (--model onnx:FILE) vs `onnxcam export`'s of the same weights (ResNet-50,
# EfficientNet-Lite0): both exports' seconds, images/s of the same run, ms/image of the main pass; not a test.
bench-onnx: setup  ## the ONNX source's graph vs the torch-traced one: export seconds, images/s, ms/image (BENCH_FLAGS)
	$(BIN)/python benchmarks/onnx_source_benchmark.py $(BENCH_FLAGS)

# 8 camera-sized (48 MP) JPEGs and 64 ordinary photographs: peak RSS, seconds, bytes written; not a test.
bench-big: export  ## 48 MP photographs: peak RSS, seconds, bytes written
	$(BIN)/python benchmarks/big_photos_benchmark.py --model $(OUT) $(BENCH_FLAGS)

# Resuming a 1,000,000-image x 2-method index: peak RSS and seconds to the first new image; not a test.
bench-resume: export  ## resuming a 1,000,000-image index: peak RSS, seconds to the first new image
	$(BIN)/python benchmarks/resume_benchmark.py --model $(OUT) $(BENCH_FLAGS)

# `onnxcam run --ray` vs the local engine on the same JPEGs (steady-state images/s, start-up, peak RSS); not a test.
bench-ray: setup  ## onnxcam run --ray vs the local engine
	$(BIN)/python benchmarks/ray_benchmark.py $(BENCH_FLAGS)

# OpenVINO XAI 1.1 pins OpenVINO 2024.4, older than onnxcam's openvino extra: it gets an environment of its own.
$(OVXAI_VENV)/.installed:
	$(PYTHON) -m venv $(OVXAI_VENV)
	$(OVXAI_VENV)/bin/pip install -q --upgrade pip
	$(OVXAI_VENV)/bin/pip install -q openvino-xai==1.1.0
	touch $@

# TensorFlow and Keras get an environment of their own (their protobuf and numpy pins fight onnx's and torch's in .venv):
# the Keras and TensorFlow models the ONNX-source tests explain, and their references (tools/keras_models.py).
# Versions and why: tools/requirements-tf.txt. 1.8 GB; 2 minutes to install here (downloads included).
tf: $(TF_VENV)/.installed  ## create .venv-tf: TensorFlow, Keras 3, tf2onnx (tools/requirements-tf.txt)

$(TF_VENV)/.installed: tools/requirements-tf.txt
	$(PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/pip install -q --upgrade pip
	$(TF_VENV)/bin/pip install -q -r tools/requirements-tf.txt
	touch $@

# onnxcam (ONNX Runtime f32, OpenVINO f32 and bf16) vs OpenVINO XAI ReciproCAM on the same JPEGs; not a test.
bench-peer: setup $(OVXAI_VENV)/.installed  ## onnxcam vs OpenVINO XAI on this CPU (OpenVINO XAI in .venv-ovxai)
	$(BIN)/python benchmarks/peer_benchmark.py --ovxai-python $(OVXAI_VENV)/bin/python $(BENCH_FLAGS)

# A 100,000-image output.dir's report: build time, opening it in headless Chromium, filters, scrolling; not a test.
bench-report: demo browser  ## report.html at 100,000 images: build, open, filter, sort, scroll (BENCH_FLAGS)
	$(BIN)/python benchmarks/report_benchmark.py $(BENCH_FLAGS)

# The CPU stages per image: CPU ms, GIL share, the images/s they allow on 16 cores; not a test.
bench-stages: export  ## the CPU stages: CPU ms per image, GIL share, projection to 16 cores (BENCH_FLAGS)
	$(BIN)/python benchmarks/stage_profile.py --model $(OUT) $(BENCH_FLAGS)

# Every benchmark at its --smoke size, each in its own process (what test and test-fast run; -s prints the figures).
bench-smoke: setup  ## every benchmark at its --smoke size (a few images, a toy graph), checked
	$(BIN)/pytest -q tests/test_benchmarks.py

# One shot on a GPU server: parity with the CPU, compute-only and end-to-end images/s of the float and the served
# graph (Grad-CAM in the graph, uint8 input) at batch 64 and 256, pytorch-grad-cam beside them; not a test.
GPU_MODEL ?= exports/torchvision-resnet50.onnx
GPU_FP16_MODEL ?= $(GPU_MODEL:.onnx=-fp16.onnx)
GPU_WEIGHTS := exports/torchvision-resnet50-seed0.pt
bench-gpu: setup  ## GPU throughput of GPU_MODEL and GPU_FP16_MODEL (ResNet-50, float32 and float16), one shot
	@# one set of random weights for both graphs (no pretrained ResNet-50 ships offline; the speed is the same)
	@test -f $(GPU_WEIGHTS) || $(BIN)/python -c "import torch, torchvision; torch.manual_seed(0); \
		torch.save(torchvision.models.resnet50().state_dict(), '$(GPU_WEIGHTS)')"
	@test -f $(GPU_MODEL) || $(BIN)/onnxcam export --model torchvision:resnet50 --weights $(GPU_WEIGHTS) --out $(GPU_MODEL)
	@test -f $(GPU_FP16_MODEL) || $(BIN)/onnxcam export --model torchvision:resnet50 --weights $(GPU_WEIGHTS) \
		--out $(GPU_FP16_MODEL) --fp16
	$(BIN)/python benchmarks/gpu_benchmark.py --model $(GPU_MODEL) --fp16-model $(GPU_FP16_MODEL) $(BENCH_FLAGS)

# Export every torchvision classification model (random weights) and write the coverage table into docs/models.md;
# about 70 minutes on two cores, not part of `make test`; results kept in exports/zoo.jsonl (resumes). Its last column,
# whether each plain ONNX export goes through `--model onnx:`, alone: make zoo BENCH_FLAGS=--onnx-source-only
zoo: setup  ## export every torchvision classifier, the coverage table into docs/models.md (~70 min)
	$(BIN)/python tools/zoo.py $(BENCH_FLAGS)

# The wheel of "Install" (in-tree build: build/ and onnxcam.egg-info are left beside the sources).
wheel: setup  ## build dist/onnxcam-VERSION-py3-none-any.whl
	$(BIN)/pip wheel --no-deps -w dist .

# pip's dry run for Linux x86_64 and aarch64, macOS arm64, Windows x86_64; needs the package index.
platforms: setup  ## which wheels each platform gets: the table into docs/install.md
	$(BIN)/python tools/resolve_platforms.py

# The documentation site (MkDocs, Material theme) from docs/ and mkdocs.yml; --strict: a broken link or anchor, or a page
# left out of the navigation, fails (make test builds it too; not --quiet, which hides the warnings --strict counts).
# Open site/index.html, or serve it: .venv/bin/mkdocs serve
docs: setup  ## build the documentation site into site/ (mkdocs build --strict)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:  ## remove exports, outputs, the demo, the built wheel and the docs site
	rm -rf exports out demo dist build site

help:  ## this list
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

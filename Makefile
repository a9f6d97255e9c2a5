# coinvision: `make demo` runs the whole loop, `make test` runs the test suite. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
WEIGHTS ?= ../shared/weights
# pip must take PyPI's torch 2.13.0 + torchvision 0.28.0 pair: a machine-local CPU-only torch wheel
# (pip.conf find-links) does not match PyPI's torchvision and `import timm` then fails.
PIP := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: install test test-fast test-js test-kotlin lint sdk-only demo bench models release-models \
	release-embedder-branch release-segmenter split lite0-weights seg-labels clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[all,dev]"
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache  # the layer contracts in pyproject.toml [tool.importlinter]

test: install lint sdk-only test-js test-kotlin
	$(BIN)/python -m pytest $(PYTEST_ARGS)  # gpu tests skip with the reason on a machine without one

# The mobile SDKs against the reference: conformance kit, golden packs, a real `coinvision serve` (from .venv).
# test-js also builds sdk_js/dist/browser, which the offline web app (/app/) serves and its browser test loads.
test-js: install
	cd sdk_js && npm ci --no-audit --no-fund && npm test

test-kotlin: install
	cd sdk_kotlin && mvn -q -B test

# The fast tier (under a minute): no torch, no export, no training. tests/conftest.py marks those tests slow.
test-fast: install
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

# A fresh venv with nothing but `pip install ".[sdk]"` (a built wheel, not the checkout): the SDK installs and
# works alone — public imports, the release models found from any folder, segment/embed/pack/recognize/eval.
SDK_VENV ?= .venv-sdk
sdk-only:
	rm -rf $(SDK_VENV)
	$(PYTHON) -m venv $(SDK_VENV)
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(SDK_VENV)/bin/python -m pip install -q ".[sdk]" && rm -rf build
	$(SDK_VENV)/bin/python tests/sdk_only/check_install.py

demo: install
	$(BIN)/python examples/demo.py

bench: install
	$(BIN)/python -m benchmarks.run_all --quick

# The whole release from the shared data on a fresh clone, one command, resumable (each training step continues
# from its last.pt; the crop cache and labels are reused): ImageNet weights from the packages, segmentation labels,
# segmenter, embedder (its crop cache comes from that segmenter), export + parity + assembly (release-models).
# The GPU is used when present (device: auto). Override the configs to change the recipe. Note: this release
# ships the v1 embedder (its checkpoint predates this chain) with a frozen Lite0 branch (release-embedder-branch);
# EMB_CONFIG is the v2 recipe, which measured below v1 (models/release/README.md): compare before replacing
# models/release with what this target builds.
SEG_CONFIG ?= trainer/configs/segmenter_v2.yaml
EMB_CONFIG ?= trainer/configs/embedder_lite0.yaml
SEG_OUT ?= runs/segmenter/models
EMB_OUT ?= runs/embedder/models

models: install seg-labels
	$(BIN)/coinvision pretrained port-lite --variant lite0 --out runs/pretrained/tf_efficientnet_lite0.pth
	test -f runs/pretrained/mobilenetv2_100_imagenet.pth || $(BIN)/coinvision pretrained port-mobilenetv2 \
		--tflite $(WEIGHTS)/mobilenet_v2_1.0_224_quant.tflite --out runs/pretrained/mobilenetv2_100_imagenet.pth \
		--check-images $(DATA)/coins211/images
	$(BIN)/coinvision train segmenter --config $(SEG_CONFIG) --resume --set out_dir=$(SEG_OUT)
	$(BIN)/coinvision train embedder --config $(EMB_CONFIG) --resume --set out_dir=$(EMB_OUT) \
		segmenter_checkpoint=$(SEG_OUT)/best.pt segmenter_models_dir=null
	$(MAKE) release-models SEG_CKPT=$(SEG_OUT)/best.pt EMB_CKPT=$(EMB_OUT)/best.pt

# Steps the training and release targets share; each skips what is already there (the split rewrites the same rows).
split: install
	$(BIN)/coinvision data split $(DATA)/coins211 $(DATA)/euro_phone --out $(SPLIT)/splits.csv --materialize $(SPLIT)

lite0-weights: install
	test -f runs/pretrained/tf_efficientnet_lite0.pth || $(BIN)/coinvision pretrained port-lite --variant lite0 \
		--out runs/pretrained/tf_efficientnet_lite0.pth

seg-labels: install
	test -f runs/seg_labels/manifest.csv || $(BIN)/coinvision data seg-labels $(DATA)/coins211 $(DATA)/euro_phone --out runs/seg_labels
	test -f runs/seg_labels_v2/manifest.csv || $(BIN)/coinvision data refine-labels runs/seg_labels \
		$(DATA)/coins211 $(DATA)/euro_phone --out runs/seg_labels_v2

# Release models (the checkpoints models/release/README.md describes): export them, then assemble models/release
# (converters/release.py: what ships, under 40 MB; the model card stays). int8 calibration uses photos of TRAINING
# classes, the parity check all photos of the embedder's held-out classes (the trainer's split, under runs/split).
SEG_CKPT ?= runs/segmenter/mnv2_long/best.pt
EMB_CKPT ?= runs/embedder/mnv2_long/best.pt
SPLIT := runs/split
TFLITE_DEFAULT ?= int8
CHECK_COUNT ?= 1000  # more than the 661 held-out query photos: check on all of them

release-models: install split
	$(BIN)/coinvision export $(SEG_CKPT) $(EMB_CKPT) --out runs/export_release --coreml-variants fp16,palette6 \
		--calibration $(SPLIT)/train --calibration-count 200 --check --check-images $(SPLIT)/query --check-count $(CHECK_COUNT) \
		|| test $$? -eq 1  # 1 = a parity target missed: the assembler below keeps only files that passed
	$(BIN)/python -m coinvision.converters.release runs/export_release models/release --tflite-default $(TFLITE_DEFAULT)

# The shipped embedder (models/release/README.md): two trained embedders (BASE_CKPT, the v1 run, and COMPANION_CKPT,
# the same recipe retrained on the grown data: `make embedder-v3`) + a frozen EfficientNet-Lite0 branch whose PCA is
# fitted on the training split's photos, cosine shares 0.4 / 0.4 / 0.2, ONE view (three backbones per view: two
# views cost more than they bought), the whole vector half-whitened by a PCA of the training photos' vectors
# (`coinvision train embedder-whiten`), its unknown threshold recalibrated on the held-out classes; exported and
# parity-checked, ONNX weights stored as int8 (each file checked against its fp32 source; float16 would put the
# release over 40 MB), assembled beside the released segmenter (carried over as it is, in its own ONNX form); its
# crop then keeps the mask's convex hull (`crop_mask`, spec step 3: benchmarks/bench_scene_recognition.py).
# On a fresh clone both trained parts come back from the shipped ONNX file (`coinvision recover-embedder`): leave
# COMPANION_CKPT empty to keep the recovered companion. RELEASE_DIR: the folder assembled (a copy of models/release
# to build a candidate beside the release; the parts are always recovered from models/release itself).
RELEASE_DIR ?= models/release
BASE_CKPT ?= runs/embedder/recovered/best.pt
COMPANION_CKPT ?=
BRANCH_OUT ?= runs/embedder/pair
release-embedder-branch: install split lite0-weights
	test -f $(BASE_CKPT) || $(BIN)/coinvision recover-embedder models/release/embedder.onnx --out $(BASE_CKPT)
	$(BIN)/coinvision train embedder-branch $(BASE_CKPT) --photos $(SPLIT)/train --embed-rotations 1 --weight 0.2 \
		$(if $(COMPANION_CKPT),--companion $(COMPANION_CKPT) \
		--companion-weight 0.4) --out $(BRANCH_OUT)/best.pt
	$(BIN)/coinvision train embedder-whiten $(BRANCH_OUT)/best.pt --photos $(SPLIT)/train --calibrate $(SPLIT)/catalog \
		$(SPLIT)/query --shrink 1.0 --out $(BRANCH_OUT)/whitened.pt
	$(BIN)/coinvision export $(BRANCH_OUT)/whitened.pt --out runs/export_branch --quant fp32,int8_full \
		--coreml-variants palette6 --calibration $(SPLIT)/train --calibration-count 200 --check \
		--check-images $(SPLIT)/query --check-count $(CHECK_COUNT) || test $$? -eq 1
	$(BIN)/python -m coinvision.converters.onnx_weights runs/export_branch/embedder.onnx \
		runs/export_branch/embedder.int8w.onnx --form int8_weights --check-images $(SPLIT)/query --models $(RELEASE_DIR)
	$(BIN)/python -m coinvision.converters.release runs/export_branch $(RELEASE_DIR) --tflite-default int8 \
		--onnx-variant embedder=int8_weights --kinds embedder
	$(BIN)/python -m coinvision.converters.release_postprocess $(RELEASE_DIR) --kind embedder --set crop_mask=convex_hull

# The companion of the shipped embedder: the v1 recipe on all of coins211's grown training photos, without mirror
# augmentation (~37 min on 2 threads here; resumable).
embedder-v3: install split
	$(BIN)/coinvision train embedder --config trainer/configs/embedder_mobilenetv2_v3.yaml --resume

# The shipped segmenter (models/release/README.md, segmenter v3): the v2 recipe on an EfficientNet-Lite0 encoder
# (trainer/configs/segmenter_lite0.yaml: 40 epochs, then continued to 100 with more 2-5 coin scenes), one pass for
# coins that fill the photo (single_pass_box_frac), 3 x 3 tiles when the whole photo shows none (tile_frac:
# benchmarks/bench_seg_tiles.py), 2 turns of the crop averaged in the second pass and no touching-coin split (views,
# split_touching: benchmarks/bench_seg_views.py), exported and parity-checked on every held-out query
# photo, ONNX weights stored as int8 (checked against the fp32 file; float16 would put the release over 40 MB),
# assembled beside the released embedder (carried over as it is). Resumable: each training step continues from
# its last.pt.
SEG_LITE0_OUT ?= runs/segmenter/lite0_128
release-segmenter: install split lite0-weights seg-labels
	$(BIN)/coinvision train segmenter --config trainer/configs/segmenter_lite0.yaml --resume --set out_dir=$(SEG_LITE0_OUT)
	$(BIN)/coinvision train segmenter --config trainer/configs/segmenter_lite0.yaml --resume \
		--set out_dir=$(SEG_LITE0_OUT) epochs=100 synth.multi_coin_p=0.6
	$(BIN)/coinvision train segmenter-postprocess $(SEG_LITE0_OUT)/best.pt --set single_pass_box_frac=0.8 tile_frac=0.4 \
		views=2 split_touching=false \
		--out $(SEG_LITE0_OUT)/release.pt
	$(BIN)/coinvision export $(SEG_LITE0_OUT)/release.pt --out runs/export_segmenter --quant fp32,int8_full \
		--coreml-variants palette6 --calibration $(SPLIT)/train --calibration-count 200 --check \
		--check-images $(SPLIT)/query --check-count $(CHECK_COUNT) || test $$? -eq 1
	$(BIN)/python -m coinvision.converters.onnx_weights runs/export_segmenter/segmenter.onnx \
		runs/export_segmenter/segmenter.int8w.onnx --form int8_weights --check-images $(SPLIT)/query
	$(BIN)/python -m coinvision.converters.release runs/export_segmenter models/release --tflite-default int8 \
		--onnx-variant segmenter=int8_weights --kinds segmenter

clean:
	rm -rf $(VENV) $(SDK_VENV) .pytest_cache .ruff_cache

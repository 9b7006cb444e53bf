# Copyright (c) 2026 SelfMedHPM bundles contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

# SelfMedHPM bundles: one entry point per workflow. `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= results/data
RESULTS ?= results/demo
# MONAI Label 0.8.5 (optional, for annotators): its own environment; torchvision needs torch 2.14.1 there
MLVENV ?= .venv-monailabel
MLPIP := $(MLVENV)/bin/pip
MLSTAMP := $(MLVENV)/.installed
APP ?= apps/selfmedhpm

.PHONY: venv demo study study-quick test test-fast lint format verify bench bench-quick release index clean monailabel-env monailabel-app

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

$(MLSTAMP):
	test -x $(MLVENV)/bin/python || $(PYTHON) -m venv $(MLVENV)
	$(MLPIP) install -q --upgrade pip
	$(MLPIP) install -q torch==2.14.1 torchvision==0.29.1
	$(MLPIP) install -q "monai[nibabel,ignite,einops,fire,mlflow,skimage,tqdm,psutil,pillow]==1.6.1" itk \
		"pydicom<3" dicomweb-client==0.59.1 "pynetdicom<3"
	$(MLPIP) install -q --no-deps monailabel==0.8.5
	$(MLPIP) install -q uvicorn pydantic pydantic-settings python-dotenv fastapi python-multipart httpx schedule \
		timeloop expiringdict expiring_dict cachetools watchdog pydicom-seg pynrrd girder-client pyyaml filelock \
		passlib pyjwt bcrypt shapely requests requests-toolbelt scikit-learn scipy matplotlib
	touch $(MLSTAMP)

monailabel-env: $(MLSTAMP)

# the demo's fine-tuned weights in a MONAI Label app folder: the CPU preset and the values they were trained with beyond
# it (the demo recipe's grid and crop, UNETR feature size), which the fine-tuning recorded in finetune_hpm/trained_with.json
monailabel-app: $(STAMP) $(MLSTAMP)
	$(PY) -m selfmedhpm_tools.label_app --out $(APP) --preset cpu --weights $(RESULTS)/finetune_hpm --overwrite

demo: $(STAMP)
	$(PY) -m selfmedhpm_tools.demo --data_dir $(DATA) --results_dir $(RESULTS)

# did self-pretraining help with few labels: scratch / MAE / HPM (teacher views) / loss-prediction-only, 1-3-9
# labelled cases, 3 seeds; resumable (finished runs are kept). Synthetic CT: report in docs/results/README.md. Your
# data: STUDY_ARGS="--dataset_dir DIR --datalist LIST --out FOLDER [--preset gpu]" (FOLDER is required then)
STUDY_ARGS ?=
study: $(STAMP)
	$(PY) -m selfmedhpm_tools.study $(if $(findstring --datalist,$(STUDY_ARGS)),,--out docs/results) $(STUDY_ARGS)

study-quick: $(STAMP)
	$(PY) -m selfmedhpm_tools.study --quick --out results/study_quick $(STUDY_ARGS)

# the test suite and every docstring example of the package, then the model zoo's offline checks of both bundles
test: $(STAMP) $(MLSTAMP)
	SELFMEDHPM_REQUIRE_MONAILABEL=1 $(PY) -m pytest -q -ra --durations=15 --doctest-modules custom/selfmedhpm custom/selfmedhpm_tools tests
	$(PY) -m selfmedhpm_tools.verify

# the fast tier (about 2-3 minutes on 2 cores): unit, contract and config tests and the docstring examples, without
# the tests marked slow (bundle runs end to end, subprocess runs, servers, compilation, release zips); CI runs `make test`
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" --durations=10 --doctest-modules custom/selfmedhpm custom/selfmedhpm_tools tests

verify: $(STAMP)
	$(PY) -m selfmedhpm_tools.verify

# dist/<name>_v<version>.zip of both bundles with the demo's weights, and dist/bundle_index.json listing them. The
# weights' preset (CPU) and the values they were trained with (the trained_with.json beside them) are merged into each
# zip's configs/inference.json and train.json, so the unzipped bundle runs as it is (and in MONAI Label). Training
# again and releasing again replaces your earlier build.
RELEASE_ARGS ?=
release: $(STAMP)
	$(PY) -m selfmedhpm_tools.release $(RELEASE_ARGS) \
		--weights_from selfmedhpm_ct_pretraining=$(RESULTS)/pretrain selfmedhpm_ct_segmentation=$(RESULTS)/finetune_hpm

# bundle_index.json: the bundle folders of this repository at their versions, with their content checksums
index: $(STAMP)
	$(PY) -m selfmedhpm_tools.release --source-index

lint: $(STAMP)
	$(PY) -m black --check -l 120 custom tests
	$(PY) -m isort --check-only --profile black -l 120 custom tests
	$(PY) -m flake8 custom tests

format: $(STAMP)
	$(PY) -m black -l 120 custom tests
	$(PY) -m isort --profile black -l 120 custom tests

# benchmarks: not part of `make test`. `make bench` is the full mode (paper-scale models, for GPU machines; on a GPU it
# adds the batch 8/32/64 table, eager and compiled, saved to results/bench/gpu_batches.json as it goes), `make
# bench-quick` the CPU mode (ViT-B steps on 2 CPU cores: minutes); both write docs/benchmarks.md and .json
BENCH_ARGS ?=

bench: $(STAMP)
	$(PY) -m selfmedhpm_tools.benchmarks.run $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m selfmedhpm_tools.benchmarks.run --quick $(BENCH_ARGS)

clean:
	rm -rf results dist build

# The README's two commands: `make report` (main job) and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# `make report` on the built-in synthetic data by default; `make report DATA=/path/to/mvtec CATEGORY=screw` for real data.
DATA ?=
CATEGORY ?= $(if $(DATA),screw,screw_like)
SYNTH_DIR := data/synthetic
REPORT_DIR ?= reports
PYTEST_ARGS ?=

.PHONY: install test test-fast report student lab synth benchmark ablation ray-throughput screenshot clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name anomaly --display-name "Python (anomaly)" > /dev/null
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: everything but the tests marked slow (report, wheel, Chromium, real servers, Ray, killed fits).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

report: $(STAMP)
	$(BIN)/python -m anomaly report --out $(REPORT_DIR) $(if $(DATA),--data $(DATA) --category $(CATEGORY),--synthetic-dir $(SYNTH_DIR) --category $(CATEGORY))

# The course's student version: the notebooks with exercise solutions blank and no outputs (docs/course.md).
STUDENT_DIR ?= student
student: $(STAMP)
	$(BIN)/python -m anomaly report --student --out $(STUDENT_DIR)

synth: $(STAMP)
	$(BIN)/anomaly synth --out $(SYNTH_DIR)

# Real MVTec AD screw and bottle benchmark (the README's results tables): make benchmark MVTEC=../shared/datasets/mvtec_ad
MVTEC ?= ../shared/datasets/mvtec_ad
benchmark: $(STAMP)
	$(BIN)/anomaly benchmark --data $(MVTEC) --categories screw,bottle --methods intensity,autoencoder,padim,patchcore --out weights/benchmark

# The README's ablation tables: PatchCore variants on screw and bottle, then on the synthetic categories.
ablation: $(STAMP)
	$(BIN)/anomaly ablation --data $(MVTEC) --categories screw,bottle --out weights/ablation/real
	test -d $(SYNTH_DIR)/texture || $(BIN)/anomaly synth --out $(SYNTH_DIR)
	$(BIN)/anomaly ablation --data $(SYNTH_DIR) --categories screw_like,texture --out weights/ablation/synthetic

# docs/distributed.md's table: 2,000 synthetic images through the local engine, a local Ray and a two-node loopback cluster.
ray-throughput: $(STAMP)
	$(BIN)/python -m anomaly.study.throughput --out weights/throughput

# docs/station.png: the inspection page in headless Chromium on a synthetic defective part (never real MVTec images).
STATION_DIR := data/station
screenshot: $(STAMP)
	$(BIN)/anomaly synth --out $(STATION_DIR) --image-size 256 --n-train 60 --n-test-good 4 --n-per-defect 2
	$(BIN)/anomaly fit --method patchcore --data $(STATION_DIR) --category texture --run-dir weights/station --image-size 256
	$(BIN)/anomaly station --run-dir weights/station --image $(STATION_DIR)/texture/test/contamination/000.png --out docs/station.png --runtime onnx

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) build *.egg-info

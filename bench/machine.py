"""What the bench scripts print about the machine they ran on (Linux /proc/cpuinfo,
with platform's answer where it is absent)."""

import platform


def _cpuinfo_field(name):
    """The value of the first `name : value` line of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name():
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_flags():
    """Which of the SIMD features that matter for the GEMM peak the CPU has."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in ("avx2", "fma", "avx512f") if f in flags]

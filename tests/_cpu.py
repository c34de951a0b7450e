"""What this CPU can run: its /proc/cpuinfo flags and the library's CPU paths among them."""
from __future__ import annotations

from pathlib import Path


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_paths() -> list[str]:
    """The library's paths this CPU runs, lowest first (AVX2 needs FMA; AVX-512F builds on AVX2)."""
    flags = cpu_flags()
    paths = ["portable"]
    if {"avx2", "fma"} <= flags:
        paths.append("avx2")
        if "avx512f" in flags:
            paths.append("avx512")
    return paths

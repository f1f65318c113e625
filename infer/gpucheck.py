"""GPU check in one command: `python -m infer.gpucheck --input DIR [--json FILE]`.

For a machine with a CUDA GPU: uses the torch it finds and installs nothing (the project's other requirements
must be importable). Runs the tests marked `gpu` (tests/test_gpu.py: bf16 against float32, channels-last against
contiguous, flash-attn against SDPA, torch.compile against eager, automatic batch size, a one-process NCCL
training step) on a case of DIR, then the benchmark with the full-size generator on the cases of DIR: `--compare`
per view and the throughput of the defaults over `THROUGHPUT_CASES` cases, sagittal. Prints one JSON summary on
stdout (the steps' own output goes to stderr); sized to finish in under 8 minutes on one H200.
Exit status: 0 all passed, 1 a test or a benchmark failed, 2 no CUDA device, a missing package or bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
GPU_TESTS = REPO / "tests" / "test_gpu.py"
CASES_ENV = "BRAINSYN_GPU_CASES"
"""Environment variable through which the `gpu` tests get the cases folder (default: ../shared/data/brats)."""

OUTCOMES = ("failure", "error", "skipped")
"""JUnit XML tags of a test case that did not pass."""

THROUGHPUT_CASES = 32
COMPARE_CASES = 4
TIME_LIMITS = {"tests": 240, "compare": 150, "throughput": 120}
"""Seconds each step may take (8.5 minutes in all at most; about 5 expected on an H200)."""


def run_step(argv: list[str], limit: int, env: dict[str, str] | None = None) -> tuple[int, float]:
    """Exit status (124 when past `limit` seconds) and wall seconds of `argv`, its output on stderr."""
    start = time.perf_counter()
    try:
        status = subprocess.run(argv, cwd=REPO, stdout=sys.stderr, timeout=limit, env=env).returncode
    except subprocess.TimeoutExpired:
        status = 124
    return status, time.perf_counter() - start


def gpu_tests(cases: Path, scratch: Path) -> dict[str, Any]:
    """The `gpu` tests' counts, failed test names and wall seconds (pytest in a subprocess, JUnit XML)."""
    report = scratch / "gpu-tests.xml"
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", str(GPU_TESTS), "-q", "-p", "no:cacheprovider",
            f"--junitxml={report}"]
    status, seconds = run_step(argv, TIME_LIMITS["tests"], env={**os.environ, CASES_ENV: str(cases)})
    result: dict[str, Any] = {"status": status, "seconds": round(seconds, 1)}
    if report.exists():
        outcomes = {case.get("name"): next((child.tag for child in case if child.tag in OUTCOMES), "passed")
                    for case in ElementTree.parse(report).getroot().iter("testcase")}
        result["passed"] = sorted(n for n, o in outcomes.items() if o == "passed")
        result["skipped"] = sorted(n for n, o in outcomes.items() if o == "skipped")
        result["failed"] = sorted(n for n, o in outcomes.items() if o in ("failure", "error"))
    return result


def benchmark(name: str, options: list[str], cases: Path, scratch: Path) -> dict[str, Any]:
    """`python -m infer.benchmark` with `options` on `cases`, full-size model, on the GPU: its JSON figures."""
    figures = scratch / f"{name}.json"
    argv = [sys.executable, "-m", "infer.benchmark", "--model", "full", "--device", "cuda", "--input", str(cases),
            "--json", str(figures), *options]
    status, seconds = run_step(argv, TIME_LIMITS[name])
    result: dict[str, Any] = {"status": status, "seconds": round(seconds, 1)}
    if status == 0:
        result["figures"] = json.loads(figures.read_text())
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infer.gpucheck", description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, metavar="DIR",
                        help="real BraTS cases (four modalities each), e.g. a copy of ../shared/data/brats")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the summary to FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print(f"error: the GPU check needs a CUDA device; torch {torch.__version__} (CUDA build "
              f"{torch.version.cuda or 'none'}) sees none", file=sys.stderr)
        return 2
    try:
        import pytest  # noqa: F401 (the tests run in a subprocess; fail here, in one line, when absent)

        import infer.benchmark  # noqa: F401
    except ImportError as err:
        print(f"error: {err.name} is not installed; the GPU check installs nothing (needs the project's "
              "requirements besides torch, and pytest)", file=sys.stderr)
        return 2
    if not args.input.is_dir():
        print(f"error: input folder {args.input} does not exist", file=sys.stderr)
        return 2
    if not GPU_TESTS.is_file():
        print(f"error: {GPU_TESTS} is missing: run the GPU check from a checkout of the repository", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cases = args.input.resolve()
    with tempfile.TemporaryDirectory(prefix="brainsyn-gpucheck-") as scratch:
        summary: dict[str, Any] = {
            "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(),
            "tests": gpu_tests(cases, Path(scratch)),
            "compare": benchmark("compare", ["--compare", "--views", "sagittal,axial", "--cases",
                                             str(COMPARE_CASES)], cases, Path(scratch)),
            "throughput": benchmark("throughput", ["--views", "sagittal", "--cases", str(THROUGHPUT_CASES)], cases,
                                    Path(scratch)),
        }
    summary["ok"] = all(summary[step]["status"] == 0 for step in ("tests", "compare", "throughput"))
    summary["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

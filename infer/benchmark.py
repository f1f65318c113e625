"""Speed and memory of the inference pipeline: `python -m infer.benchmark [--cases N] [--model full|small] ...`.

Runs the command line's own runner and `VolumePredictor` on N BraTS-sized cases (generated with
`infer.sample`, or linked from `--input`, cycling through its cases) and prints the median seconds per case of
each stage, the end-to-end seconds per case, the throughput and the peak memory, then checks the targets:
end to end at most 1.10 x the model forward, and N cases at most 1.05 N x one case (timed first, warm).
`--memory-check A,B` instead runs A and then B cases, each in a fresh process, and checks that the peak RSS for B
is within 10% of that for A. `--compare` instead times, per view in one run, the engine as it was (float32, every
slice computed) against its defaults (background slices skipped, `--precision auto`) and prints the ratios of
their end-to-end and forward seconds per case, with the brain SSIM and PSNR of the new outputs against the old.
The weights are random unless `--weights` is given: speed does not depend on them (quality does).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from infer.engine.cases import discover_cases
from infer.cli import SetupError, compression_level, parse_views, pick_device, positive_int
from conventions.tasks import BRASYN
from infer.engine.compression import BACKENDS
from infer.engine.precision import PRECISIONS
from infer.engine.runner import STAGES, run
from infer.engine.slices import VolumePredictor, resolve_settings
from infer.engine.writer import DEFAULT_COMPRESSION_LEVEL
from infer.evaluate.metrics import image_metrics
from models.checkpoint import CheckpointMeta, load_model
from models.generator import GeneratorConfig, HFGANGenerator

MODELS: dict[str, GeneratorConfig] = {"full": GeneratorConfig(), "small": GeneratorConfig(dim=16)}
"""Generator sizes: the published full model (80 M parameters) and one of a quarter of its width (5 M)."""

FORWARD_LIMIT = 1.10
"""Target: end-to-end seconds per case at most this multiple of the model forward's."""
THROUGHPUT_LIMIT = 1.05
"""Target: N cases take at most this multiple of N x one case."""
MEMORY_LIMIT = 1.10
"""Target of --memory-check: the peak RSS of the larger run at most this multiple of the smaller one's."""

COMPARED = {"fp32, every slice": {"precision": "fp32", "skip_background": False},
            "defaults": {"precision": "auto", "skip_background": True}}
"""The two engine configurations of --compare, the reference first (`VolumePredictor` options)."""
CPU_SPEED_TARGETS = {"sagittal": 0.35, "axial": 0.55}
"""Targets of --compare on a CPU with native bf16 (full-size model, real cases): end to end at most this ratio."""
SSIM_TARGET = 0.995
"""Target of --compare: brain SSIM of the new outputs against the float32 ones at least this, on every case."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infer.benchmark", description=__doc__.splitlines()[0],
                                     epilog="Stages run in different threads and overlap, so their medians do not "
                                            "add up to the end-to-end time.")
    parser.add_argument("--cases", type=positive_int, default=4, metavar="N", help="cases to run (default: 4)")
    parser.add_argument("--input", type=Path, metavar="DIR",
                        help="take the cases from this folder (cycling through them) instead of generating them")
    parser.add_argument("--drop", choices=BRASYN.modalities, default="t2w",
                        help="the modality left out of cases that have all four, to be synthesised (default: t2w)")
    parser.add_argument("--model", choices=sorted(MODELS), default="full",
                        help="random generator size: full (80 M parameters) or small (5 M; for quick checks)")
    parser.add_argument("--weights", type=Path, metavar="CKPT", help="a checkpoint instead of a random generator")
    parser.add_argument("--views", type=parse_views, default=("axial",), metavar="V[,V...]",
                        help="views to average (default: axial)")
    parser.add_argument("--batch-size", type=positive_int, metavar="N",
                        help="slices per forward pass (default: as the command line chooses)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: auto)")
    parser.add_argument("--compression-level", type=compression_level, default=DEFAULT_COMPRESSION_LEVEL,
                        metavar="L", help=f"gzip level of the outputs (default: {DEFAULT_COMPRESSION_LEVEL})")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="(default: auto)")
    parser.add_argument("--no-overlap", action="store_true",
                        help="read, compute and write one case after another (no reader and writer threads)")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="folder for the cases and outputs (default: a temporary folder, removed afterwards)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--memory-check", type=parse_counts, metavar="A,B",
                      help="run A and B cases in fresh processes and compare their peak RSS")
    mode.add_argument("--compare", action="store_true",
                      help="per view: float32 with every slice computed against the defaults (background slices "
                           "skipped, --precision auto), as ratios")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    return parser


def parse_counts(text: str) -> tuple[int, int]:
    """'2,8' -> (2, 8)."""
    try:
        small, large = (positive_int(part) for part in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected two case counts, e.g. 2,8") from None
    return small, large


def random_generator(size: str) -> nn.Module:
    """A randomly initialised BraSyn generator of `size` (see MODELS) with the task's checkpoint metadata."""
    torch.manual_seed(0)
    model = HFGANGenerator(MODELS[size])
    model.meta = CheckpointMeta(kind="generator", task=BRASYN.name, modalities=BRASYN.modalities,
                                normalization=dict(BRASYN.normalization), views=BRASYN.default_views)
    return model


def prepare_cases(folder: Path, count: int, drop: str, source: Path | None, scratch: Path) -> None:
    """`count` cases in `folder`, `bench-000`, ..., each linking the inputs of a case of `source`, cycling
    through them, or of a case generated by `infer.sample` into `scratch`; `drop` is left out of cases that
    have every modality."""
    if source is None:
        subprocess.run([sys.executable, "-m", "infer.sample", "--output", str(scratch), "--cases", str(count),
                        "--drop", drop], check=True, stderr=subprocess.DEVNULL)  # a fresh process: own memory
        source = scratch
    found = discover_cases(source, BRASYN)
    if not found:
        raise SystemExit(f"error: no cases in {source}")
    for i in range(count):
        files = found[i % len(found)].files
        name = f"bench-{i:03d}"
        (folder / name).mkdir(parents=True)
        left_out = drop if len(files) == len(BRASYN.modalities) else None
        for modality in (m for m in files if m != left_out):
            (folder / name / BRASYN.namings[0].file_name(name, modality)).symlink_to(
                files[modality].resolve())


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def warm_up(predictor: VolumePredictor) -> None:
    """One full batch per view through the predictor, so that one-off start-up costs stay out of the timings."""
    side = min(predictor.batch_size, predictor.settings.image_size)
    rng = np.random.default_rng(0)
    volumes = {m: rng.uniform(1, 1000, (side, side, side)).astype(np.float32)
               for m in BRASYN.modalities if m != BRASYN.modalities[0]}
    predictor.predict(volumes, BRASYN.modalities[0])


def timed_run(predictor: VolumePredictor, input_dir: Path, output_dir: Path, args: argparse.Namespace,
              ) -> tuple[float, list[dict[str, float]]]:
    """Wall seconds of the runner over `input_dir` and the stage seconds of each case."""
    overlap = 0 if args.no_overlap else 1
    start = time.perf_counter()
    summary = run(BRASYN, input_dir, output_dir, predictor, overwrite=True, progress=False,
                  compression_level=args.compression_level, prefetch=overlap, pending_writes=overlap)
    seconds = time.perf_counter() - start
    if not summary.ok:
        raise SystemExit(f"error: {len(summary.failed)} case(s) failed")
    return seconds, summary.timings


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Time one case alone, then all the cases; the figures of `report`."""
    device = pick_device(args.device)
    model = load_model(args.weights, kind="generator") if args.weights else random_generator(args.model)
    predictor = VolumePredictor(model, resolve_settings(BRASYN, model, args.views), batch_size=args.batch_size,
                                device=device, compile=args.compile, precision=args.precision)
    prepare_cases(workdir / "in", args.cases, args.drop, args.input, workdir / "generated")
    first = sorted((workdir / "in").iterdir())[0]
    (workdir / "one").mkdir()
    (workdir / "one" / first.name).symlink_to(first)
    warm_up(predictor)
    load_before = os.getloadavg()[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    one_case, _ = timed_run(predictor, workdir / "one", workdir / "out-one", args)
    seconds, timings = timed_run(predictor, workdir / "in", workdir / "out", args)
    return {
        "cases": args.cases, "shape": nib.load(next(first.iterdir())).shape, "device": str(device),
        "threads": torch.get_num_threads(), "model": "checkpoint" if args.weights else args.model,
        "parameters": sum(p.numel() for p in model.parameters()), "views": list(args.views),
        "batch_size": predictor.batch_size, "compression_level": args.compression_level, "gzip": BACKENDS[0],
        "precision": predictor.precision, "compile": args.compile,
        "overlap": not args.no_overlap, "seconds": seconds, "one_case_seconds": one_case,
        "stage_median_seconds": {s: statistics.median(t.get(s, 0.0) for t in timings) for s in STAGES},
        "peak_rss_bytes": peak_rss_bytes(), "load_average": [load_before, os.getloadavg()[0]],
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def report(figures: dict[str, Any]) -> None:
    """Print the stage table, end to end, throughput, peak memory and targets 1 and 3."""
    n, seconds, medians = figures["cases"], figures["seconds"], figures["stage_median_seconds"]
    print(f"{n} case(s) of {'x'.join(map(str, figures['shape']))}, {figures['model']} generator "
          f"({figures['parameters'] / 1e6:.1f} M parameters), views {','.join(figures['views'])}, batch "
          f"{figures['batch_size']}, {figures['device']} ({figures['threads']} threads), {figures['precision']}, "
          f"gzip level {figures['compression_level']} ({figures['gzip']}), compile "
          f"{'on' if figures['compile'] else 'off'}, overlap "
          f"{'on' if figures['overlap'] else 'off'}; 1-minute load average {figures['load_average'][0]:.1f} "
          f"before, {figures['load_average'][1]:.1f} after")
    print(f"{'stage':<36}{'median s/case':>14}")
    for stage, label in STAGES.items():
        print(f"{label:<36}{medians[stage]:>14.3f}")
    print(f"{'end to end (wall / cases)':<36}{seconds / n:>14.3f}")
    print(f"throughput: {n / seconds:.4f} cases/s ({n} cases in {seconds:.1f} s; one case alone "
          f"{figures['one_case_seconds']:.1f} s)")
    gpu = figures["peak_gpu_bytes"]
    print(f"peak RSS: {figures['peak_rss_bytes'] / 2**30:.2f} GiB"
          + (f", peak GPU memory: {gpu / 2**30:.2f} GiB" if gpu is not None else ""))
    ratio = seconds / n / medians["forward"]
    print(f"target 1: end to end / model forward = {ratio:.3f} (limit {FORWARD_LIMIT:.2f}): "
          f"{verdict(ratio <= FORWARD_LIMIT)}")
    ratio, limit = seconds / figures["one_case_seconds"], THROUGHPUT_LIMIT * n
    print(f"target 3: {n} cases / one case = {ratio:.2f} (limit {THROUGHPUT_LIMIT:.2f} x {n} = {limit:.2f}): "
          f"{verdict(ratio <= limit)}")


def compare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """--compare: per view, the N cases through each of `COMPARED` (warmed up first), then the ratios of the
    second to the first and the lowest brain SSIM and PSNR of its outputs against the first's."""
    device = pick_device(args.device)
    model = load_model(args.weights, kind="generator") if args.weights else random_generator(args.model)
    prepare_cases(workdir / "in", args.cases, args.drop, args.input, workdir / "generated")
    views: dict[str, Any] = {}
    for view in args.views:
        runs, outputs = {}, []
        for name, options in COMPARED.items():
            predictor = VolumePredictor(model, resolve_settings(BRASYN, model, (view,)), batch_size=args.batch_size,
                                        device=device, compile=args.compile, **options)
            warm_up(predictor)
            outputs.append(workdir / f"out-{view}-{len(outputs)}")
            seconds, timings = timed_run(predictor, workdir / "in", outputs[-1], args)
            runs[name] = {"precision": predictor.precision, "skip_background": predictor.skip_background,
                          "batch_size": predictor.batch_size, "seconds_per_case": seconds / args.cases,
                          "forward_seconds_per_case": statistics.mean(t.get("forward", 0.0) for t in timings)}
        old, new = runs.values()
        scores = [image_metrics(nib.load(path).get_fdata(dtype=np.float32),
                                nib.load(outputs[0] / path.name).get_fdata(dtype=np.float32))
                  for path in sorted(outputs[1].iterdir())]
        views[view] = {"runs": runs,
                       "end_to_end_ratio": new["seconds_per_case"] / old["seconds_per_case"],
                       "forward_ratio": new["forward_seconds_per_case"] / old["forward_seconds_per_case"],
                       "min_ssim_brain": min(s["ssim_brain"] for s in scores),
                       "min_psnr": min(s["psnr"] for s in scores)}
    return {"cases": args.cases, "device": str(device), "threads": torch.get_num_threads(),
            "model": "checkpoint" if args.weights else args.model,
            "parameters": sum(p.numel() for p in model.parameters()), "compression_level": args.compression_level,
            "gzip": BACKENDS[0], "compile": args.compile, "views": views}


def report_comparison(figures: dict[str, Any]) -> None:
    """Print the --compare table: per view, seconds per case of each configuration and the ratios."""
    reference, candidate = COMPARED
    print(f"{figures['cases']} case(s), {figures['model']} generator ({figures['parameters'] / 1e6:.1f} M "
          f"parameters), {figures['device']} ({figures['threads']} threads), gzip level "
          f"{figures['compression_level']} ({figures['gzip']}), compile {'on' if figures['compile'] else 'off'}: "
          f"{reference} against {candidate} (background slices skipped, --precision auto)")
    print(f"{'view':<10}{'precision':>10}{'s/case before':>15}{'s/case after':>14}{'end to end':>12}"
          f"{'forward':>10}{'brain SSIM':>12}{'PSNR dB':>9}")
    for view, row in figures["views"].items():
        old, new = (row["runs"][name] for name in COMPARED)
        print(f"{view:<10}{new['precision']:>10}{old['seconds_per_case']:>15.3f}{new['seconds_per_case']:>14.3f}"
              f"{row['end_to_end_ratio']:>11.3f}x{row['forward_ratio']:>9.3f}x{row['min_ssim_brain']:>12.4f}"
              f"{row['min_psnr']:>9.1f}")
    print("ratios: after / before (lower is faster); brain SSIM and PSNR: the lowest over the cases, outputs "
          "after against before")
    for view, row in figures["views"].items():
        ssim = row["min_ssim_brain"]
        print(f"target: {view} brain SSIM after against before = {ssim:.4f} (at least {SSIM_TARGET}): "
              f"{verdict(ssim >= SSIM_TARGET)}")
        if view in CPU_SPEED_TARGETS and figures["device"] == "cpu" and row["runs"][candidate]["precision"] == "bf16":
            ratio, limit = row["end_to_end_ratio"], CPU_SPEED_TARGETS[view]
            print(f"target: {view} end to end after / before = {ratio:.3f} (limit {limit:.2f} on a CPU with native "
                  f"bf16, full-size model): {verdict(ratio <= limit)}")


def child_argv(args: argparse.Namespace, count: int, cases: Path, result: Path) -> list[str]:
    """The command line of one --memory-check run: the same options on `count` of the prepared `cases`."""
    argv = [sys.executable, "-m", "infer.benchmark", "--cases", str(count), "--input", str(cases), "--json",
            str(result), "--drop", args.drop, "--model", args.model, "--views", ",".join(args.views),
            "--device", args.device, "--compression-level", str(args.compression_level), "--precision",
            args.precision]
    if args.weights:
        argv += ["--weights", str(args.weights)]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    return argv + ["--compile"] * args.compile + ["--no-overlap"] * args.no_overlap


def memory_check(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both runs of --memory-check in fresh processes, then the comparison of their peak RSS."""
    counts = args.memory_check
    prepare_cases(workdir / "cases", max(counts), args.drop, args.input, workdir / "generated")
    peaks = {}
    for count in counts:
        result = workdir / f"rss-{count}.json"
        print(f"--- {count} case(s), fresh process", flush=True)
        subprocess.run(child_argv(args, count, workdir / "cases", result), check=True)
        peaks[count] = json.loads(result.read_text())["peak_rss_bytes"]
    small, large = (peaks[c] for c in counts)
    print(f"target 2: peak RSS {counts[1]} cases / {counts[0]} cases = {large / small:.3f} ({large / 2**30:.2f} GiB "
          f"/ {small / 2**30:.2f} GiB, limit {MEMORY_LIMIT:.2f}): {verdict(large <= MEMORY_LIMIT * small)}")
    return {"peak_rss_bytes": {str(c): p for c, p in peaks.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="brasyn-benchmark-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise SystemExit(f"error: the work folder {workdir} is not empty")
    try:
        if args.memory_check:
            figures = memory_check(args, workdir)
        elif args.compare:
            figures = compare(args, workdir)
            report_comparison(figures)
        else:
            figures = benchmark(args, workdir)
            report(figures)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

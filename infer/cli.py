"""Command line: `python -m infer --task brasyn --input IN --output OUT [options]`.

Exit status: 0 when every case of the shard was written or skipped, 1 when a case failed (the others are still
processed, and a summary names the failures), 2 for a usage or setup error (bad option, checkpoint, folders),
128 + N when stopped by signal N (SIGTERM, SIGINT: the output being written is abandoned, no partial file stays).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from conventions.tasks import ALL_TASKS, VIEWS, TaskSpec
from infer.engine.interrupt import Interrupted, stop_on_signals
from infer.engine.precision import PRECISIONS
from infer.engine.refine import REFINER_FOLDER
from infer.engine.runner import QC_FOLDER, printable, run
from infer.engine.slices import CPU_BATCH_SIZE, GPU_BATCH_LIMIT, GPU_MEMORY_SHARE
from infer.engine.writer import DEFAULT_COMPRESSION_LEVEL
from infer.predictors import Predictor, PredictorOptions, SetupError
from infer.predictors import build_predictor as predictor_for

WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"
"""Bundled checkpoints: `weights/<task>/` beside the package (not relative to the working directory)."""


def parse_views(text: str) -> tuple[str, ...]:
    """'axial, sagittal' -> ('axial', 'sagittal'); the names are checked with the other settings
    (`EngineSettings`)."""
    views = tuple(v.strip() for v in text.split(",") if v.strip())
    if not views:
        raise argparse.ArgumentTypeError("expected at least one view")
    return views


def parse_shard(text: str) -> tuple[int, int]:
    """'1/4' -> (1, 4); the range is checked by `infer.engine.runner.select_shard`."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N, e.g. 0/4") from None
    return index, count


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def compression_level(text: str) -> int:
    """'0' .. '9' -> the gzip level of the outputs."""
    if text not in tuple("0123456789"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a gzip level from 0 (none) to 9 (smallest)")
    return int(text)


def build_parser(fixed_task: TaskSpec | None = None) -> argparse.ArgumentParser:
    """The options of `python -m infer`; for a `fixed_task` (`python -m infer.segment`) there is no --task."""
    parser = argparse.ArgumentParser(
        prog="python -m infer" if fixed_task is None else f"python -m infer.{fixed_task.name}",
        description="Synthesise the missing modality of every case in a folder with a slice generator.",
        epilog="Inputs: IN/<case>/<case>-<modality>.nii.gz (BraTS layout) or IN/<case>-<modality>.nii.gz (flat). "
               "Outputs: OUT/<case>-<missing>.nii.gz only (float32 MR, int16 HU for mr2ct), with the affine and "
               "header of the first available input in modality order; OUT must lie outside IN. "
               f"--qc adds OUT/{QC_FOLDER}/<case>.png (leave it off for a BraTS container's /output). Exit status: 0 all done, 1 some case failed, "
               "2 usage or setup error.")
    if fixed_task is None:
        parser.add_argument("--task", choices=sorted(ALL_TASKS), default="brasyn", help="synthesis task (default: brasyn)")
    parser.add_argument("--input", "--data_path", dest="input", type=Path, required=True, metavar="IN",
                        help="folder of cases (never written to)")
    parser.add_argument("--output", "--output_path", dest="output", type=Path, required=True, metavar="OUT",
                        help="folder for the synthesised volumes (created if needed)")
    parser.add_argument("--targets", nargs="+", metavar="MOD",
                        help="modalities to synthesise where a case lacks them (default: the task's; e.g. "
                             "--targets t2w t2f for us2mr)")
    parser.add_argument("--weights", type=Path, metavar="CKPT",
                        help="checkpoint folder (config.json + model.safetensors); default: the task's bundled "
                             "checkpoint, weights/<task>/")
    parser.add_argument("--views", type=parse_views, metavar="V[,V...]",
                        help=f"views to average, from {', '.join(VIEWS)}; default: the checkpoint's training "
                             "views, else the task's")
    parser.add_argument("--refine", metavar="CKPT",
                        help="3D refiner checkpoint run once over each stacked synthesis, or 'none'; default: the "
                             f"generator checkpoint's {REFINER_FOLDER}/ sub-folder when it has one")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available, else cpu (default: auto)")
    parser.add_argument("--batch-size", type=positive_int, metavar="N",
                        help=f"slices per forward pass (default: {CPU_BATCH_SIZE} on a CPU; on a GPU as many as "
                             f"fit in {GPU_MEMORY_SHARE * 100:.0f}%% of its free memory, at most {GPU_BATCH_LIMIT})")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="slice generator arithmetic: auto = bf16 autocast on a GPU and on a CPU with native "
                             "bf16 (AVX-512 BF16 or AMX), else fp32 (default: auto); the summary line says which ran")
    parser.add_argument("--compile", action="store_true",
                        help="run the model through torch.compile (pays off on a GPU over many cases)")
    parser.add_argument("--compression-level", type=compression_level, default=DEFAULT_COMPRESSION_LEVEL,
                        metavar="L", help="gzip level of .nii.gz outputs, 0 (none) to 9 (smallest); through ISA-L "
                                          "when isal is installed, 1-3, 4-6 and 7-9 are its levels 1, 2 and 3 "
                                          f"(default: {DEFAULT_COMPRESSION_LEVEL})")
    parser.add_argument("--segmentation-output", type=Path, metavar="DIR",
                        help="also write each case's whole-tumour mask as DIR/<case>-seg.nii.gz (uint8 0/1, the "
                             "synthesis's header), for a checkpoint that segments (TISS-Net); DIR must lie outside "
                             "IN and OUT (never inside a BraTS container's /output)")
    parser.add_argument("--qc", action="store_true", help=f"also write a QC picture per case to OUT/{QC_FOLDER}/")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                        help="process only shard I of N: case i of the sorted list goes to shard i %% N")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    return parser


def default_weights(task: TaskSpec) -> Path:
    """The bundled checkpoint folder of `task`."""
    path = WEIGHTS_ROOT / task.name
    if not path.exists():
        raise SetupError(f"no bundled checkpoint for task {task.name} at {path} yet; pass --weights CKPT")
    return path


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda: no CUDA device is available")
    return torch.device(name)


def build_predictor(args: argparse.Namespace, task: TaskSpec) -> Predictor:
    """The predictor of the checkpoint's family (`models.families`), with task defaults, checkpoint settings
    and command-line options combined."""
    options = PredictorOptions(device=pick_device(args.device), views=args.views, refine=args.refine,
                               batch_size=args.batch_size, compile=args.compile, precision=args.precision)
    return predictor_for(args.weights or default_weights(task), task, options)


def main(argv: Sequence[str] | None = None, fixed_task: TaskSpec | None = None) -> int:
    parser = build_parser(fixed_task)
    args = parser.parse_args(argv)
    task = fixed_task or ALL_TASKS[args.task]
    if args.targets:
        unknown = [m for m in args.targets if m not in task.target_modalities]
        if unknown:
            parser.error(f"--targets: task {task.name} can synthesise {', '.join(task.target_modalities)}, "
                         f"not {', '.join(unknown)}")
        task = replace(task, default_targets=tuple(dict.fromkeys(args.targets)))
    try:
        with stop_on_signals():
            predictor = build_predictor(args, task)
            summary = run(task, args.input, args.output, predictor, shard=args.shard, overwrite=args.overwrite,
                          qc=args.qc, compression_level=args.compression_level,
                          segmentation_dir=args.segmentation_output)
    except Interrupted as err:
        print(f"error: {err}; outputs written before are complete, the one being written was abandoned (run "
              "again to finish: finished outputs are skipped)", file=sys.stderr)
        return 128 + err.signum
    except (SetupError, ValueError, OSError) as err:  # models.checkpoint.CheckpointError is a ValueError
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    for failure in summary.failed:
        print(f"failed: {failure}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    return 0 if summary.ok else 1

"""Command line of `python -m infer.evaluate` (the scoring itself is `infer.evaluate.scoring`)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from conventions.regions import REGION_NAMES
from conventions.tasks import TASKS
from infer.evaluate.baselines import BASELINES
from infer.evaluate.metrics import CHALLENGE_BORDER_CROP
from infer.evaluate.report import write_report
from infer.evaluate.scoring import SUMMARY_COLUMNS, evaluate, format_summary, one_line, write_csv
from infer.evaluate.segmetrics import DEFAULT_NSD_TOLERANCE_MM


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m infer.evaluate",
        description="Score synthesised BraTS modalities (SSIM, PSNR, MAE, MSE; Dice/NSD/HD95 of segmentations) "
                    "against the reference, optionally next to trivial baselines.")
    p.add_argument("--pred", type=Path, help="folder of predictions <case>-<modality>.nii.gz (flat)")
    p.add_argument("--reference", type=Path, required=True, help="BraTS-layout folder REF/<case>/<case>-<mod>.nii.gz")
    p.add_argument("--segmentations", type=Path, help="segmentations of the completed cases: <case>[-seg].nii.gz")
    p.add_argument("--segment", action="store_true",
                   help="the BraSyn downstream protocol: segment each case completed with the prediction, the real "
                        "case and each baseline's completion, and score the regions against the reference labels")
    p.add_argument("--segmenter",
                   help="segmenter for --segment: a checkpoint folder (default: the bundled weights/segment) or "
                        "brats:<algorithm>, a BraTS adult-glioma segmentation algorithm of the `brats` package run "
                        "through its own API (Docker, or brats:<algorithm>:singularity), e.g. brats:BraTS23_1")
    p.add_argument("--baselines", action="store_true",
                   help="also score the mean and copy baselines for every reference modality")
    p.add_argument("--task", choices=sorted(TASKS), default="brasyn",
                   help="task of the predictions (default brasyn); mr2ct and us2mr are scored inside the head / "
                        "the ultrasound's field of view")
    p.add_argument("--modalities", nargs="+", help="modalities to score (default: every target of the task)")
    p.add_argument("--cases", nargs="+", help="only these reference cases")
    p.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, help="NSD tolerance in mm")
    p.add_argument("--ssim-border-crop", type=int, default=CHALLENGE_BORDER_CROP,
                   help="voxels dropped at each border before averaging the challenge SSIM (default "
                        f"{CHALLENGE_BORDER_CROP}, as the organisers' scoring; 0 = torchmetrics 1.9)")
    p.add_argument("--regions", nargs="+", choices=REGION_NAMES, default=list(REGION_NAMES),
                   help="regions --segmentations are scored on (default all; WT for whole-tumour masks such as "
                        "TISS-Net's --segmentation-output)")
    p.add_argument("--csv", type=Path, help="per-case CSV to write")
    p.add_argument("--summary-csv", type=Path, help="summary CSV to write")
    p.add_argument("--report", type=Path, help="report to write: .md or .html (PNG figures in <stem>_files/ next to it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    segmenter = None
    if args.segment:
        if args.pred is None:
            print("error: --segment needs --pred (the syntheses that complete the cases)", file=sys.stderr)
            return 2
        from infer.cli import SetupError
        from infer.segment import load_segmenter

        try:
            segmenter = load_segmenter(args.segmenter)
        except (SetupError, ValueError, OSError) as e:  # models.checkpoint.CheckpointError is a ValueError
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.pred is None and not args.baselines and args.segmentations is None:
        print("error: nothing to evaluate: give --pred, --baselines and/or --segmentations", file=sys.stderr)
        return 2
    if args.report is not None and args.report.suffix.lower() not in (".md", ".html", ".htm"):
        print(f"error: --report must end in .md or .html: {args.report}", file=sys.stderr)
        return 2

    try:
        result = evaluate(
            args.reference, args.pred, segmentation_dir=args.segmentations,
            baselines=list(BASELINES) if args.baselines else (), modalities=args.modalities,
            nsd_tolerance_mm=args.nsd_tolerance, border_crop=args.ssim_border_crop, cases=args.cases,
            progress=not args.no_progress, task=TASKS[args.task], segmenter=segmenter,
            seg_regions=args.regions)
    except ValueError as e:  # options that do not fit the task (baselines or modalities it has none of)
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = result.summary()
    if args.csv is not None:
        write_csv(result.rows, args.csv)
    if args.summary_csv is not None:
        write_csv(summary, args.summary_csv, SUMMARY_COLUMNS)
    if args.report is not None:
        try:
            write_report(result, args.report, summary=summary)
        except Exception as e:  # noqa: BLE001 - the metrics are written; a failed figure must not hide them
            result.errors.append(f"cannot write report {args.report}: {one_line(e)}")
            print(f"error: cannot write report {args.report}: {one_line(e)}", file=sys.stderr)

    print(format_summary(summary))
    for r in result.missing:
        print(f"missing: {r['case']} {r['source']}: {r['detail']}")
    if result.errors:
        print(f"{len(result.errors)} error(s); see above", file=sys.stderr)
        return 1
    return 0


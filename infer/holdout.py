"""Score a BraSyn model on complete held-out cases: each modality left out in turn, synthesised by the model
through the command line's runner, and scored with `infer.evaluate.scoring` next to the trivial baselines.

    python -m infer.holdout --weights weights/brasyn --data ../shared/data/brats18 \
        --split train/splits/brats18.json --extra ../shared/data/brats/BraTS-GLI-00001-000 --output runs/holdout

The validation cases of `--split` (found under `--data`) form the group "validation" (`--part train`: its
training cases, the group "train", to see how closely the model fits the cases it learned from); each `--extra`
case folder is a group of its own. With `--segment [--segmenter CKPT|brats:<algorithm>]` the downstream protocol
(`infer.evaluate.downstream`) runs too, and a second table per group gives the segmenter's Dice / NSD / HD95 per region
on the real cases and on the cases completed by the model and by each baseline. Inputs are symbolic links in `OUTPUT/inputs/without-<m>/` (either naming convention, as
the cases come), predictions go to `OUTPUT/pred/without-<m>/` with QC pictures, per-case scores to
`OUTPUT/per_case.csv`; the Markdown tables of the model card are printed and written to `OUTPUT/summary.md`.

Output sanity is counted per prediction: `brain_zeros` = voxels inside the inputs' majority-vote foreground
that the output sets to 0; `far_above` = voxels brighter, relative to the output's own 99.5th brain percentile,
than the reference's brightest voxel is relative to its own (a scale-free "beyond the real range").
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from infer import cli
from infer.evaluate.baselines import BASELINES
from infer.engine.cases import CaseFiles, case_naming, discover_cases, read_split
from infer.evaluate.downstream import REAL, Segmenter, downstream_source
from infer.evaluate.report import markdown_table
from infer.evaluate.scoring import (CSV_COLUMNS, PREDICTION, baseline_source, evaluate, load_volume, prediction_file,
                            summarize, write_csv)
from infer.engine.intensity import background_vote, foreground
from infer.engine.precision import PRECISIONS
from conventions.tasks import BRASYN, BRATS_MODALITIES

TABLE_METRICS: dict[str, str] = {"ssim_healthy": "SSIM healthy", "ssim_tumour": "SSIM tumour",
                                  "ssim_brain": "brain SSIM", "psnr": "PSNR (dB)", "mae": "MAE"}  # column: header
SANITY: dict[str, str] = {"brain_zeros": "brain voxels = 0", "far_above": "far above range"}
SEG_TABLE: tuple[str, ...] = ("dice_ET", "dice_TC", "dice_WT", "nsd_WT", "nsd2mm_WT", "hd95_ET", "hd95_TC", "hd95_WT")


def find_case(folder: Path) -> CaseFiles:
    """The complete BraSyn case in `folder` (named as the folder, either convention)."""
    found = [c for c in discover_cases(folder.parent, BRASYN) if c.name == folder.name]
    if not found or set(found[0].files) != set(BRATS_MODALITIES):
        raise ValueError(f"{folder}: not a case folder with all of {', '.join(BRATS_MODALITIES)}")
    case_naming(found[0], BRASYN)
    return found[0]


SPLIT_PARTS: tuple[str, ...] = ("validation", "train")
"""The parts of a split file `--part` scores: the held-out cases (the figures a model card reports) or the
training cases (how closely the model fits the cases it learned from)."""


def split_folders(data: Path, split: Path, part: str = "validation") -> list[Path]:
    """The case folders of a split file's `part` ("validation" or "train") under `data`; KeyError for another."""
    train, validation = read_split(split)
    return [data / name for name in {"validation": validation, "train": train}[part]]


def case_groups(data: Path | None, split: Path | None, extra: Sequence[Path], part: str = "validation"
                ) -> dict[str, list[Path]]:
    """Group name -> case folders: `part` (the split's validation or training cases under `data`), then each
    extra case folder as a group of its own; ValueError when there is none or `split` lacks `data`."""
    groups: dict[str, list[Path]] = {}
    if split is not None:
        if data is None:
            raise ValueError("--split needs --data")
        groups[part] = split_folders(data, split, part)
    for folder in extra:
        groups[folder.name] = [folder]
    if not groups:
        raise ValueError("no cases: give --data and --split, and/or --extra")
    return groups


def add_case_arguments(p: argparse.ArgumentParser) -> None:
    """The --data / --split / --part / --extra arguments that `grouped_cases` reads."""
    p.add_argument("--data", type=Path, help="folder holding the split's cases")
    p.add_argument("--split", type=Path, help="split file; the cases of its --part are scored")
    p.add_argument("--part", choices=SPLIT_PARTS, default="validation",
                   help="which cases of --split: validation (held out; default) or train (seen in training: how "
                        "closely the model fits what it learned from)")
    p.add_argument("--extra", type=Path, nargs="*", default=[], help="further complete case folders, each a group")


def grouped_cases(args: argparse.Namespace) -> tuple[dict[str, list[Path]], list[CaseFiles]]:
    """The case groups of the `add_case_arguments` arguments and their complete cases, in group order."""
    groups = case_groups(args.data, args.split, args.extra, args.part)
    return groups, [find_case(f) for folders in groups.values() for f in folders]


def link_inputs(cases: Sequence[CaseFiles], left_out: str, folder: Path) -> None:
    """`folder/<case>/` with links to every file of each case but `left_out`, under their own names."""
    for case in cases:
        target = folder / case.name
        target.mkdir(parents=True, exist_ok=True)
        for modality, path in case.files.items():
            link = target / path.name
            if modality != left_out and not link.exists():
                link.symlink_to(path.resolve())


def link_references(cases: Sequence[CaseFiles], folder: Path) -> None:
    """`folder/<case>` linking each case folder (one reference root for cases from several places)."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = folder / case.name
        if not link.exists():
            link.symlink_to(next(iter(case.files.values())).parent.resolve())


def sanity_counts(prediction: np.ndarray, inputs: Mapping[str, np.ndarray], reference: np.ndarray
                  ) -> dict[str, int]:
    """`brain_zeros` and `far_above` of one prediction (see the module docstring)."""
    brain = ~background_vote([foreground(v) for v in inputs.values()])
    ref_brain = reference[reference > 0]
    pred_brain = prediction[brain]
    ref_ratio = float(ref_brain.max() / max(np.percentile(ref_brain, 99.5), 1e-6))
    pred_high = max(float(np.percentile(pred_brain, 99.5)), 1e-6) if pred_brain.size else 1e-6
    return {"brain_zeros": int(np.count_nonzero(pred_brain <= 0)),
            "far_above": int(np.count_nonzero(prediction > ref_ratio * pred_high))}


def markdown_tables(rows: Sequence[Mapping], groups: Mapping[str, Sequence[str]]) -> str:
    """One table per group: a row per (missing modality, source), the `TABLE_METRICS` means and the sanity
    counts (predictions only, summed)."""
    sources = [(PREDICTION, "model"), *((baseline_source(b), f"{b} baseline") for b in BASELINES)]
    out = []
    for group, names in groups.items():
        sel = [r for r in rows if r["case"] in names]
        summary = {(s["source"], s["modality"], s["metric"]): s["mean"]
                   for s in summarize(sel, tuple(TABLE_METRICS))}
        table = []
        for modality in BRATS_MODALITIES:
            for source, label in sources:
                cells = [_cell(summary.get((source, modality, m)), m) for m in TABLE_METRICS]
                counts = ["-", "-"]
                if source == PREDICTION:
                    counts = [str(sum(int(r[k]) for r in sel if r["source"] == source and r["modality"] == modality
                                      and r["status"] == "ok")) for k in SANITY]
                table.append([modality, label, *cells, *counts])
        out += [f"{group} ({len(names)} case{'s' * (len(names) != 1)}: {', '.join(names)})", "",
                *markdown_table(["missing", "source", *TABLE_METRICS.values(), *SANITY.values()], table), ""]
    return "\n".join(out)


def downstream_tables(rows: Sequence[Mapping], groups: Mapping[str, Sequence[str]]) -> str:
    """One table per group: a row per (missing modality, completion), the `SEG_TABLE` means."""
    sources = [(REAL, "real (all four)"), (PREDICTION, "model"),
               *((baseline_source(b), f"{b} baseline") for b in BASELINES)]
    out = []
    for group, names in groups.items():
        sel = [r for r in rows if r["case"] in names]
        summary = {(s["source"], s["modality"], s["metric"]): s["mean"] for s in summarize(sel, SEG_TABLE)}
        if not summary:
            continue
        table = [[modality, label, *(_cell(summary.get((downstream_source(source), modality, m)), m)
                                     for m in SEG_TABLE)]
                 for modality in BRATS_MODALITIES for source, label in sources]
        out += [f"{group}: segmentation of the completed cases", "",
                *markdown_table(["missing", "completed by", *SEG_TABLE], table), ""]
    return "\n".join(out)


def _cell(value: float | None, metric: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}" if metric in ("psnr",) or metric.startswith("hd95") else f"{value:.4f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.holdout", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, help="BraSyn checkpoint (default: the bundled weights)")
    add_case_arguments(p)
    p.add_argument("--output", type=Path, required=True, help="work and result folder")
    p.add_argument("--views", help="views to run (default: the checkpoint's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="arithmetic of the synthesis (default fp32: figures that do not depend on the machine's "
                        "bf16 support; python -m infer defaults to auto)")
    p.add_argument("--segment", action="store_true", help="also run the downstream segmentation protocol")
    p.add_argument("--segmenter", help="segmenter for --segment (default: the bundled weights/segment)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        groups, cases = grouped_cases(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    segmenter: Segmenter | None = None
    if args.segment:
        from infer.cli import SetupError
        from infer.segment import load_segmenter

        try:
            segmenter = load_segmenter(args.segmenter, device=args.device)
        except (SetupError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    out = args.output
    link_references(cases, out / "reference")
    rows: list[dict] = []
    for modality in BRATS_MODALITIES:
        inputs, preds = out / "inputs" / f"without-{modality}", out / "pred" / f"without-{modality}"
        link_inputs(cases, modality, inputs)
        argv_run = ["--task", "brasyn", "--input", str(inputs), "--output", str(preds), "--qc", "--overwrite",
                    "--device", args.device, "--precision", args.precision]
        argv_run += ["--weights", str(args.weights)] if args.weights else []
        argv_run += ["--views", args.views] if args.views else []
        if cli.main(argv_run) != 0:
            print(f"error: synthesis without {modality} failed", file=sys.stderr)
            return 1
        result = evaluate(out / "reference", preds, baselines=list(BASELINES), modalities=[modality],
                          progress=False, segmenter=segmenter)
        if result.errors:
            return 1
        for row in result.rows:
            if row["source"] == PREDICTION and row["status"] == "ok":
                case = next(c for c in cases if c.name == row["case"])
                volumes = {m: load_volume(p)[0] for m, p in case.files.items()}
                pred = load_volume(prediction_file(preds, case.name, modality, case_naming(case, BRASYN)))[0]
                row.update(sanity_counts(pred, {m: v for m, v in volumes.items() if m != modality},
                                         volumes[modality]))
        rows += result.rows
    write_csv(rows, out / "per_case.csv", columns=[*CSV_COLUMNS, *SANITY])
    names = {g: [f.name for f in folders] for g, folders in groups.items()}
    text = (f"Synthesis precision: {args.precision}.\n\n" + markdown_tables(rows, names) + "\n"
            + downstream_tables(rows, names))
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

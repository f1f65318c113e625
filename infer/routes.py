"""Segment the tumour of complete held-out cases with one modality withheld, by four routes, and score each
against the expert labels: the comparison of TISS-Net (document 004) on our data.

    python -m infer.routes --data ../shared/data/brats18 --split train/splits/brats18.json --missing t2f \
        --joint weights/tissnet --synthesiser weights/brasyn --reduced weights/segment-no-flair --output runs/routes

Routes (rows of the table):
  without     a segmenter trained on the available modalities only (`--reduced`) reads them;
  synthesise  `--synthesiser` (a BraSyn generator) fills in the missing modality, then `--segmenter` (default
              the bundled weights/segment) segments the completed case;
  joint       the joint model's own mask (`--joint`, a TISS-Net checkpoint, run with --segmentation-output);
  real        `--segmenter` on all real modalities (the ceiling).
Each is scored on `--region` (default WT, the paper's glioma task): Dice, HD95 and NSD at 1 / 2 mm. A second
table scores the two syntheses of the missing modality as `infer.evaluate` does (brain SSIM, PSNR, MAE).
Cases are grouped as in `python -m infer.holdout` (the split's validation cases, each --extra case alone). Inputs
are links in `OUTPUT/inputs/`, syntheses and masks go to `OUTPUT/pred/<route>/` and `OUTPUT/masks/joint/`,
per-case scores to `OUTPUT/per_case.csv` and the tables to `OUTPUT/summary.md` (also printed).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from conventions.naming import SEGMENTATION
from conventions.regions import REGION_NAMES, region_mask
from conventions.tasks import BRASYN, BRATS_MODALITIES
from infer import cli
from infer.engine.cases import case_naming
from infer.engine.precision import PRECISIONS
from infer.evaluate.scoring import PREDICTION, evaluate, load_volume, prediction_file, reference_cases, write_csv
from infer.evaluate.segmetrics import mask_scores, nsd_key
from infer.holdout import add_case_arguments, grouped_cases, link_inputs, link_references

ROUTES: tuple[str, ...] = ("without", "synthesise", "joint", "real")
"""The routes in table order (see the module docstring)."""
SEG_METRICS: tuple[str, ...] = ("dice", "hd95", "nsd", nsd_key(2.0))
IMAGE_METRICS: tuple[str, ...] = ("ssim_brain", "psnr", "mae")
SYNTHESES: tuple[str, ...] = ("synthesise", "joint")
"""The routes whose model writes the missing modality."""


def route_scores(mask: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """`SEG_METRICS` of a boolean mask against the reference region mask (NSD at 1 mm and 2 mm)."""
    scores = mask_scores(mask, reference, spacing, tolerance_mm=1.0, extra_nsd_mm=(2.0,))
    return {m: scores[m] for m in SEG_METRICS}


def mean_sd(values: Sequence[float]) -> str:
    """"mean ± sd" of the finite values ("-" when there is none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    return f"{np.mean(finite):.3f} ± {np.std(finite):.3f}"


def markdown(rows: Sequence[Mapping], groups: Mapping[str, Sequence[str]], missing: str, region: str) -> str:
    """One segmentation table and one image table per group (means ± standard deviations over its cases)."""
    labels = {"without": f"segmenter on the three available modalities (no {missing})",
              "synthesise": f"synthesise {missing}, then the four-modality segmenter",
              "joint": "TISS-Net's own fine mask", "real": f"segmenter on all four real modalities (real {missing})"}
    out = []
    for group, names in groups.items():
        sel = [r for r in rows if r["case"] in names]
        out += [f"{group} ({len(names)} case{'s' * (len(names) != 1)}: {', '.join(names)}), {region}", "",
                f"| route | {region} Dice | HD95 (mm) | NSD 1 mm | NSD 2 mm |", "| --- | --- | --- | --- | --- |"]
        for route in ROUTES:
            cells = [mean_sd([float(r[m]) for r in sel if r["route"] == route]) for m in SEG_METRICS]
            out.append(f"| {labels[route]} | " + " | ".join(cells) + " |")
        out += ["", f"| synthesis of {missing} | brain SSIM | PSNR (dB) | MAE |", "| --- | --- | --- | --- |"]
        for route in SYNTHESES:
            cells = [mean_sd([float(r[m]) for r in sel if r["route"] == route]) for m in IMAGE_METRICS]
            out.append(f"| {route} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.routes", description=__doc__.split("\n\n")[0])
    add_case_arguments(p)
    p.add_argument("--missing", choices=BRATS_MODALITIES, default="t2f", help="the withheld modality")
    p.add_argument("--region", choices=REGION_NAMES, default="WT", help="the tumour region scored")
    p.add_argument("--joint", type=Path, required=True, help="TISS-Net checkpoint (synthesis + mask)")
    p.add_argument("--synthesiser", type=Path, help="BraSyn generator (default: the bundled weights)")
    p.add_argument("--reduced", required=True, help="3D segmenter trained without the missing modality")
    p.add_argument("--segmenter", help="four-modality segmenter (default: the bundled weights/segment)")
    p.add_argument("--output", type=Path, required=True, help="work and result folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="arithmetic of the syntheses")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from infer.cli import SetupError
    from infer.segment import load_segmenter

    try:
        groups, cases = grouped_cases(args)
        full, reduced = (load_segmenter(s, device=args.device) for s in (args.segmenter, args.reduced))
    except (SetupError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out, missing = args.output, args.missing
    link_references(cases, out / "reference")
    link_inputs(cases, missing, out / "inputs")
    masks = out / "masks" / "joint"
    runs = {"synthesise": ["--weights", str(args.synthesiser)] if args.synthesiser else [],
            "joint": ["--weights", str(args.joint), "--segmentation-output", str(masks)]}
    images: dict[tuple[str, str], dict] = {}
    for route, extra in runs.items():
        preds = out / "pred" / route
        if cli.main(["--task", "brasyn", "--input", str(out / "inputs"), "--output", str(preds), "--overwrite",
                     "--device", args.device, "--precision", args.precision, *extra]) != 0:
            print(f"error: the {route} route's synthesis failed", file=sys.stderr)
            return 1
        result = evaluate(out / "reference", preds, modalities=[missing], progress=False)
        if result.errors:
            return 1
        images.update({(r["case"], route): r for r in result.rows if r["source"] == PREDICTION})
    references = reference_cases(out / "reference")
    rows: list[dict] = []
    for case in cases:
        ref = references[case.name]
        seg_path = ref.path(SEGMENTATION)
        truth_labels, spacing = load_volume(seg_path)
        truth = region_mask(ref.naming.read_labels(truth_labels), args.region)
        volumes = {m: load_volume(p)[0] for m, p in case.files.items()}
        affine = nib.load(str(seg_path)).affine
        available = {m: v for m, v in volumes.items() if m != missing}
        synthesis = load_volume(prediction_file(out / "pred" / "synthesise", case.name, missing,
                                                case_naming(case, BRASYN)))[0]
        joint_mask = load_volume(masks / f"{case.name}-seg.nii.gz")[0] > 0
        found = {"without": region_mask(reduced(available, affine), args.region),
                 "synthesise": region_mask(full({**available, missing: synthesis}, affine), args.region),
                 "joint": joint_mask,
                 "real": region_mask(full(volumes, affine), args.region)}
        for route in ROUTES:
            row = {"case": case.name, "route": route, **route_scores(found[route], truth, spacing)}
            image = images.get((case.name, route), {})
            row.update({m: image.get(m, math.nan) for m in IMAGE_METRICS})
            rows.append(row)
    write_csv(rows, out / "per_case.csv", columns=["case", "route", *SEG_METRICS, *IMAGE_METRICS])
    text = markdown(rows, {g: [f.name for f in folders] for g, folders in groups.items()}, missing, args.region)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate synthesised modalities (and, for BraSyn, trivial baselines) against the reference scans.

Command line::

    python -m infer.evaluate --pred OUT --reference REF [--segmentations SEGDIR] [--baselines]
                             [--report report.html|report.md] [--csv per_case.csv] [--modalities t2f ...]
    python -m infer.evaluate --task mr2ct|us2mr --pred OUT --reference REF   (scored inside the head / the
                             ultrasound's field of view: `infer.evaluate.metrics.field_metrics`)

Layout: ``REF/<case>/<case>-{t1c,t1n,t2f,t2w}.nii.gz`` (+ optional ``<case>-seg.nii.gz``), or the 2018-2021
naming ``REF/<case>/<case>_{t1ce,t1,flair,t2,seg}.nii.gz`` whose enhancing-tumour label 4 is read as 3
(`conventions.naming`); predictions are flat, ``OUT/<case>-<modality>.nii.gz`` or named in the case's own convention
(``OUT/<case>_flair.nii.gz``, as `python -m infer` writes them), and every modality found for a case is scored.
Segmentations of the completed cases, when given, are ``SEGDIR/<case>.nii.gz``, ``SEGDIR/<case>-seg.nii.gz``
(2023 labels) or ``SEGDIR/<case>_seg.nii.gz`` (2018 labels). Baselines are scored for the modalities that
were predicted (every requested one when only baselines are asked for).

Results are rows, one per (case, source, modality): source ``prediction``, ``baseline_mean``, ``baseline_copy``
(see `infer.evaluate.baselines`) with the image metrics of `infer.evaluate.metrics.image_metrics`, and source ``segmentation``
(modality ``all``) with the Dice/NSD/HD95 of `infer.evaluate.segmetrics.segmentation_metrics`. A reference case without
any prediction gets a ``missing`` row and is reported; an unreadable or mismatched file gets a one-line error
naming the case and the file, the run goes on, and the command exits non-zero at the end.

`evaluate` is the same pipeline as a function (predictions from a folder or from memory), for training
validation; `infer.evaluate.metrics.image_metrics` scores a single volume pair.
"""
from __future__ import annotations

import csv
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infer.evaluate.baselines import BASELINES
from infer.engine.cases import parse_file_name
from infer.evaluate.downstream import NSD2_COLUMNS, REAL, Segmenter, completions, downstream_source, score_labels
from infer.engine.intensity import foreground
from infer.evaluate.metrics import (CHALLENGE_BORDER_CROP, FIELD_METRICS, IMAGE_METRICS, field_metrics, image_metrics,
                           percentile_normalize)
from conventions.naming import BRATS_2023, Naming, naming_of_segmentation
from conventions.naming import SEGMENTATION as SEG_FILE
from infer.engine.runner import QC_FOLDER
from conventions.regions import REGION_NAMES
from infer.evaluate.segmetrics import DEFAULT_NSD_TOLERANCE_MM, seg_metric_names, segmentation_metrics
from conventions.tasks import BRASYN, BRATS_MODALITIES, TASKS, TaskSpec

PREDICTION = "prediction"
SEGMENTATION = "segmentation"
TUMOUR_TYPES: tuple[str, ...] = ("GLI", "MET", "MEN")
ROW_KEYS: tuple[str, ...] = ("case", "tumour_type", "source", "modality", "status", "detail")
SEG_COLUMNS: tuple[str, ...] = seg_metric_names()
METRIC_COLUMNS: tuple[str, ...] = (*IMAGE_METRICS, *FIELD_METRICS, *SEG_COLUMNS, *NSD2_COLUMNS)
CSV_COLUMNS: tuple[str, ...] = (*ROW_KEYS, *METRIC_COLUMNS)
SUMMARY_COLUMNS: tuple[str, ...] = ("group", "source", "modality", "metric", "n", "mean", "std", "median")

Predictions = Mapping[str, Mapping[str, np.ndarray]]
"""In-memory predictions: case -> modality -> raw volume."""


def baseline_source(name: str) -> str:
    """Row source of a baseline (``baseline_<name>``)."""
    return f"baseline_{name}"


def tumour_type(case: str) -> str:
    """``GLI``, ``MET`` or ``MEN`` when the case name contains it as a token (``BraTS-MET-00001-000``), else ``other``."""
    for t in TUMOUR_TYPES:
        if re.search(rf"(?:^|[-_]){t}(?:[-_]|$)", case, flags=re.IGNORECASE):
            return t
    return "other"


def load_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Voxel array (as stored, 3D) and voxel spacing in mm of a NIfTI file; raises on any problem."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    return np.asarray(data), tuple(float(z) for z in img.header.get_zooms()[:3])


@dataclass(frozen=True)
class ReferenceCase:
    """A reference case folder and the naming convention of its files."""

    folder: Path
    naming: Naming = BRATS_2023

    def path(self, key: str) -> Path:
        """The file of a modality (or `SEG_FILE`) of this case."""
        return self.folder / self.naming.file_name(self.folder.name, key)


def reference_cases(reference_dir: Path, task: TaskSpec = BRASYN) -> dict[str, ReferenceCase]:
    """Case name -> reference case, for every sub-folder of `reference_dir` holding files of the task's
    modalities (or a segmentation) in one of its naming conventions; ValueError for a case mixing them."""
    cases = {}
    for d in sorted(p for p in Path(reference_dir).iterdir() if p.is_dir()):
        found = [n for n in task.namings
                 if any((d / n.file_name(d.name, m)).exists() for m in (*task.modalities, SEG_FILE))]
        if len(found) > 1:
            raise ValueError(f"{d.name}: mixes naming conventions ({found[0].name} and {found[1].name})")
        if found:
            cases[d.name] = ReferenceCase(d, found[0])
    return cases


def _empty_row(case: str, source: str, modality: str, status: str = "ok", detail: str = "") -> dict:
    row: dict = {"case": case, "tumour_type": tumour_type(case), "source": source, "modality": modality,
                 "status": status, "detail": detail}
    row.update({k: math.nan for k in METRIC_COLUMNS})
    return row


@dataclass
class EvaluationResult:
    """Rows of an evaluation run plus what went wrong. `errors` non-empty means the command fails."""

    rows: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reference_dir: Path | None = None
    predictions: Path | Predictions | None = None

    @property
    def ok_rows(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "ok"]

    @property
    def missing(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "missing"]

    def summary(self) -> list[dict]:
        """Summary statistics; see `summarize`."""
        return summarize(self.rows)

    def middle_slices(self, row: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """Middle axial slice (percentile-normalised to [0, 1]) of the reference and of the row's volume."""
        case, mod, source = row["case"], row["modality"], row["source"]
        ref, pred = self._volumes(case, mod, source)
        k = ref.shape[2] // 2
        return percentile_normalize(ref)[:, :, k], percentile_normalize(pred)[:, :, k]

    def _volumes(self, case: str, mod: str, source: str) -> tuple[np.ndarray, np.ndarray]:
        assert self.reference_dir is not None
        reference = reference_cases(Path(self.reference_dir))[case]
        ref, _ = load_volume(reference.path(mod))
        if source == PREDICTION:
            if isinstance(self.predictions, Mapping):
                return ref, np.asarray(self.predictions[case][mod])
            assert self.predictions is not None
            return ref, load_volume(prediction_file(Path(self.predictions), case, mod, reference.naming))[0]
        name = source.removeprefix("baseline_")
        inputs = {m: load_volume(reference.path(m))[0] for m in BRATS_MODALITIES if m != mod}
        return ref, BASELINES[name](inputs, mod)


class _Case:
    """Lazily loaded reference files of one case; failures become one-line errors."""

    def __init__(self, name: str, reference: ReferenceCase, report: Callable[[str], None]):
        self.name, self.reference, self._report = name, reference, report
        self._cache: dict[str, tuple[np.ndarray, tuple[float, ...]] | None] = {}

    def path(self, key: str) -> Path:
        return self.reference.path(key)

    def get(self, key: str, required: bool = True) -> tuple[np.ndarray, tuple[float, ...]] | None:
        if key not in self._cache:
            p = self.path(key)
            if not p.exists():
                if required:
                    self._report(f"{self.name}: reference file missing: {p}")
                self._cache[key] = None
            else:
                try:
                    data, spacing = load_volume(p)
                    if key == SEG_FILE:
                        data = self.reference.naming.read_labels(data)
                    self._cache[key] = (data, spacing)
                except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
                    self._report(f"{self.name}: cannot read {p}: {one_line(e)}")
                    self._cache[key] = None
        return self._cache[key]


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _find_segmentation(seg_dir: Path, case: str) -> Path | None:
    for name in (f"{case}.nii.gz", *(n.file_name(case, SEG_FILE) for n in BRASYN.namings)):
        if (seg_dir / name).exists():
            return seg_dir / name
    return None


def prediction_file(pred_dir: Path, case: str, modality: str, naming: Naming) -> Path:
    """The prediction of `case`'s `modality`: named in the case's convention, else in the 2023 one."""
    own = pred_dir / naming.file_name(case, modality)
    return own if own.exists() else pred_dir / BRATS_2023.file_name(case, modality)


def evaluate(
    reference_dir: str | Path,
    predictions: str | Path | Predictions | None = None,
    segmentation_dir: str | Path | None = None,
    baselines: Iterable[str] = (),
    modalities: Sequence[str] | None = None,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    border_crop: int = CHALLENGE_BORDER_CROP,
    cases: Iterable[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    task: TaskSpec = BRASYN,
    segmenter: Segmenter | None = None,
    seg_regions: Sequence[str] = REGION_NAMES,
) -> EvaluationResult:
    """Score predictions (a flat folder, or in-memory ``{case: {modality: volume}}``) and/or baselines.

    reference_dir: BraTS-layout folder. baselines: names from `infer.evaluate.baselines.BASELINES` (each modality of
    `modalities` is synthesised from the other reference modalities). segmentation_dir: segmentations of the
    completed cases, scored per region against the reference ``-seg``. cases: restrict to these case names.
    log: where one-line errors and warnings go as they happen (default: stderr, above the progress bar).
    task: the task whose outputs are scored, as its `metrics` says; modalities default to its targets.
    segmenter: when given, the downstream protocol (`infer.evaluate.downstream`) for every predicted modality.
    seg_regions: the regions `segmentation_dir`'s files are scored on (("WT",) for whole-tumour masks).
    Returns an `EvaluationResult`; it never raises for a bad case file (see its ``errors``).
    """
    from tqdm import tqdm

    reference_dir = Path(reference_dir)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {sorted(BASELINES)}")
    modalities = tuple(modalities or task.target_modalities)
    bad_mods = [m for m in modalities if m not in task.target_modalities]
    if bad_mods:
        raise ValueError(f"unknown modalities {bad_mods}; {task.name} synthesises {list(task.target_modalities)}")
    if baselines and task.metrics != "brats":
        raise ValueError(f"the baselines are BraTS ones; task {task.name} has none")
    baselines = list(baselines)
    if log is None:
        def log(msg: str) -> None:
            tqdm.write(msg, file=sys.stderr)

    pred_dir = Path(predictions) if isinstance(predictions, (str, Path)) else None
    result = EvaluationResult(reference_dir=reference_dir, predictions=pred_dir if pred_dir else predictions)

    def error(msg: str) -> None:
        if msg in result.errors:  # e.g. one bad input file seen by several baselines
            return
        result.errors.append(msg)
        log(f"error: {msg}")

    def warn(msg: str) -> None:
        result.warnings.append(msg)
        log(f"warning: {msg}")

    if not reference_dir.is_dir():
        error(f"reference folder not found: {reference_dir}")
        return result
    if pred_dir is not None and not pred_dir.is_dir():
        error(f"prediction folder not found: {pred_dir}")
        return result
    seg_dir = Path(segmentation_dir) if segmentation_dir is not None else None
    if seg_dir is not None and not seg_dir.is_dir():
        error(f"segmentation folder not found: {seg_dir}")
        return result

    try:
        found = reference_cases(reference_dir, task)
    except ValueError as e:
        error(str(e))
        return result
    if cases is not None:
        wanted = list(cases)
        for c in wanted:
            if c not in found:
                error(f"{c}: no reference case folder in {reference_dir}")
        found = {c: found[c] for c in wanted if c in found}
    if pred_dir is not None:
        _report_unmatched(pred_dir, found, warn, task)
    elif isinstance(predictions, Mapping):
        for c in predictions:
            if c not in found:
                warn(f"{c}: prediction has no reference case")

    for name, reference in tqdm(found.items(), desc="evaluate", unit="case", disable=not progress,
                                file=sys.stderr):
        case = _Case(name, reference, error)
        seg_entry = case.get(SEG_FILE, required=False)
        ref_seg = seg_entry[0] if seg_entry is not None else None  # unreadable: reported, metrics go on
        predicted, scored = modalities, {}
        if predictions is not None:
            predicted, scored = _score_predictions(result, case, predictions, pred_dir, modalities, ref_seg,
                                                   border_crop, error, task)
        for b in baselines:
            _score_baseline(result, case, b, predicted, ref_seg, border_crop, error)
        if segmenter is not None and scored:
            _score_downstream(result, case, scored, seg_entry, segmenter, error)
        if seg_dir is not None:
            _score_segmentation(result, case, seg_dir, seg_entry, nsd_tolerance_mm, seg_regions, error)
    return result


def _report_unmatched(pred_dir: Path, found: Mapping[str, ReferenceCase], warn: Callable[[str], None],
                      task: TaskSpec) -> None:
    for p in sorted(pred_dir.iterdir()):
        if p.name == QC_FOLDER and p.is_dir():  # the QC pictures of `python -m infer --qc`
            continue
        parsed = parse_file_name(p.name, task)
        if parsed is None or parsed[1] not in task.modalities:
            warn(f"ignoring {p}: not named <case>-<modality>.nii.gz")
        elif parsed[0] not in found:
            warn(f"{parsed[0]}: prediction {p} has no reference case")


def _check_shape(case: str, what: Path | str, vol: np.ndarray, ref: np.ndarray, error: Callable[[str], None]) -> bool:
    if vol.shape != ref.shape:
        error(f"{case}: shape mismatch {what}: {vol.shape} vs reference {ref.shape}")
        return False
    return True


def _field_mask(case: _Case, task: TaskSpec, mod: str) -> np.ndarray:
    """Where a `field`-scored synthesis of `mod` is scored: the foreground of its first input."""
    given = task.inputs_for(mod)[0]
    entry = case.get(given)
    if entry is None:
        raise ValueError(f"input {given} missing or unreadable")
    return foreground(entry[0], task.normalization[given])


def _image_row(result: EvaluationResult, case: _Case, source: str, mod: str, pred: np.ndarray, ref: np.ndarray,
               ref_seg: np.ndarray | None, border_crop: int, what: str, error: Callable[[str], None],
               task: TaskSpec = BRASYN) -> None:
    if ref_seg is not None and ref_seg.shape != ref.shape:
        error(f"{case.name}: shape mismatch {case.path('seg')}: {ref_seg.shape} vs reference {ref.shape}")
        ref_seg = None
    try:
        if task.metrics == "field":
            metrics = field_metrics(pred, ref, _field_mask(case, task, mod))
        else:
            metrics = image_metrics(pred, ref, ref_seg, border_crop=border_crop)
    except Exception as e:  # noqa: BLE001
        error(f"{case.name}: cannot score {what}: {one_line(e)}")
        result.rows.append(_empty_row(case.name, source, mod, "error", one_line(e)))
        return
    row = _empty_row(case.name, source, mod)
    row.update(metrics)
    result.rows.append(row)


def _score_predictions(result: EvaluationResult, case: _Case, predictions: Path | Predictions, pred_dir: Path | None,
                       modalities: Sequence[str], ref_seg: np.ndarray | None, border_crop: int,
                       error: Callable[[str], None], task: TaskSpec) -> tuple[list[str], dict[str, np.ndarray]]:
    """Score the case's predictions; the modalities that had one, and the volumes that were scored."""
    if pred_dir is not None:
        files = {m: prediction_file(pred_dir, case.name, m, case.reference.naming) for m in modalities}
        files = {m: p for m, p in files.items() if p.exists()}
        available = list(files)
    else:
        given = predictions.get(case.name, {})  # type: ignore[union-attr]
        available = [m for m in modalities if m in given]
    if not available:
        where = pred_dir if pred_dir is not None else "the given predictions"
        mods = "|".join(modalities)
        result.rows.append(_empty_row(case.name, PREDICTION, "", "missing", f"no {case.name}-{{{mods}}} in {where}"))
        return [], {}
    scored = {}
    for mod in available:
        ref_entry = case.get(mod)
        if pred_dir is not None:
            what = str(files[mod])
            try:
                pred = load_volume(files[mod])[0]
            except Exception as e:  # noqa: BLE001
                error(f"{case.name}: cannot read {files[mod]}: {one_line(e)}")
                result.rows.append(_empty_row(case.name, PREDICTION, mod, "error", one_line(e)))
                continue
        else:
            what = f"in-memory prediction {mod}"
            pred = np.asarray(predictions[case.name][mod])  # type: ignore[index]
        if ref_entry is None:
            result.rows.append(_empty_row(case.name, PREDICTION, mod, "error", "reference unreadable or missing"))
            continue
        ref = ref_entry[0]
        if not _check_shape(case.name, what, pred, ref, error):
            result.rows.append(_empty_row(case.name, PREDICTION, mod, "error", "shape mismatch"))
            continue
        _image_row(result, case, PREDICTION, mod, pred, ref, ref_seg, border_crop, what, error, task)
        scored[mod] = pred
    return available, scored


def _score_baseline(result: EvaluationResult, case: _Case, name: str, modalities: Sequence[str],
                    ref_seg: np.ndarray | None, border_crop: int, error: Callable[[str], None]) -> None:
    source = baseline_source(name)
    for mod in modalities:
        ref_entry = case.get(mod)
        if ref_entry is None:
            continue
        ref = ref_entry[0]
        inputs = {}
        for m in BRATS_MODALITIES:
            if m == mod:
                continue
            entry = case.get(m)
            if entry is not None and _check_shape(case.name, case.path(m), entry[0], ref, error):
                inputs[m] = entry[0]
        if not inputs:
            result.rows.append(_empty_row(case.name, source, mod, "error", "no readable input modality"))
            continue
        try:
            pred = BASELINES[name](inputs, mod)
        except Exception as e:  # noqa: BLE001
            error(f"{case.name}: baseline {name} for {mod} failed: {one_line(e)}")
            result.rows.append(_empty_row(case.name, source, mod, "error", one_line(e)))
            continue
        _image_row(result, case, source, mod, pred, ref, ref_seg, border_crop, f"baseline {name} {mod}", error)


def _score_downstream(result: EvaluationResult, case: _Case, predictions: Mapping[str, np.ndarray],
                      seg_entry: tuple[np.ndarray, tuple[float, ...]] | None, segmenter: Segmenter,
                      error: Callable[[str], None]) -> None:
    """Segment the real case once and its completion by each scored prediction (modality -> volume, as
    `_score_predictions` read them) and by each baseline; score every one."""
    if seg_entry is None:  # nothing to score against: said, not an error (a held-out case may have no labels)
        result.rows.append(_empty_row(case.name, downstream_source(REAL), "", "missing",
                                      f"no reference labels {case.path(SEG_FILE).name} to score segmentations"))
        return
    ref_seg, spacing = seg_entry
    real = {}
    for m in BRATS_MODALITIES:
        entry = case.get(m)
        if entry is None:
            return
        real[m] = entry[0]
    try:
        import nibabel as nib

        affine = nib.load(case.path(BRATS_MODALITIES[0])).affine
        real_scores = score_labels(segmenter(real, affine), ref_seg, spacing)
        for mod, pred in predictions.items():
            others = {m: v for m, v in real.items() if m != mod}
            stand_ins = {PREDICTION: pred, **{baseline_source(b): BASELINES[b](others, mod) for b in BASELINES}}
            result.rows.append({**_empty_row(case.name, downstream_source(REAL), mod), **real_scores})
            for name, volumes in completions(real, mod, stand_ins).items():
                scores = score_labels(segmenter(volumes, affine), ref_seg, spacing)
                result.rows.append({**_empty_row(case.name, downstream_source(name), mod), **scores})
    except Exception as e:  # noqa: BLE001 - one case's failure is reported, the others go on
        error(f"{case.name}: downstream segmentation failed: {one_line(e)}")


def _score_segmentation(result: EvaluationResult, case: _Case, seg_dir: Path,
                        ref_entry: tuple[np.ndarray, tuple[float, ...]] | None, tolerance: float,
                        regions: Sequence[str], error: Callable[[str], None]) -> None:
    path = _find_segmentation(seg_dir, case.name)
    if path is None:
        result.rows.append(_empty_row(case.name, SEGMENTATION, "all", "missing",
                                      f"no {case.name}.nii.gz or {case.name}[-_]seg.nii.gz in {seg_dir}"))
        return
    if ref_entry is None:
        if not case.path("seg").exists():
            error(f"{case.name}: reference segmentation missing: {case.path('seg')}")
        result.rows.append(_empty_row(case.name, SEGMENTATION, "all", "error", "no reference segmentation"))
        return
    ref_seg, spacing = ref_entry
    try:
        seg = naming_of_segmentation(path.name).read_labels(load_volume(path)[0])
    except Exception as e:  # noqa: BLE001
        error(f"{case.name}: cannot read {path}: {one_line(e)}")
        result.rows.append(_empty_row(case.name, SEGMENTATION, "all", "error", one_line(e)))
        return
    if not _check_shape(case.name, path, seg, ref_seg, error):
        result.rows.append(_empty_row(case.name, SEGMENTATION, "all", "error", "shape mismatch"))
        return
    row = _empty_row(case.name, SEGMENTATION, "all")
    row.update(segmentation_metrics(np.rint(seg).astype(np.int16), ref_seg, spacing, tolerance, regions))
    result.rows.append(row)


# --------------------------------------------------------------------------------------------------------------
# Summary and output


def _source_order(source: str) -> tuple[int, str]:
    order = {PREDICTION: 0, SEGMENTATION: 9}
    return order.get(source, 5), source


def summarize(rows: Sequence[Mapping], metrics: Sequence[str] = METRIC_COLUMNS) -> list[dict]:
    """Mean, population std and median of each metric per (group, source, modality) over the ``ok`` rows.

    group ``all`` holds every case; when the case names carry a tumour type (GLI/MET/MEN) and more than one
    group would result, each type also gets its own group. NaN values (metric not applicable) are left out and
    ``n`` counts the rest; ``+inf`` (PSNR of identical volumes) is kept, so a mean may be inf.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    types = sorted({r["tumour_type"] for r in ok if r["tumour_type"] in TUMOUR_TYPES})
    all_types = {r["tumour_type"] for r in ok}
    groups = ["all"] + (types if types and (len(all_types) > 1 or len(types) > 1) else [])
    keys = sorted({(r["source"], r["modality"]) for r in ok}, key=lambda k: (_source_order(k[0]), k[1]))
    out = []
    for g in groups:
        for source, mod in keys:
            sel = [r for r in ok if r["source"] == source and r["modality"] == mod
                   and (g == "all" or r["tumour_type"] == g)]
            if not sel:
                continue
            for metric in metrics:
                vals = np.array([float(r[metric]) for r in sel], dtype=np.float64)
                vals = vals[~np.isnan(vals)]
                if vals.size == 0:
                    continue
                with np.errstate(invalid="ignore"):
                    std = float(np.std(vals)) if np.all(np.isfinite(vals)) else math.nan
                out.append({"group": g, "source": source, "modality": mod, "metric": metric, "n": int(vals.size),
                            "mean": float(np.mean(vals)), "std": std, "median": float(np.median(vals))})
    return out


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


CONSOLE_IMAGE_METRICS: tuple[str, ...] = ("ssim_healthy", "ssim_tumour", "ssim_brain", "ssim_brain_tumour",
                                          "psnr", "mae", "slice_gradient_mae")


def format_summary(summary: Sequence[Mapping], metrics: Sequence[str] | None = None) -> str:
    """Plain-text table: one line per (group, source, modality), ``mean±std`` per metric."""
    if not summary:
        return "(no scored cases)"
    lines = []
    by_key: dict[tuple[str, str, str], dict[str, Mapping]] = {}
    for s in summary:
        by_key.setdefault((s["group"], s["source"], s["modality"]), {})[s["metric"]] = s
    sections = [("image", metrics or CONSOLE_IMAGE_METRICS), ("field-of-view", FIELD_METRICS),
                ("segmentation", SEG_COLUMNS)]
    for title, cols in sections:
        keys = [k for k, v in by_key.items() if any(c in v for c in cols)]
        if not keys:
            continue
        head = ["group", "source", "modality", "n", *cols]
        table = []
        for k in keys:
            stats = by_key[k]
            n = max((stats[c]["n"] for c in cols if c in stats), default=0)
            cells = [f"{_fmt(stats[c]['mean'])}±{_fmt(stats[c]['std'])}" if c in stats else "-" for c in cols]
            table.append([*k, str(n), *cells])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
        lines.append(f"{title} metrics (mean±std)")
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table)
        lines.append("")
    return "\n".join(lines).rstrip()


def _csv_value(v) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    return str(v)


def write_csv(rows: Sequence[Mapping], path: str | Path, columns: Sequence[str] = CSV_COLUMNS) -> Path:
    """Write rows with the given columns (floats in full precision; ``nan``/``inf`` spelled out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_csv_value(r.get(c, "")) for c in columns])
    return path

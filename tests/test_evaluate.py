"""The evaluation command end to end: synthetic BraTS folders (fast) and the real case with both baselines."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from infer.evaluate import scoring as ev
from infer.evaluate.cli import main as evaluate_main
from infer.evaluate.baselines import COPY_SOURCE, copy_baseline, copy_source, mean_baseline
from infer.engine.intensity import denormalize, normalize
from infer.evaluate.metrics import IMAGE_METRICS
from conventions.tasks import BRASYN_NORMALIZATION, BRATS_MODALITIES

REAL_CASE = "BraTS-GLI-00000-000"
SHAPE = (24, 26, 20)


def _save(path: Path, arr: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> Path:
    img = nib.Nifti1Image(arr, np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))
    return path


def _synthetic_case(seed: int):
    """Four int16 modalities of an ellipsoid 'brain' with a lesion, and its BraTS label map."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    brain = (z**2 + y**2 + x**2) < 0.8
    lesion = ((z - 0.2) ** 2 + (y + 0.1) ** 2 + x**2) < 0.08
    base = rng.random(SHAPE)
    vols = {}
    for i, m in enumerate(BRATS_MODALITIES):
        v = (300 + 200 * i) * (1 + 0.3 * base) + 500 * lesion * (1 if i % 2 else -0.5)
        vols[m] = np.where(brain, v, 0).astype(np.int16)
    seg = np.zeros(SHAPE, np.uint8)
    seg[lesion] = 2
    seg[lesion & (np.abs(x) < 0.3)] = 1
    seg[lesion & (np.abs(x) < 0.12)] = 3
    return vols, seg


@pytest.fixture()
def synthetic(tmp_path):
    """REF with three cases (GLI with seg, MET without, MEN with no prediction), OUT, SEG folders."""
    ref, out, segs = tmp_path / "ref", tmp_path / "out", tmp_path / "segs"
    cases = {"BraTS-GLI-00001-000": True, "BraTS-MET-00002-000": False, "BraTS-MEN-00003-000": True}
    data = {}
    for i, (case, has_seg) in enumerate(cases.items()):
        vols, seg = _synthetic_case(i)
        data[case] = (vols, seg)
        for m, v in vols.items():
            _save(ref / case / f"{case}-{m}.nii.gz", v)
        if has_seg:
            _save(ref / case / f"{case}-seg.nii.gz", seg)
    gli, met = "BraTS-GLI-00001-000", "BraTS-MET-00002-000"
    _save(out / f"{gli}-t2f.nii.gz", data[gli][0]["t2f"])  # a perfect prediction
    noisy = data[gli][0]["t1c"] + np.random.default_rng(9).normal(0, 40, SHAPE)
    _save(out / f"{gli}-t1c.nii.gz", np.clip(noisy, 0, None).astype(np.float32))
    _save(out / f"{met}-t2w.nii.gz", (data[met][0]["t2w"] * 0.9).astype(np.float32))
    _save(out / "BraTS-GLI-09999-000-t1n.nii.gz", data[gli][0]["t1n"])  # no reference case
    _save(segs / f"{gli}.nii.gz", data[gli][1])
    return ref, out, segs, data


def _read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_baselines_formulas_and_table():
    vols, _ = _synthetic_case(0)
    target = "t2f"
    avail = {m: v for m, v in vols.items() if m != target}
    bg = sum((v <= 0).astype(int) for v in avail.values()) >= 2
    expected = denormalize(sum(normalize(v, BRASYN_NORMALIZATION[m]) for m, v in avail.items()) / 3,
                           BRASYN_NORMALIZATION[target])
    expected[bg] = 0
    got = mean_baseline(vols, target)  # the target in the inputs is ignored
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)

    assert {t: copy_source(set(BRATS_MODALITIES) - {t}, t) for t in BRATS_MODALITIES} == {
        "t1c": "t1n", "t1n": "t1c", "t2f": "t2w", "t2w": "t2f"}
    assert copy_source({"t1c", "t2f", "t2w"}, "t1n") == "t1c"
    assert copy_source({"t2f"}, "t1n") == COPY_SOURCE["t1n"][2]
    got = copy_baseline(avail, target)
    expected = denormalize(normalize(avail["t2w"], BRASYN_NORMALIZATION["t2w"]), BRASYN_NORMALIZATION[target])
    expected[bg] = 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    # Background vote: a voxel that only one input calls background keeps its value.
    one_bg = dict(avail)
    one_bg["t1c"] = avail["t1c"].copy()
    one_bg["t1c"][12, 13, 10] = 0
    assert copy_baseline(one_bg, target)[12, 13, 10] > 0
    with pytest.raises(ValueError):
        mean_baseline({"t2f": vols["t2f"]}, "t2f")


def test_command_on_synthetic_folders(synthetic, tmp_path, capsys):
    ref, out, segs, _ = synthetic
    # One unreadable prediction: reported with case and file, the rest still scored, exit code 1.
    bad = out / "BraTS-GLI-00001-000-t2w.nii.gz"
    bad.write_bytes(b"not a nifti file")
    csv_path, report = tmp_path / "res" / "per_case.csv", tmp_path / "res" / "report.md"
    code = evaluate_main(["--pred", str(out), "--reference", str(ref), "--segmentations", str(segs), "--baselines",
                    "--csv", str(csv_path), "--report", str(report), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    err_lines = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "BraTS-GLI-00001-000" in err_lines[0] and str(bad) in err_lines[0]
    assert "BraTS-GLI-09999-000" in captured.err  # prediction without a reference case: warned
    assert "missing: BraTS-MEN-00003-000 prediction" in captured.out
    assert "image metrics" in captured.out and "baseline_mean" in captured.out

    rows = _read_csv(csv_path)
    assert list(rows[0]) == list(ev.CSV_COLUMNS)
    key = {(r["case"], r["source"], r["modality"]): r for r in rows}
    perfect = key[("BraTS-GLI-00001-000", "prediction", "t2f")]
    assert perfect["status"] == "ok"
    assert float(perfect["ssim_healthy"]) == pytest.approx(1.0) and float(perfect["ssim_tumour"]) == pytest.approx(1)
    assert float(perfect["ssim_brain"]) == pytest.approx(1.0) and perfect["psnr"] == "inf"
    assert float(perfect["mae"]) == 0.0
    noisy = key[("BraTS-GLI-00001-000", "prediction", "t1c")]
    assert 0 < float(noisy["ssim_brain"]) < 1 and float(noisy["mae"]) > 0 and math.isfinite(float(noisy["psnr"]))
    assert key[("BraTS-GLI-00001-000", "prediction", "t2w")]["status"] == "error"
    met = key[("BraTS-MET-00002-000", "prediction", "t2w")]
    assert met["tumour_type"] == "MET" and met["ssim_tumour"] == "nan" and float(met["ssim_brain"]) > 0.9
    assert key[("BraTS-MEN-00003-000", "prediction", "")]["status"] == "missing"
    # Baselines: both, for exactly the modalities that have a prediction file (the unreadable one included).
    predicted = {"BraTS-GLI-00001-000": {"t1c", "t2f", "t2w"}, "BraTS-MET-00002-000": {"t2w"},
                 "BraTS-MEN-00003-000": set()}
    for case, mods in predicted.items():
        for b in ("baseline_mean", "baseline_copy"):
            assert {m for (c, source, m) in key if c == case and source == b} == mods
            assert all(key[(case, b, m)]["status"] == "ok" for m in mods)
    # Segmentation: the GLI one is perfect; MET has no reference seg and no segmentation; MEN none given.
    seg_row = key[("BraTS-GLI-00001-000", "segmentation", "all")]
    assert all(float(seg_row[f"dice_{r}"]) == 1 and float(seg_row[f"hd95_{r}"]) == 0 for r in ("ET", "TC", "WT"))
    assert key[("BraTS-MEN-00003-000", "segmentation", "all")]["status"] == "missing"

    text = report.read_text()
    assert "# Synthesis evaluation" in text and "![best and worst case](report_files/best_worst.png)" in text
    for metric in ("ssim_brain", "ssim_healthy", "psnr", "mae", "dice_WT"):
        assert (report.parent / "report_files" / f"{metric}.png").stat().st_size > 1000
        assert f"](report_files/{metric}.png)" in text
    assert (report.parent / "report_files" / "best_worst.png").stat().st_size > 1000
    assert str(bad) in text


def test_summary_groups_by_tumour_type(synthetic):
    ref, _, _, _ = synthetic  # baselines alone: every case's t2w, predicted or not
    result = ev.evaluate(ref, None, modalities=["t2w"], baselines=["copy"], progress=False, log=lambda _m: None)
    summary = result.summary()
    groups = {s["group"] for s in summary}
    assert groups == {"all", "GLI", "MET", "MEN"}
    s = {(g["group"], g["source"], g["modality"], g["metric"]): g for g in summary}
    vals = [r["ssim_brain"] for r in result.ok_rows if r["source"] == "baseline_copy"]
    all_row = s[("all", "baseline_copy", "t2w", "ssim_brain")]
    assert all_row["n"] == 3 and all_row["mean"] == pytest.approx(np.mean(vals))
    assert all_row["std"] == pytest.approx(np.std(vals)) and all_row["median"] == pytest.approx(np.median(vals))
    assert s[("MET", "baseline_copy", "t2w", "ssim_brain")]["n"] == 1
    assert ("MET", "baseline_copy", "t2w", "ssim_tumour") not in s  # no seg: NaN left out
    text = ev.format_summary(summary)
    assert "MEN" in text and "ssim_brain" in text


def test_in_memory_predictions_and_html_report(synthetic, tmp_path):
    from infer.evaluate.report import write_report

    ref, _, _, data = synthetic
    case = "BraTS-GLI-00001-000"
    preds = {case: {"t1n": data[case][0]["t1n"].astype(np.float32)}}
    result = ev.evaluate(ref, preds, modalities=["t1n"], cases=[case], progress=False, log=lambda _m: None)
    assert not result.errors
    (row,) = result.rows
    assert row["source"] == "prediction" and row["ssim_brain"] == pytest.approx(1.0)
    assert set(IMAGE_METRICS) <= set(row)
    path = write_report(result, tmp_path / "r.html")
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<img alt='best and worst case' src='r_files/best_worst.png'>" in html
    assert (tmp_path / "r_files" / "best_worst.png").exists()


def test_report_figures_go_into_a_folder_beside_the_report(synthetic, tmp_path, monkeypatch):
    ref, out, _, _ = synthetic
    (out / "qc").mkdir()  # QC pictures of `python -m infer --qc` are not predictions
    (out / "qc" / "BraTS-GLI-00001-000.png").write_bytes(b"png")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    warnings = []
    result = ev.evaluate(ref, out, progress=False, log=warnings.append)
    assert not any("qc" in w for w in warnings)
    from infer.evaluate.report import write_report

    write_report(result, "report.html")
    assert sorted(p.name for p in workdir.iterdir()) == ["report.html", "report_files"]
    html = (workdir / "report.html").read_text()
    figures = sorted(p.name for p in (workdir / "report_files").iterdir())
    assert "best_worst.png" in figures and len(figures) > 5
    assert all(f"src='report_files/{name}'" in html for name in figures)


@pytest.mark.parametrize("task", ["mr2ct", "us2mr"])
def test_baselines_of_a_task_without_any_is_a_one_line_error(synthetic, capsys, task):
    ref, _, _, _ = synthetic
    assert evaluate_main(["--task", task, "--reference", str(ref), "--baselines", "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: the baselines are BraTS ones; task {task} has none\n"


def test_cli_errors(synthetic, monkeypatch, capsys, tmp_path):
    ref, out, _, _ = synthetic
    assert evaluate_main(["--reference", str(ref), "--baselines", "--segment"]) == 2
    assert "--segment needs --pred" in capsys.readouterr().err
    assert evaluate_main(["--pred", str(out), "--reference", str(ref), "--segment", "--segmenter", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert evaluate_main(["--reference", str(ref)]) == 2  # nothing to evaluate
    assert evaluate_main(["--reference", str(ref), "--baselines", "--report", str(tmp_path / "r.pdf")]) == 2
    assert evaluate_main(["--reference", str(tmp_path / "nope"), "--baselines", "--no-progress"]) == 1
    # A segmentation named <case>-seg.nii.gz is found too.
    segs = tmp_path / "segs2"
    case = "BraTS-GLI-00001-000"
    _save(segs / f"{case}-seg.nii.gz", np.zeros(SHAPE, np.uint8))
    result = ev.evaluate(ref, None, segmentation_dir=segs, cases=[case], progress=False, log=lambda _m: None)
    (row,) = result.rows
    assert row["status"] == "ok" and row["dice_ET"] == 0 and row["hd95_WT"] == pytest.approx(
        math.sqrt(sum(n * n for n in SHAPE)))


def test_tumour_type_from_case_name():
    assert ev.tumour_type("BraTS-GLI-00000-000") == "GLI"
    assert ev.tumour_type("BraTS-MET-00001-000") == "MET"
    assert ev.tumour_type("BraTS-MEN-00001-000") == "MEN"
    assert ev.tumour_type("BraTS-PED-00001-000") == "other"
    assert ev.tumour_type("GLIOMA-1") == "other"


def _run_real(brats_data: Path, tmp: Path, modalities: list[str]):
    """The real case: identity predictions of `modalities` and segmentation (symlinks), both baselines for each
    predicted modality."""
    case_dir = brats_data / REAL_CASE
    out, segs = tmp / "out", tmp / "segs"
    out.mkdir()
    segs.mkdir()
    for m in modalities:
        (out / f"{REAL_CASE}-{m}.nii.gz").symlink_to(case_dir / f"{REAL_CASE}-{m}.nii.gz")
    (segs / f"{REAL_CASE}.nii.gz").symlink_to(case_dir / f"{REAL_CASE}-seg.nii.gz")
    csv_path, report = tmp / "per_case.csv", tmp / "report.html"
    t0 = time.perf_counter()
    code = evaluate_main(["--pred", str(out), "--reference", str(brats_data), "--cases", REAL_CASE, "--baselines",
                    "--modalities", *modalities, "--segmentations", str(segs), "--csv", str(csv_path),
                    "--report", str(report), "--no-progress"])
    seconds = time.perf_counter() - t0
    assert code == 0
    rows = _read_csv(csv_path)
    key = {(r["source"], r["modality"]): r for r in rows}
    assert len(rows) == 3 * len(modalities) + 1
    for m in modalities:
        ident = key[("prediction", m)]
        for k in ("ssim_healthy", "ssim_tumour", "ssim_brain", "ssim_brain_ET", "ssim_brain_TC", "ssim_brain_WT"):
            assert float(ident[k]) == pytest.approx(1.0, abs=1e-6)
        assert ident["psnr"] == "inf" and float(ident["mae"]) == 0
    seg = key[("segmentation", "all")]
    assert all(float(seg[f"dice_{r}"]) == 1 and float(seg[f"nsd_{r}"]) == 1 for r in ("ET", "TC", "WT"))
    for b in ("baseline_mean", "baseline_copy"):
        for m in modalities:
            r = key[(b, m)]
            assert r["status"] == "ok"
            # Challenge SSIM is background-dominated: high for any baseline; brain-only SSIM is far lower.
            assert 0.98 < float(r["ssim_tumour"]) < 1 and 0.7 < float(r["ssim_healthy"]) < 1
            assert -1 < float(r["ssim_brain"]) < 0.7 and float(r["ssim_brain"]) < float(r["ssim_healthy"])
            assert 0 < float(r["mae"]) < 0.6 and 0 < float(r["psnr"]) < 30
    html = report.read_text()
    assert "best and worst case" in html and (report.parent / "report_files" / "best_worst.png").stat().st_size > 10000
    assert (report.parent / "report_files" / "ssim_brain.png").exists()
    return seconds


def test_real_case_one_modality(brats_data, tmp_path):
    seconds = _run_real(brats_data, tmp_path, ["t2f"])
    assert seconds < 60, f"real-case evaluation of one modality took {seconds:.0f} s"


@pytest.mark.slow
def test_real_case_all_modalities(brats_data, tmp_path):
    seconds = _run_real(brats_data, tmp_path, list(BRATS_MODALITIES))
    assert seconds < 180, f"real-case evaluation took {seconds:.0f} s"

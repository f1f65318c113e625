"""The mr2ct task end to end on generated head phantoms: Pix2Pix training, checkpoint, sliding-window inference."""
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from helpers import CopyModel
from infer.cli import main as infer_main
from infer.engine.slices import EngineSettings, VolumePredictor, resolve_settings
from infer.evaluate.scoring import evaluate
from infer.evaluate.cli import main as evaluate_main
from infer.phantoms.head import make_head_case
from infer.engine.intensity import denormalize, foreground, normalize
from infer.phantoms.brain import write_case
from conventions.normalization import PercentileNorm, WindowNorm
from conventions.tasks import MR2CT
from models.checkpoint import load_model
from train.__main__ import main as train_main
from train.curves import read_csv

DEMO = Path(__file__).resolve().parents[1] / "train" / "configs" / "mr2ct-demo.yaml"
SHAPE = (128, 128, 16)
"""Larger in-plane than the 64x64 crops the test model trains on, so inference slides windows."""


@pytest.fixture(scope="module")
def head_cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("heads")
    for seed in (10, 11):
        write_case(make_head_case(f"HEAD-SYN-{seed:05d}-000", seed, SHAPE), root)
    return root


@pytest.fixture(scope="module")
def trained(head_cases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mr2ct-run")
    overrides = [f"data.roots=[{head_cases}]", f"run.output={out}", "data.slice_size=128", "data.crop=64",
                 "data.min_brain_pixels=500", "model.generator.channels=[8,16,32]", "model.discriminator.base=8",
                 "train.max_steps=24", "run.checkpoint_every=0", "run.progress=false"]
    assert train_main(["fit", "--config", str(DEMO), *[x for o in overrides for x in ("--set", o)]]) == 0
    return out


def test_pix2pix_training_lowers_l1_and_writes_a_unet_checkpoint(trained):
    rows = read_csv(trained / "log.csv")
    assert len(rows) == 24
    assert {"step", "lr", "l1", "ngf", "adversarial", "g_total", "d_total"} == set(rows[0])
    l1 = np.array([float(r["l1"]) for r in rows])
    assert np.isfinite(l1).all() and l1[-6:].mean() < 0.85 * l1[:6].mean(), l1.round(3)
    ngf = np.array([float(r["ngf"]) for r in rows])
    assert ((0 <= ngf) & (ngf <= 1)).all()
    model = load_model(trained / "generator")
    assert model.meta.kind == "unet" and model.meta.task == "mr2ct" and model.config.image_size == 64
    assert model.meta.normalization == MR2CT.normalization
    assert load_model(trained / "discriminator").meta.kind == "multiscale_discriminator"


def test_infer_writes_hounsfield_ct_on_the_mr_grid(trained, tmp_path):
    case = make_head_case("HEAD-SYN-00099-000", 99, SHAPE)
    write_case(case, tmp_path / "in", drop="ct")
    assert infer_main(["--task", "mr2ct", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                       "--weights", str(trained / "generator")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["HEAD-SYN-00099-000-ct.nii.gz"]
    out = nib.load(tmp_path / "out" / "HEAD-SYN-00099-000-ct.nii.gz")
    mr = nib.load(tmp_path / "in" / case.name / f"{case.name}-t1.nii.gz")
    assert out.shape == mr.shape and np.allclose(out.affine, mr.affine)
    ct = np.asarray(out.dataobj)
    assert ct.dtype == np.int16 and ct.min() >= -1000 and ct.max() <= 3000
    head = foreground(mr.get_fdata(dtype=np.float32), MR2CT.normalization["t1"])
    assert 0.2 < head.mean() < 0.8
    assert (ct[~head] == -1000).all()  # air outside the MR head mask
    assert (ct[head] > -1000).mean() > 0.5


def test_sliding_windows_equal_one_pass_for_a_pointwise_model():
    case = make_head_case("c", 5, (96, 80, 4))
    volumes = {"t1": case.images["t1"].astype(np.float32)}
    whole = EngineSettings(modalities=MR2CT.modalities, normalization=MR2CT.normalization, views=("axial",),
                           image_size=96, output_background=-1000.0)
    windows = EngineSettings(**{**whole.__dict__, "image_size": 32, "window_overlap": 0.75})
    one = VolumePredictor(CopyModel(source=0), whole).predict(volumes, "ct")
    slid = VolumePredictor(CopyModel(source=0), windows).predict(volumes, "ct")
    np.testing.assert_allclose(slid, one, atol=0.05)  # HU; Gaussian blending of identical values
    head = foreground(volumes["t1"], MR2CT.normalization["t1"])
    expected = denormalize(normalize(volumes["t1"], MR2CT.normalization["t1"]), MR2CT.normalization["ct"])
    np.testing.assert_allclose(one[head], expected[head], atol=0.05)
    assert (one[~head] == -1000.0).all()


def test_slices_larger_than_the_model_need_windows():
    model = CopyModel(source=0)
    settings = EngineSettings(modalities=MR2CT.modalities, normalization=MR2CT.normalization, views=("axial",),
                              image_size=32)
    with pytest.raises(ValueError, match="no sliding windows"):
        VolumePredictor(model, settings).predict({"t1": np.ones((40, 40, 2), np.float32)}, "ct")


def test_the_task_brings_its_window_overlap_to_the_engine():
    model = SimpleNamespace(config=SimpleNamespace(num_modalities=2, image_size=64, context_slices=0, num_views=0),
                            meta=SimpleNamespace(task="mr2ct", modalities=("t1", "ct"), normalization={}, views=()))
    settings = resolve_settings(MR2CT, model)
    assert settings.window_overlap == 0.75 and settings.output_background == -1000.0
    assert isinstance(settings.normalization["t1"], PercentileNorm)
    assert settings.normalization["ct"] == WindowNorm(-1000.0, 3000.0)


def test_evaluate_scores_ct_inside_the_head(tmp_path, capsys):
    case = make_head_case("HEAD-SYN-00007-000", 7, (96, 96, 8))
    write_case(case, tmp_path / "ref")
    (tmp_path / "pred").mkdir()
    ct = case.images["ct"]
    perfect = tmp_path / "pred" / f"{case.name}-ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, case.affine), perfect)
    result = evaluate(tmp_path / "ref", tmp_path / "pred", task=MR2CT, progress=False)
    (row,) = result.ok_rows
    assert row["ssim_field"] == pytest.approx(1.0) and row["mae_units"] == 0.0
    assert row["edge_agreement"] > 0.3  # flat voxels (below alpha) count as disagreement
    shifted = np.where(ct > -1000, ct + 100, ct).astype(np.int16)  # +100 HU inside the head
    nib.save(nib.Nifti1Image(shifted, case.affine), perfect)
    (row,) = evaluate(tmp_path / "ref", tmp_path / "pred", task=MR2CT, progress=False).ok_rows
    head = foreground(case.images["t1"].astype(np.float32), MR2CT.normalization["t1"])
    assert row["mae_units"] == pytest.approx(np.abs(shifted - ct.astype(np.float32))[head].mean())
    assert row["ssim_field"] < 1.0
    assert evaluate_main(["--task", "mr2ct", "--pred", str(tmp_path / "pred"), "--reference",
                          str(tmp_path / "ref"), "--no-progress"]) == 0
    assert "edge_agreement" in capsys.readouterr().out

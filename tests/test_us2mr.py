"""The us2mr task end to end on generated ultrasound phantoms: HF-GAN training with the ultrasound as the only
input, checkpoint, inference cropped to the ultrasound's field of view."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import CopyModel
from infer.engine.cases import CaseError, CaseFiles, check_case
from infer.cli import main as infer_main
from infer.engine.slices import EngineSettings, VolumePredictor
from infer.engine.intensity import foreground
from infer.phantoms.brain import SampleCase, write_case
from conventions.tasks import US2MR
from infer.phantoms.ultrasound import make_us_case
from models.checkpoint import load_model
from train.__main__ import main as train_main
from train.curves import read_csv

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
DEMO = CONFIGS / "us2mr-demo.yaml"
SHAPE = (64, 64, 32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    data, out = tmp_path_factory.mktemp("us"), tmp_path_factory.mktemp("us2mr-run")
    for seed in (20, 21):
        write_case(make_us_case(f"US-SYN-{seed:05d}-000", seed, SHAPE), data)
    overrides = [f"data.roots=[{data}]", f"run.output={out}", "data.slice_size=64", "data.min_brain_pixels=100",
                 "model.generator={dim: 4, dim_mults: [1, 1, 1, 1], n_layers: 1, num_heads: 2, norm_groups: 4}",
                 "model.discriminator.base=8", "train.max_steps=16", "run.checkpoint_every=0", "run.progress=false"]
    assert train_main(["fit", "--config", str(DEMO), *[x for o in overrides for x in ("--set", o)]]) == 0
    return out


def test_training_on_ultrasound_lowers_l1_for_both_mr_targets(trained):
    rows = read_csv(trained / "log.csv")
    assert len(rows) == 16
    l1 = np.array([float(r["l1"]) for r in rows])
    assert np.isfinite(l1).all() and l1[-4:].mean() < 0.85 * l1[:4].mean(), l1.round(3)
    model = load_model(trained / "generator")
    assert model.meta.task == "us2mr" and model.meta.modalities == ("us", "t2w", "t2f")
    assert model.meta.provenance["optimizer_steps"] == 16 * 2  # one per MR target, never the ultrasound


def test_infer_writes_t2w_by_default_and_flair_when_asked(trained, tmp_path):
    case = make_us_case("US-SYN-00099-000", 99, SHAPE)
    write_case(SampleCase(case.name, {"us": case.images["us"]}, None, case.affine), tmp_path / "in")
    weights = str(trained / "generator")
    assert infer_main(["--task", "us2mr", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "a"),
                       "--weights", weights]) == 0
    assert [p.name for p in (tmp_path / "a").iterdir()] == [f"{case.name}-t2w.nii.gz"]
    assert infer_main(["--task", "us2mr", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "b"),
                       "--weights", weights, "--targets", "t2w", "t2f"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"{case.name}-t2f.nii.gz", f"{case.name}-t2w.nii.gz"]
    us = nib.load(tmp_path / "in" / case.name / f"{case.name}-us.nii.gz")
    field = foreground(us.get_fdata(dtype=np.float32), US2MR.normalization["us"])
    for name in (f"{case.name}-t2f.nii.gz", f"{case.name}-t2w.nii.gz"):
        out = nib.load(tmp_path / "b" / name)
        assert out.shape == us.shape and np.allclose(out.affine, us.affine)
        data = out.get_fdata()
        assert np.isfinite(data).all() and data.min() >= 0
        assert (data[~field] == 0).all() and (data[field] > 0).mean() > 0.9
    with pytest.raises(SystemExit) as usage:  # the ultrasound is an input, never a target
        infer_main(["--task", "us2mr", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "c"),
                    "--targets", "us"])
    assert usage.value.code == 2


def test_the_engine_crops_to_the_ultrasound_field_and_pastes_back():
    case = make_us_case("c", 3, (48, 48, 24))
    us = case.images["us"].astype(np.float32)
    settings = EngineSettings(modalities=US2MR.modalities, normalization=US2MR.normalization, views=("axial",),
                              image_size=48, crop_to="us")
    cropped = VolumePredictor(CopyModel(source=0), settings).predict({"us": us}, "t2w")
    whole = VolumePredictor(CopyModel(source=0), EngineSettings(**{**settings.__dict__, "crop_to": None}))
    np.testing.assert_allclose(cropped, whole.predict({"us": us}, "t2w"), rtol=1e-6, atol=1e-3)
    assert (cropped[us == 0] == 0).all()


def test_cases_must_give_the_ultrasound_only(tmp_path):
    files = {m: tmp_path / f"c-{m}.nii.gz" for m in ("us", "t2w")}
    with pytest.raises(CaseError, match="t2w is not an input of task us2mr"):
        check_case(CaseFiles("c", {"t2w": files["t2w"]}), US2MR)
    assert check_case(CaseFiles("c", {"us": files["us"]}), US2MR) == ("t2w",)


def test_25d_generator_with_a_3d_refiner_runs_end_to_end(tmp_path):
    """The 2.5D and 2D + 3D refinement regimes on us2mr: a 2.5D generator (k = 1), a refiner trained on its
    cached volumes with the ultrasound as the only input, and inference through both."""
    data = tmp_path / "data"
    for seed in (30, 31):
        write_case(make_us_case(f"US-SYN-{seed:05d}-000", seed, SHAPE), data)
    overrides = [f"data.roots=[{data}]", f"run.output={tmp_path / 'gen'}", "data.slice_size=64",
                 "data.min_brain_pixels=100", "model.generator.context_slices=1",
                 "model.generator={dim: 4, dim_mults: [1, 1, 1, 1], n_layers: 1, num_heads: 2, norm_groups: 4}",
                 "model.discriminator.base=8", "train.max_steps=4", "run.checkpoint_every=0", "run.progress=false"]
    assert train_main(["fit", "--config", str(DEMO), *[x for o in overrides for x in ("--set", o)]]) == 0
    generator = tmp_path / "gen" / "generator"
    assert load_model(generator).config.context_slices == 1
    refiner = ["--config", str(CONFIGS / "refiner.yaml"), f"--data.roots=[{data}]", "--data.task=us2mr",
               f"--model.generator={generator}", f"--data.cache_dir={tmp_path / 'cache'}",
               f"--run.output={tmp_path / 'ref'}", "--run.device=cpu", "--run.progress=false",
               "--patch.size=[24,24,24]", "--model.refiner={width: 8, n_blocks: 1}", "--train.steps=4"]
    assert train_main(["refiner", *refiner]) == 0
    case = make_us_case("US-SYN-00098-000", 98, SHAPE)
    write_case(SampleCase(case.name, {"us": case.images["us"]}, None, case.affine), tmp_path / "in")
    assert infer_main(["--task", "us2mr", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                       "--weights", str(generator), "--refine", str(tmp_path / "ref" / "refiner")]) == 0
    out = nib.load(tmp_path / "out" / f"{case.name}-t2w.nii.gz").get_fdata()
    assert np.isfinite(out).all() and (out[case.images["us"] == 0] == 0).all()

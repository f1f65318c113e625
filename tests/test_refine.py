"""2D + 3D refinement: the sliding-window refine hook, which refiner a run uses, refiner training on the real case
(cropped) through `python -m train`, and inference with it through `python -m infer`."""
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from infer.cli import main as infer_main
from infer.engine.slices import EngineSettings
from infer.engine.intensity import background_vote
from infer.engine.refine import REFINER_FOLDER, SlidingWindowRefiner, load_refiner, refiner_path
from conventions.normalization import ZScoreNorm
from conventions.tasks import BRASYN
from infer.engine.patches import WindowSettings
from models.checkpoint import CheckpointMeta, load_model, save_checkpoint
from models.generator import GeneratorConfig, HFGANGenerator
from models.refiner import Refiner3D, RefinerConfig
from train.__main__ import main as train_main
from train.config import VolumeConfig, load_config
from train.data.volumes import VolumeCase
from train.volumetric import BrainL1SSIMLoss, PatchSampler, ssim3d_map

CASE = "BraTS-GLI-00000-000"
CROP = (slice(100, 164), slice(20, 84), slice(50, 82))
"""64 x 64 x 32 voxels of the real case: tumour, healthy brain and background."""
CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
FILL = -1.0


def crop_real_case(source: Path, root: Path, modalities=BRASYN.modalities) -> Path:
    """`CROP` of the real case's modalities (and segmentation) as a BraTS-layout case under `root`."""
    folder = root / CASE
    folder.mkdir(parents=True)
    for key in (*modalities, "seg"):
        image = nib.load(source / CASE / f"{CASE}-{key}.nii.gz")
        nib.save(image.slicer[CROP], folder / f"{CASE}-{key}.nii.gz")
    return folder


def settings(norms=BRASYN.normalization) -> EngineSettings:
    return EngineSettings(modalities=BRASYN.modalities, normalization=norms, views=("axial",), image_size=64)


def refiner_meta(norms=BRASYN.normalization, **provenance) -> CheckpointMeta:
    return CheckpointMeta(kind="refiner", task="brasyn", modalities=BRASYN.modalities, normalization=dict(norms),
                          provenance=provenance)


def random_case(shape=(37, 29, 23), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A normalised synthesis and inputs (target t2f missing) with a background margin around the signal."""
    rng = np.random.default_rng(seed)
    inputs = np.full((4, *shape), FILL, dtype=np.float32)
    inputs[:, 3:-4, 2:-3, 5:] = rng.normal(size=(4, shape[0] - 7, shape[1] - 5, shape[2] - 5))
    inputs[2] = FILL
    return rng.normal(size=shape).astype(np.float32), inputs


def test_a_zero_correction_returns_the_synthesis_exactly():
    torch.manual_seed(0)
    refiner = SlidingWindowRefiner(Refiner3D(RefinerConfig(width=8, n_blocks=1)),
                                   WindowSettings((16, 16, 16), overlap=0.5), FILL)
    synthesis, inputs = random_case()
    np.testing.assert_array_equal(refiner(synthesis, inputs, 2), synthesis)


def test_a_constant_correction_is_added_inside_the_signal_box_only():
    model = Refiner3D(RefinerConfig(width=8, n_blocks=1))
    torch.nn.init.constant_(model.out_conv.bias, 0.5)
    refiner = SlidingWindowRefiner(model, WindowSettings((16, 16, 16), overlap=0.5), FILL)
    synthesis, inputs = random_case()
    refined = refiner(synthesis, inputs, 2)
    box = (slice(3, -4), slice(2, -3), slice(5, None))
    np.testing.assert_allclose(refined[box], synthesis[box] + 0.5, atol=1e-5)
    outside = np.ones(synthesis.shape, dtype=bool)
    outside[box] = False
    np.testing.assert_array_equal(refined[outside], synthesis[outside])


def test_which_refiner_a_run_uses(tmp_path):
    generator = tmp_path / "generator"
    generator.mkdir()
    assert refiner_path(None, generator) is None
    save_checkpoint(Refiner3D(), generator / REFINER_FOLDER, refiner_meta())
    assert refiner_path(None, generator) == generator / REFINER_FOLDER
    assert refiner_path("other", generator) == Path("other")
    assert refiner_path("none", generator) is None


def test_a_refiner_for_other_statistics_is_refused(tmp_path):
    other = {**BRASYN.normalization, "t1c": ZScoreNorm(clip_max=1.0, mean=0.0, std=1.0)}
    save_checkpoint(Refiner3D(), tmp_path / "r", refiner_meta(other, sliding_window={"roi_size": [8, 8, 8]}))
    with pytest.raises(ValueError, match="other intensity statistics for t1c"):
        load_refiner(tmp_path / "r", settings())
    assert load_refiner(tmp_path / "r", settings(other)).window.roi_size == (8, 8, 8)


def test_the_3d_ssim_loss_map_agrees_with_the_evaluation_ssim():
    from infer.evaluate.metrics import ssim_map

    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(2, 20, 18, 16)).astype(np.float32)
    ours = ssim3d_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], data_range=1.0)
    np.testing.assert_allclose(ours[0, 0].numpy(), ssim_map(a, b, data_range=1.0).numpy(), atol=1e-5)


def test_shipped_volumetric_configs_load():
    refiner = load_config(CONFIGS / "refiner.yaml", schema=VolumeConfig)
    full3d = load_config(CONFIGS / "full3d.yaml", schema=VolumeConfig)
    assert sum(p.numel() for p in Refiner3D(RefinerConfig(**refiner.model.refiner)).parameters()) < 200_000
    assert full3d.patch.size == refiner.patch.size == [64, 64, 64]


def save_generator(path: Path, seed: int) -> Path:
    """A tiny random 2D generator for 64 x 64 slices saved as a checkpoint."""
    torch.manual_seed(seed)
    generator = HFGANGenerator(GeneratorConfig(image_size=64, dim=4, norm_groups=4, dim_mults=(1, 1, 1, 1, 1),
                                               n_layers=1, num_heads=2))
    meta = CheckpointMeta(kind="generator", task="brasyn", modalities=BRASYN.modalities,
                          normalization=dict(BRASYN.normalization))
    return save_checkpoint(generator, path, meta)


@pytest.fixture(scope="module")
def trained(brats_data, tmp_path_factory):
    """A tiny 2D generator for 64 x 64 slices, and a refiner trained on its cached volumes of the cropped case."""
    root = tmp_path_factory.mktemp("refine")
    crop_real_case(brats_data, root / "data")
    save_generator(root / "generator", seed=0)
    args = ["--config", str(CONFIGS / "refiner.yaml"), f"--data.roots=[{root / 'data'}]",
            f"--model.generator={root / 'generator'}", f"--data.cache_dir={root / 'cache'}",
            f"--run.output={root / 'run'}", "--run.device=cpu", "--run.progress=false", "--patch.size=[24,24,24]",
            "--model.refiner={width: 8, n_blocks: 1}", "--train.steps=40", "--optim.lr=0.01"]
    assert train_main(["refiner", *args]) == 0
    return root


def test_the_refiner_learns_on_the_real_case(trained):
    run = trained / "run"
    assert len((run / "log.csv").read_text().splitlines()) == 1 + 40
    refiner = load_model(run / "refiner", kind="refiner")
    window = refiner.meta.provenance["sliding_window"]
    assert window["roi_size"] == [24, 24, 24] and window["mode"] == "gaussian"
    cache = trained / "cache" / CASE
    case = VolumeCase(CASE, np.load(cache / "inputs.npy"),
                      {m: np.load(cache / f"synthesis-{m}.npy") for m in BRASYN.modalities})
    batch = PatchSampler([case], BRASYN.modalities, BRASYN.modalities, [24, 24, 24], FILL, seed=123,
                         with_synthesis=True).sample(8)
    loss = BrainL1SSIMLoss(1.0, 1.0)
    with torch.no_grad():
        before, _ = loss(batch.synthesis, batch.reference, batch.brain)  # an untrained refiner is the identity
        after, _ = loss(refiner(batch.synthesis, batch.inputs, batch.target), batch.reference, batch.brain)
    assert float(after) < 0.9 * float(before)


def test_a_cache_of_another_generator_is_refused(trained, capsys):
    other = save_generator(trained / "other-generator", seed=1)
    args = ["--config", str(CONFIGS / "refiner.yaml"), f"--data.roots=[{trained / 'data'}]",
            f"--model.generator={other}", f"--data.cache_dir={trained / 'cache'}", "--run.device=cpu"]
    assert train_main(["cache-volumes", *args]) == 2
    assert "holds another generator's volumes" in capsys.readouterr().err


def test_inference_refines_with_the_flag_or_the_bundled_refiner(trained, tmp_path):
    inputs = tmp_path / "in" / CASE
    inputs.mkdir(parents=True)
    for modality in ("t1c", "t1n", "t2w"):
        (inputs / f"{CASE}-{modality}.nii.gz").symlink_to(trained / "data" / CASE / f"{CASE}-{modality}.nii.gz")
    generator = tmp_path / "generator"
    shutil.copytree(trained / "generator", generator)

    def synthesise(name: str, *extra: str) -> np.ndarray:
        assert infer_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / name), "--weights",
                           str(generator), "--device", "cpu", *extra]) == 0
        return nib.load(tmp_path / name / f"{CASE}-t2f.nii.gz").get_fdata(dtype=np.float32)

    plain = synthesise("plain")
    flagged = synthesise("flag", "--refine", str(trained / "run" / "refiner"))
    shutil.copytree(trained / "run" / "refiner", generator / REFINER_FOLDER)
    bundled = synthesise("bundled")
    np.testing.assert_array_equal(bundled, flagged)
    np.testing.assert_array_equal(synthesise("off", "--refine", "none"), plain)
    background = background_vote([nib.load(p).get_fdata() > 0 for p in inputs.iterdir()])
    assert background.any() and np.abs(flagged - plain)[~background].mean() > 1.0
    np.testing.assert_array_equal(flagged[background], 0)

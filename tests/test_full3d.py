"""The regimes beyond 2D end to end on the real case: the full-3D patch generator (trained through
`python -m train full3d`, run through `python -m infer`) and a 2.5D slice generator through `python -m infer`."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from infer.cli import main as infer_main
from infer.engine.intensity import background_vote
from conventions.tasks import BRASYN
from models.checkpoint import CheckpointMeta, load_model, save_checkpoint
from models.generator import GeneratorConfig, HFGANGenerator
from models.generator3d import Generator3D, Generator3DConfig
from train.__main__ import main as train_main

CASE = "BraTS-GLI-00000-000"
CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
TINY_FEATURES = "[4, 4, 8, 8, 16, 4]"


def test_the_3d_generator_ignores_what_missing_channels_hold():
    torch.manual_seed(0)
    model = Generator3D(Generator3DConfig(features=(4, 4, 8, 8, 16, 4))).eval()
    x = torch.randn(2, 4, 16, 16, 16)
    available = torch.tensor([[True, True, False, True], [False, True, True, True]])
    target = torch.tensor([2, 0])
    out = model(x, available, target)
    assert out.shape == (2, 1, 16, 16, 16)
    scrambled = x.clone()
    scrambled[0, 2], scrambled[1, 0] = 5.0, -7.0
    torch.testing.assert_close(model(scrambled, available, target), out)
    assert not torch.allclose(model(x, available, torch.tensor([1, 0])), out)


def infer_real_case(brats_data: Path, root: Path, weights: Path, missing: str, *extra: str) -> Path:
    """`python -m infer` on the real case without `missing`; returns the output file."""
    case_dir = root / "in" / CASE
    case_dir.mkdir(parents=True)
    for modality in BRASYN.modalities:
        if modality != missing:
            (case_dir / f"{CASE}-{modality}.nii.gz").symlink_to(brats_data / CASE / f"{CASE}-{modality}.nii.gz")
    assert infer_main(["--input", str(root / "in"), "--output", str(root / "out"), "--weights", str(weights),
                       "--device", "cpu", *extra]) == 0
    return root / "out" / f"{CASE}-{missing}.nii.gz"


def check_output(path: Path, brats_data: Path, missing: str) -> None:
    """Real-case geometry, finite non-negative values, background where the inputs' vote says so."""
    inputs = [nib.load(brats_data / CASE / f"{CASE}-{m}.nii.gz") for m in BRASYN.modalities if m != missing]
    output = nib.load(path)
    assert output.shape == inputs[0].shape == (240, 240, 155)
    np.testing.assert_array_equal(output.affine, inputs[0].affine)
    data = output.get_fdata(dtype=np.float32)
    assert np.isfinite(data).all() and (data >= 0).all()
    background = background_vote([np.asarray(image.dataobj) > 0 for image in inputs])
    assert (data[background] == 0).all() and (data[~background] > 0).mean() > 0.5


@pytest.fixture(scope="module")
def full3d_run(brats_data, tmp_path_factory) -> Path:
    """A tiny full-3D generator trained for a few steps on 32^3 patches of the real case."""
    root = tmp_path_factory.mktemp("full3d")
    (root / "data").mkdir()
    (root / "data" / CASE).symlink_to(brats_data / CASE)
    args = ["--config", str(CONFIGS / "full3d.yaml"), f"--data.roots=[{root / 'data'}]", "--data.val_fraction=0",
            f"--data.cache_dir={root / 'cache'}", f"--run.output={root / 'run'}", "--run.device=cpu",
            "--run.progress=false", "--patch.size=[32,32,32]", "--patch.window_batch=4", "--train.steps=3",
            f"--model.generator3d={{features: {TINY_FEATURES}, norm_groups: 4}}"]
    assert train_main(["fit", *args]) == 0  # full3d.yaml names its family
    return root / "run"


@pytest.mark.parametrize("setting, message", [
    ("--patch.size=[24,32,32]", "multiple of 16"),
    ("--patch.overlap=1.0", "overlap must be in [0, 1)"),
    ("--model.generator3d={features: [4, 4, 8]}", "six widths"),
])
def test_bad_full3d_settings_stop_before_any_work(setting, message, tmp_path, capsys):
    args = [f"--data.roots=[{tmp_path}]", f"--run.output={tmp_path / 'run'}", "--patch.size=[32,32,32]", setting]
    assert train_main(["full3d", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_full3d_training_writes_a_generator3d_checkpoint(full3d_run):
    assert len((full3d_run / "log.csv").read_text().splitlines()) == 1 + 3
    model = load_model(full3d_run / "generator3d", kind="generator3d")
    assert model.config.features == (4, 4, 8, 8, 16, 4)
    assert model.meta.provenance["sliding_window"]["roi_size"] == [32, 32, 32]
    assert model.meta.provenance["train_cases"] == [CASE]


def test_full3d_runs_through_python_m_infer_on_the_real_case(full3d_run, brats_data, tmp_path):
    output = infer_real_case(brats_data, tmp_path, full3d_run / "generator3d", "t2f")
    check_output(output, brats_data, "t2f")


def test_full3d_refuses_slice_options(full3d_run, brats_data, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert infer_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights",
                       str(full3d_run / "generator3d"), "--device", "cpu", "--refine", "somewhere"]) == 2
    assert "apply to slice generators" in capsys.readouterr().err


def test_a_25d_generator_runs_through_python_m_infer_on_the_real_case(brats_data, tmp_path):
    torch.manual_seed(0)
    generator = HFGANGenerator(GeneratorConfig(image_size=240, dim=4, norm_groups=4, dim_mults=(1, 1, 1, 1, 1),
                                               n_layers=1, num_heads=2, context_slices=1))
    meta = CheckpointMeta(kind="generator", task="brasyn", modalities=BRASYN.modalities,
                          normalization=dict(BRASYN.normalization))
    weights = save_checkpoint(generator, tmp_path / "k1", meta)
    output = infer_real_case(brats_data, tmp_path, weights, "t1c")
    check_output(output, brats_data, "t1c")

"""What the CycleGAN, CUT and SynDiff tests share: ultrasound phantom cases, a few training steps of a family
through `python -m train fit` in a regime, and `python -m infer` on a held-out phantom."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from infer.cli import main as infer_main
from infer.phantoms.brain import SampleCase, write_case
from infer.phantoms.ultrasound import make_us_case
from models.checkpoint import load_model
from train.__main__ import main as train_main
from train.curves import read_csv

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
SHAPE = (64, 64, 32)
HELD_OUT = "US-SYN-00099-000"
REGIMES: tuple[str, ...] = ("2d", "2.5d", "refine", "3d")
"""2D slices, 2.5D (neighbours as channels), 2D + the 3D refiner, full 3D on patches."""


def phantoms(root: Path) -> Path:
    """Two training phantoms (ultrasound, T2w, FLAIR) under `root/data`."""
    for seed in (20, 21):
        write_case(make_us_case(f"US-SYN-{seed:05d}-000", seed, SHAPE), root / "data")
    return root / "data"


def fit(family: str, data: Path, out: Path, steps: int, regime: str, *overrides: str) -> Path:
    """Train `family` from its CPU config on 64x64 slices (or 32^3 patches in 3D) for `steps` steps; returns
    the generator checkpoint."""
    settings = [f"data.roots=[{data}]", f"run.output={out}", "data.slice_size=64", "data.min_brain_pixels=100",
                f"train.steps={steps}", "train.batch_size=2", "run.progress=false", *overrides]
    if regime == "2.5d":
        settings.append("model.generator.context_slices=1")
    if regime == "3d":
        settings += ["model.spatial_dims=3", "patch.size=[32,32,32]", "patch.window_batch=4",
                     "train.batch_size=1"]
    assert train_main(["fit", "--config", str(CONFIGS / f"{family}-cpu.yaml"),
                       *[x for s in settings for x in ("--set", s)]]) == 0
    return out / "generator"


def fit_refiner(data: Path, generator: Path, out: Path) -> Path:
    """A few steps of the 3D refiner on the generator's cached volumes; returns the refiner checkpoint."""
    args = ["--config", str(CONFIGS / "refiner.yaml"), f"--data.roots=[{data}]", "--data.task=us2mr",
            f"--model.generator={generator}", f"--data.cache_dir={out / 'cache'}", f"--run.output={out}",
            "--run.device=cpu", "--run.progress=false", "--patch.size=[24,24,24]",
            "--model.refiner={width: 8, n_blocks: 1}", "--train.steps=3"]
    assert train_main(["refiner", *args]) == 0
    return out / "refiner"


def losses(run: Path, name: str) -> np.ndarray:
    return np.array([float(row[name]) for row in read_csv(run / "log.csv")])


def infer_held_out(weights: Path, root: Path, *extra: str) -> np.ndarray:
    """`python -m infer` (us2mr) on a held-out phantom's ultrasound; checks the output's grid, finiteness and
    background outside the ultrasound's field, and returns it."""
    case = make_us_case(HELD_OUT, 99, SHAPE)
    write_case(SampleCase(case.name, {"us": case.images["us"]}, None, case.affine), root / "in")
    assert infer_main(["--task", "us2mr", "--input", str(root / "in"), "--output", str(root / "out"),
                       "--weights", str(weights), "--device", "cpu", *extra]) == 0
    image = nib.load(root / "out" / f"{HELD_OUT}-t2w.nii.gz")
    out = image.get_fdata(dtype=np.float32)
    assert out.shape == SHAPE and np.allclose(image.affine, case.affine) and np.isfinite(out).all()
    assert (out[case.images["us"] == 0] == 0).all() and (out > 0).any()
    return out


def run_regime(family: str, regime: str, root: Path, data: Path, *three_d: str) -> np.ndarray:
    """Train `family` for two steps in `regime` (with the overrides `three_d` in 3D) and synthesise the
    held-out phantom with it."""
    overrides = three_d if regime == "3d" else ()
    generator = fit(family, data, root / "run", 2, "2d" if regime == "refine" else regime, *overrides)
    model = load_model(generator)
    assert model.config.spatial_dims == (3 if regime == "3d" else 2)
    assert model.config.context_slices == (1 if regime == "2.5d" else 0)
    extra = ("--refine", str(fit_refiner(data, generator, root / "refiner"))) if regime == "refine" else ()
    return infer_held_out(generator, root, *extra)

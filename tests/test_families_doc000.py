"""Document 000's Pix2Pix (attention residual U-Net), SwinPix2Pix and ResViT families: a few training steps with
`python -m train fit` and an inference with `python -m infer` in each of the four regimes (2D, 2.5D, 2D + 3D
refinement, full 3D) on small generated ultrasound phantoms (us2mr: ultrasound -> T2w), tiny widths."""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from infer.cli import main as infer_main
from infer.phantoms.brain import SampleCase, write_case
from infer.phantoms.ultrasound import make_us_case
from models.attention_unet import AttentionPix2PixGenerator, AttentionUNetConfig
from models.checkpoint import load_model, read_config
from models.resvit import ResViTConfig, ResViTGenerator
from models.swin_pix2pix import SwinPix2PixConfig, SwinPix2PixGenerator
from train.__main__ import main as train_main
from train.curves import read_csv

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
SHAPE = (64, 64, 32)
TINY = {
    "attn_pix2pix": ("attn-pix2pix-cpu.yaml", "{channels: [4, 8, 8]}"),
    "swin_pix2pix": ("swin-pix2pix-cpu.yaml", "{embed_dim: 6, num_heads: [2, 2, 3], channels: [8]}"),
    "resvit": ("resvit-cpu.yaml", "{base: 4, n_blocks: 3, transformer_blocks: [1], token_patch: 2, hidden: 16, "
                                  "num_heads: 2}"),
}
"""Each family's CPU config and the tiny generator sizes the tests train."""


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """Two training cases, and an input folder with one more case's ultrasound only (and that ultrasound)."""
    root = tmp_path_factory.mktemp("doc000")
    for seed in (30, 31):
        write_case(make_us_case(f"US-SYN-{seed:05d}-000", seed, SHAPE), root / "data")
    case = make_us_case("US-SYN-00098-000", 98, SHAPE)
    write_case(SampleCase(case.name, {"us": case.images["us"]}, None, case.affine), root / "in")
    return root / "data", root / "in", case.images["us"]


def fit(family: str, data: Path, out: Path, *overrides: str) -> Path:
    """Train `family` tiny for a few steps on `data` into `out`; returns the generator checkpoint."""
    config, generator = TINY[family]
    settings = [f"data.roots=[{data}]", f"run.output={out}", "data.slice_size=64", "data.min_brain_pixels=100",
                f"model.generator={generator}", "model.discriminator={base: 4, n_layers: 2}", "train.steps=3",
                "train.batch_size=2", "loss.r1=1.0", "loss.r1_every=2", "run.progress=false", *overrides]
    assert train_main(["fit", "--config", str(CONFIGS / config), *[x for s in settings for x in ("--set", s)]]) == 0
    assert read_config(out / "generator")["family"] == family
    return out / "generator"


def infer(inputs: Path, out: Path, weights: Path, ultrasound: np.ndarray, *extra: str) -> np.ndarray:
    """Run `python -m infer` on the us2mr input case; the T2w it writes (checked finite, background outside
    the ultrasound)."""
    assert infer_main(["--task", "us2mr", "--input", str(inputs), "--output", str(out), "--weights", str(weights),
                       *extra]) == 0
    (written,) = out.glob("*-t2w.nii.gz")
    t2w = np.asanyarray(nib.load(written).dataobj)
    assert t2w.shape == SHAPE and np.isfinite(t2w).all() and (t2w[ultrasound == 0] == 0).all()
    assert t2w.max() > 0
    return t2w


@pytest.fixture(scope="module")
def runs_2d(phantoms, tmp_path_factory) -> dict[str, Path]:
    """Each family's 2D run (3 steps), shared by the 2D and the refinement tests."""
    data, _, _ = phantoms
    return {family: fit(family, data, tmp_path_factory.mktemp(family)) for family in TINY}


@pytest.mark.parametrize("family", sorted(TINY))
def test_2d_trains_with_every_term_and_runs(family, runs_2d, phantoms, tmp_path):
    _, inputs, ultrasound = phantoms
    generator = runs_2d[family]
    rows = read_csv(generator.parent / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("l1", "adversarial", "feature_matching", "d_total"))
    assert [math.isnan(float(r["r1"])) for r in rows] == [False, True, False]  # lazy R1 every 2 steps
    assert (generator.parent / f"{family}_discriminator" / "config.json").is_file()
    assert load_model(generator).config.spatial_dims == 2
    infer(inputs, tmp_path / "out", generator, ultrasound)


@pytest.mark.parametrize("family", sorted(TINY))
def test_25d_takes_neighbouring_slices_as_channels(family, phantoms, tmp_path):
    data, inputs, ultrasound = phantoms
    generator = fit(family, data, tmp_path / "run", "model.generator.context_slices=1", "train.steps=2")
    model = load_model(generator)
    assert model.config.context_slices == 1 and model.config.in_channels == 3 * 3
    infer(inputs, tmp_path / "out", generator, ultrasound)


@pytest.mark.parametrize("family", sorted(TINY))
def test_2d_with_3d_refinement(family, runs_2d, phantoms, tmp_path):
    data, inputs, ultrasound = phantoms
    refiner = ["--config", str(CONFIGS / "refiner.yaml"), f"--data.roots=[{data}]", "--data.task=us2mr",
               f"--model.generator={runs_2d[family]}", f"--data.cache_dir={tmp_path / 'cache'}",
               f"--run.output={tmp_path / 'ref'}", "--run.device=cpu", "--run.progress=false",
               "--patch.size=[24,24,24]", "--model.refiner={width: 8, n_blocks: 1}", "--train.steps=2"]
    assert train_main(["refiner", *refiner]) == 0
    plain = infer(inputs, tmp_path / "plain", runs_2d[family], ultrasound, "--refine", "none")
    refined = infer(inputs, tmp_path / "out", runs_2d[family], ultrasound,
                    "--refine", str(tmp_path / "ref" / "refiner"))
    assert not np.array_equal(plain, refined)  # the trained refiner changed the synthesis


@pytest.mark.parametrize("family", sorted(TINY))
def test_full_3d_is_the_same_network_on_patches(family, phantoms, tmp_path):
    data, inputs, ultrasound = phantoms
    generator = fit(family, data, tmp_path / "run", "model.spatial_dims=3", "patch.size=[32,32,32]",
                    "model.discriminator={base: 4, n_layers: 2, num_scales: 1}", "train.batch_size=1",
                    "train.steps=2")
    assert load_model(generator).config.spatial_dims == 3
    assert read_config(generator)["provenance"]["sliding_window"]["roi_size"] == [32, 32, 32]
    infer(inputs, tmp_path / "out", generator, ultrasound)


def test_the_written_generator_is_the_ema_of_the_trained_one(phantoms, tmp_path):
    """Adam moves every trained weight by about the learning rate per step (2e-4 at the end of the warm-up
    here); the EMA at decay 0.999 moves a thousandth of that, so the written weights are close to the
    initial ones, yet not equal to them."""
    data, _, _ = phantoms
    model = load_model(fit("attn_pix2pix", data, tmp_path / "run", "train.ema_decay=0.999"))
    torch.manual_seed(0)  # the run's seed: the trainer builds the generator first
    initial = dict(AttentionPix2PixGenerator(model.config).named_parameters())
    moved = max((p - initial[name]).abs().max().item() for name, p in model.named_parameters())
    assert 0 < moved < 2e-5


def test_resvit_two_phases_switch_the_transformer_on(phantoms, tmp_path):
    data, _, _ = phantoms
    generator = fit("resvit", data, tmp_path / "run", "train.steps=4", "train.cnn_fraction=0.5")
    assert [float(r["phase"]) for r in read_csv(generator.parent / "log.csv")] == [1.0, 1.0, 2.0, 2.0]
    assert all(bool(block.enabled) for block in load_model(generator).art_blocks())  # saved with the weights
    assert train_main(["fit", "--config", str(CONFIGS / "resvit-cpu.yaml"), "--set", f"data.roots=[{data}]",
                       "--set", f"run.output={tmp_path / 'bad'}", "--set", "train.cnn_fraction=1.5"]) == 2


def test_resvit_branch_only_counts_in_phase_2():
    model = ResViTGenerator(ResViTConfig(num_modalities=1, image_size=16, base=4, n_blocks=3, transformer_blocks=(1,),
                                         token_patch=2, hidden=16, num_heads=2)).eval()
    x = torch.randn(1, 1, 16, 16)
    model.set_transformer(False)
    before = model(x)
    with torch.no_grad():
        model.art_blocks()[0].branch.out.weight.add_(1.0)
    assert torch.equal(model(x), before)  # phase 1: the branch is not run
    model.set_transformer(True)
    assert not torch.allclose(model(x), before)


@pytest.mark.parametrize("network, config", [
    (AttentionPix2PixGenerator, AttentionUNetConfig(num_modalities=2, image_size=32, channels=(4, 8), spatial_dims=3)),
    (SwinPix2PixGenerator, SwinPix2PixConfig(num_modalities=2, image_size=32, embed_dim=6, num_heads=(2, 2, 3),
                                             channels=(8,), spatial_dims=3)),
    (ResViTGenerator, ResViTConfig(num_modalities=2, image_size=16, base=4, n_blocks=2, transformer_blocks=(0,),
                                   token_patch=2, hidden=8, num_heads=2, spatial_dims=3)),
])
def test_generators_take_the_patch_engines_call_on_non_cubic_patches(network, config):
    model = network(config).eval()
    x = torch.randn(1, 2, 64, 32, 32)
    out = model(x, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, dtype=torch.long))
    assert out.shape == (1, 1, 64, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("config, message", [
    (lambda: AttentionUNetConfig(image_size=48), "divisible by 32"),
    (lambda: AttentionUNetConfig(spatial_dims=3, context_slices=1), "no context slices"),
    (lambda: SwinPix2PixConfig(embed_dim=10), "not divisible by 6 heads"),
    (lambda: ResViTConfig(transformer_blocks=(9,)), "distinct positions"),
])
def test_bad_sizes_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        config()

"""Mask-guided latent diffusion (document 001): guidance, training steps, seeded sampling, the augment command
and the evaluation helpers, on tiny networks."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import LatentDiffusionInferer

from conventions.tasks import BRASYN
from infer.engine.cases import read_split
from infer.augment import LatentModel, generate, load_generator, main as augment_main, pair_seed, read_pairs
from infer.evaluate.generative import (NOT_COMPUTED, compare_size_shape, energy_spectral_distance, image_quality,
                                       load_feature_network, main as generative_main,
                                       morphological_fidelity, real_pairs, segmenter_masks)
from models.checkpoint import CheckpointError, CheckpointMeta, load_model, save_checkpoint
from models.ldm import (SIZE_KEY, AutoencoderConfig, AutoencoderDiscriminator, AutoencoderDiscriminatorConfig,
                        DenoiserConfig, KLAutoencoder, LatentDenoiser, guided_noise, guided_prediction, monai_cfg,
                        null_condition)
from train.data.cache import prepare_case
from train.data.cases import find_cases
from train.config import config_data, from_dict
from train.ldm_experiment import Experiment, main as experiment_main, synthetic_pairs
from train.families.ldm import (AutoencoderLosses, LDMData, LDMLoss, LDMTrainingConfig, augment_batch, autoencoder_step,
                                build_autoencoder, build_denoiser, diffusion_step, domain_inputs, fit_ldm,
                                slice_pairs)

SIZE = 16
REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "weights" / "ldm"
SPLIT = REPO / "train" / "splits" / "brats18.json"
TINY_AE = dict(channels=(8, 16), latent_channels=2, res_blocks=1, norm_groups=4)
TINY_DENOISER = dict(channels=(8, 16), attention=(False, True), res_blocks=1, head_channels=8, norm_groups=4,
                     embedding_channels=8)


def tiny_autoencoder(in_channels: int = 1) -> KLAutoencoder:
    return KLAutoencoder(AutoencoderConfig(in_channels=in_channels, **TINY_AE))


def tiny_denoiser(conditional: bool) -> LatentDenoiser:
    """A tiny denoiser whose zero-initialised layers (MONAI's output convolution) are made random, so that an
    untrained one depends on its inputs."""
    model = LatentDenoiser(DenoiserConfig(latent_channels=2, condition_channels=4 if conditional else 0,
                                          mask_downsampling=2, **TINY_DENOISER))
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.1)
    return model


def discs(n: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) {0, 1} discs of random centres and radii."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.12, size * 0.3)
        out.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    return torch.from_numpy(np.stack(out).astype(np.float32))[:, None]


def tiny_bundle(folder: Path, seed: int = 0) -> Path:
    """A two-step and one-step bundle of untrained tiny networks (checkpoints as the trainer writes them)."""
    torch.manual_seed(seed)
    norm = {"t2f": BRASYN.case_normalization["t2f"]}
    for name, channels, conditional in (("mask", 1, False), ("image", 1, True), ("joint", 2, False)):
        meta = CheckpointMeta(kind="ldm_autoencoder", task="brasyn", modalities=("t2f",), normalization=norm,
                              provenance={SIZE_KEY: SIZE})
        save_checkpoint(tiny_autoencoder(channels), folder / f"{name}-autoencoder", meta)
        meta.kind = "ldm_denoiser"
        save_checkpoint(tiny_denoiser(conditional), folder / name, meta)
    return folder


def test_guidance_formula_and_monai_scale_on_known_tensors():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(guided_noise(cond, uncond, 3.0), torch.tensor([5.0, -7.0]))  # 4 * 2 - 3 * 1, 4 * -1 - 3
    assert torch.equal(guided_noise(cond, uncond, 0.0), cond)
    # MONAI's samplers combine uncond + cfg (cond - uncond)
    assert torch.allclose(uncond + monai_cfg(3.0) * (cond - uncond), guided_noise(cond, uncond, 3.0))


def test_omega_zero_is_the_conditional_prediction_and_the_null_mask_is_the_unconditional_one():
    torch.manual_seed(0)
    model = tiny_denoiser(conditional=True).eval()
    z, t, mask = torch.randn(2, 2, SIZE // 2, SIZE // 2), torch.tensor([10, 700]), discs(2)
    with torch.no_grad():
        conditional = model(z, t, mask)
        assert torch.equal(guided_prediction(model, z, t, mask, 0.0), conditional)
        unconditional = model(z, t, null_condition(mask))
        assert not torch.allclose(conditional, unconditional)
        assert torch.allclose(guided_prediction(model, z, t, mask, 5.0), 6 * conditional - 5 * unconditional,
                              atol=1e-5)


def test_monai_guided_sampling_is_eq_3():
    torch.manual_seed(0)
    ae, model = tiny_autoencoder().eval(), tiny_denoiser(conditional=True).eval()
    noise, mask, omega = torch.randn(2, 2, SIZE // 2, SIZE // 2), discs(2), 3.0
    scheduler = model.sampling_scheduler(4)
    with torch.no_grad():
        latent = noise
        for t in scheduler.timesteps:
            latent, _ = scheduler.step(guided_prediction(model, latent, t.reshape(1), mask, omega), t, latent)
        expected = ae.decode_stage_2_outputs(latent)
    model.meta = CheckpointMeta(kind="ldm_denoiser", task="brasyn", modalities=("t2f",),
                                provenance={SIZE_KEY: SIZE})
    got = LatentModel(model, ae).sample(noise, 4, mask, omega)
    assert torch.allclose(got, expected, atol=1e-5)


def _fixed_batch(domain: str) -> tuple[torch.Tensor, torch.Tensor]:
    masks = discs(4)
    images = torch.where(masks > 0, 0.8, -0.2) + 0.05 * torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator()
                                                                    .manual_seed(1))
    return domain_inputs(domain, images, masks), masks


def test_autoencoder_steps_move_the_loss():
    torch.manual_seed(0)
    x, _ = _fixed_batch("image")
    ae = tiny_autoencoder()
    disc = AutoencoderDiscriminator(AutoencoderDiscriminatorConfig(channels=8, layers=2))
    opt_g, opt_d = (torch.optim.AdamW(n.parameters(), lr=3e-3) for n in (ae, disc))
    losses = AutoencoderLosses(LDMLoss(adversarial=0.1), None)
    logs = [autoencoder_step(ae, disc, opt_g, opt_d, x, losses, adversarial=True) for _ in range(12)]
    assert logs[-1]["mse"] < 0.7 * logs[0]["mse"]
    assert all(np.isfinite(log["d"]) and np.isfinite(log["adv"]) for log in logs)


@pytest.mark.parametrize("domain", ["mask", "image", "joint"])
def test_diffusion_steps_move_the_loss(domain):
    torch.manual_seed(0)
    x, masks = _fixed_batch(domain)
    ae = tiny_autoencoder(2 if domain == "joint" else 1).eval().requires_grad_(False)
    model = tiny_denoiser(conditional=domain == "image")
    inferer = LatentDiffusionInferer(model.training_scheduler(), scale_factor=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    condition = masks if domain == "image" else None
    # the same noise, timesteps and posterior sample every step: the loss of one batch must fall
    losses = []
    for _ in range(10):
        torch.manual_seed(5)
        losses.append(diffusion_step(model, ae, inferer, opt, x, condition, torch.Generator().manual_seed(3))["total"])
    assert losses[-1] < 0.8 * losses[0]


def test_sampling_is_reproducible_by_seed_whatever_the_batch(tmp_path):
    generator = load_generator(tiny_bundle(tmp_path / "bundle"), None, torch.device("cpu"))
    assert generator.mode == "two-step"
    seeds = [pair_seed(7, i) for i in range(3)]
    images, masks = generate(generator, seeds, 3, 3.0, torch.device("cpu"))
    again, again_masks = generate(generator, seeds, 3, 3.0, torch.device("cpu"))
    assert torch.equal(images, again) and torch.equal(masks, again_masks)
    alone, _ = generate(generator, seeds[1:2], 3, 3.0, torch.device("cpu"))
    assert torch.allclose(alone[0], images[1], atol=1e-5)
    other, _ = generate(generator, [pair_seed(8, 0)], 3, 3.0, torch.device("cpu"))
    assert not torch.allclose(other[0], images[0])
    one_step = load_generator(tmp_path / "bundle", "one-step", torch.device("cpu"))
    x, m = generate(one_step, seeds[:2], 3, 0.0, torch.device("cpu"))
    assert x.shape == m.shape == (2, 1, SIZE, SIZE) and set(m.unique().tolist()) <= {0.0, 1.0}


def test_augment_writes_valid_nifti_pairs_in_the_brats_layout(tmp_path, capsys):
    bundle = tiny_bundle(tmp_path / "bundle")
    args = ["--weights", str(bundle), "--count", "3", "--guidance", "5", "--seed", "11", "--steps", "3",
            "--batch-size", "2", "--device", "cpu"]
    assert augment_main([*args, "--output", str(tmp_path / "a")]) == 0
    assert augment_main([*args, "--output", str(tmp_path / "b")]) == 0
    record = json.loads((tmp_path / "a" / "augment.json").read_text())
    assert record["seed"] == 11 and record["guidance"] == 5.0 and record["steps"] == 3 and record["count"] == 3
    assert [c["seed"] for c in record["cases"]] == [pair_seed(11, i) for i in range(3)]
    cases = sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir())
    assert cases == ["BraTS-SYN-00000-000", "BraTS-SYN-00001-000", "BraTS-SYN-00002-000"]
    for case in cases:
        image = nib.load(tmp_path / "a" / case / f"{case}-t2f.nii.gz")
        seg = nib.load(tmp_path / "a" / case / f"{case}-seg.nii.gz")
        assert image.shape == seg.shape == (SIZE, SIZE, 1)
        np.testing.assert_allclose(image.header.get_zooms(), (240 / SIZE, 240 / SIZE, 1.0))
        data = image.get_fdata()
        assert np.isfinite(data).all() and data.min() >= 0
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
        same = nib.load(tmp_path / "b" / case / f"{case}-t2f.nii.gz").get_fdata()
        np.testing.assert_array_equal(data, same)
    images, masks = read_pairs(tmp_path / "a", 2)
    assert images.shape == masks.shape == (2, 1, SIZE, SIZE) and images.min() >= -1 and images.max() <= 1
    seg = np.asarray(nib.load(tmp_path / "a" / cases[1] / f"{cases[1]}-seg.nii.gz").dataobj)[..., 0]
    np.testing.assert_array_equal(masks[1, 0].numpy(), seg)
    assert augment_main([*args, "--output", str(tmp_path / "a")]) == 2  # never overwrites
    assert "holds synthetic pairs" in capsys.readouterr().err


class _Features(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def test_fid_and_kid_from_a_saved_feature_network_and_not_computed_without(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features.pt"
    torch.jit.script(_Features()).save(str(path))
    network = load_feature_network(path, torch.device("cpu"))
    real = torch.rand(40, 1, SIZE, SIZE) * 2 - 1
    similar = torch.rand(40, 1, SIZE, SIZE) * 2 - 1
    shifted = (real * 0.3 + 0.6).clamp(-1, 1)
    near = image_quality(real, similar, network, size=32)
    far = image_quality(real, shifted, network, size=32)
    assert 0 <= near["fid"] < far["fid"] and near["kid"] < far["kid"]
    assert image_quality(real, real, network, size=32)["fid"] == pytest.approx(0, abs=1e-3)
    missing = image_quality(real, similar, load_feature_network(tmp_path / "absent.pt", torch.device("cpu")))
    assert missing["fid"] == missing["kid"] == NOT_COMPUTED


def test_morphological_fidelity_against_the_shuffled_chance_level():
    masks = discs(6, size=32)
    perfect = morphological_fidelity(masks, masks, spacing=1.0)
    assert perfect["dice"] == 1.0 and perfect["hd95"] == 0.0
    assert perfect["chance_dice"] < 0.9 and perfect["chance_hd95"] > 0 and perfect["empty"] == 0
    with_empty = torch.cat([masks, torch.zeros_like(masks[:2])])
    scored = morphological_fidelity(with_empty, with_empty, spacing=1.0)
    assert scored == {**perfect, "empty": 2}  # empty-empty pairs do not count as perfect agreement
    assert "two non-empty" in morphological_fidelity(with_empty[-3:], with_empty[-3:])["note"]


class _SideProbe(torch.nn.Module):
    """A one-modality two-class 'segmenter' labelling positive pixels 1, recording the side it is run at."""

    def __init__(self, provenance: dict) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))
        self.meta = SimpleNamespace(modalities=("t2f",), normalization={}, provenance=provenance)
        self.sides: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sides.append(x.shape[-1])
        return torch.cat([torch.zeros_like(x), x * self.gain], 1)


def test_segmenter_masks_run_at_the_segmenters_trained_size():
    masks = discs(3, size=32)
    images = masks * 2 - 1
    small, whole = _SideProbe({SIZE_KEY: 48}), _SideProbe({})
    found = segmenter_masks(small, images, "t2f")
    assert small.sides == [48] and found.shape == masks.shape
    assert morphological_fidelity(masks, found)["dice"] > 0.95
    segmenter_masks(whole, images, "t2f")
    assert whole.sides == [240]
    with pytest.raises(CheckpointError, match="t2f"):
        segmenter_masks(small, images, "t1c")


def test_esd_grows_with_irregularity_and_size_shape_fit():
    size = 64
    yy, xx = np.mgrid[:size, :size] - size / 2
    angle, radius = np.arctan2(yy, xx), np.hypot(yy, xx)
    disc = radius <= 15
    star = radius <= 15 + 5 * np.cos(5 * angle)
    assert energy_spectral_distance(star) > 5 * energy_spectral_distance(disc)
    rng = np.random.default_rng(0)
    shapes = [radius <= r * (1 + a * np.cos(k * angle)) for r, a, k in
              zip(rng.uniform(5, 25, 40), rng.uniform(0, 0.3, 40), rng.integers(2, 7, 40))]
    result = compare_size_shape(shapes, shapes)
    assert result["slope_p"] == pytest.approx(1.0) and result["size"]["p"] == pytest.approx(1.0)
    assert np.isfinite(result["real_fit"]["beta1"]) and result["real_fit"]["n"] == 40
    assert "3 generated" in compare_size_shape(shapes, shapes[:2] + [disc] + [np.zeros_like(disc)] * 5)["note"]


def test_slices_of_a_real_case_and_their_augmentation(brats18_data):
    case = find_cases([brats18_data], BRASYN)[0]
    slabs = prepare_case(case, BRASYN.modalities, BRASYN.case_normalization, ["axial"])
    images, masks = slice_pairs(slabs, BRASYN.modalities.index("t2f"), "WT", 64, 58, -1.0)
    assert images.shape == masks.shape and images.shape[1:] == (1, 64, 64) and len(images) > 10
    assert images.min() >= -1 and images.max() <= 1 and set(masks.unique().tolist()) == {0.0, 1.0}
    x, m = augment_batch(images[:4], masks[:4], LDMData(), np.random.default_rng(0))
    assert x.shape == images[:4].shape and set(m.unique().tolist()) <= {0.0, 1.0}
    assert x.min() >= -1 and x.max() <= 1 and (x == -1).any()  # the background stays background


@pytest.mark.slow
def test_fit_every_stage_then_augment(brats18_data, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    cases = find_cases([brats18_data], BRASYN)[:3]
    for case in cases:
        (root / case.name).symlink_to(case.files["t2f"].parent)
    base = {"data": {"roots": [str(root)], "size": 32, "val_cases": [cases[2].name]},
            "train": {"batch_size": 2, "steps": 2},
            "model": {"autoencoder": {**TINY_AE, "channels": [8, 16]}, "discriminator": {"channels": 8, "layers": 2},
                      "denoiser": {**TINY_DENOISER, "channels": [8, 16], "attention": [False, True]}},
            "loss": {"perceptual": 0.0, "adversarial_start": 1},
            "run": {"output": str(tmp_path / "run"), "device": "cpu", "progress": False, "checkpoint_every": 1}}
    for stage in ("autoencoder", "diffusion"):
        for domain in ("mask", "image"):
            cfg = from_dict(LDMTrainingConfig, {**base, "data": {**base["data"], "domain": domain},
                                                "model": {**base["model"], "stage": stage}})
            fit_ldm(cfg, stop_after=1)
            fit_ldm(cfg, resume=True)
    bundle = tmp_path / "run" / "bundle"
    assert load_model(bundle / "image", kind="ldm_denoiser").config.condition_channels == 4
    assert float(load_model(bundle / "mask", kind="ldm_denoiser").scale_factor) != 1.0
    assert augment_main(["--weights", str(bundle), "--count", "2", "--steps", "2", "--output",
                         str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "out").glob("*/*-seg.nii.gz"))) == 2
    # the downstream experiment: too few synthetic pairs for R = 1 is an error; R = 0 trains and scores
    downstream = {**base, "model": {**base["model"], "stage": "downstream", "segmenter": {"filters": [8, 16, 32]}}}
    with pytest.raises(ValueError, match="pairs"):
        fit_ldm(from_dict(LDMTrainingConfig, {**downstream, "data": {**base["data"], "ratio": 1,
                                                                     "synthetic": str(tmp_path / "out")}}))
    fit_ldm(from_dict(LDMTrainingConfig, downstream))
    result = json.loads((tmp_path / "run" / "downstream-R0" / "validation.json").read_text())
    assert result["validation_cases"] == [cases[2].name] and 0 <= result["dice"] <= 1
    assert load_model(bundle / "segmenter-R0", kind="segmenter").config.in_channels == 1
    # the evaluation command with that segmenter: fidelity, its chance level and the size-shape comparison
    assert generative_main(["--weights", str(bundle), "--real", str(root), "--count", "2", "--steps", "2",
                            "--segmenter", str(bundle / "segmenter-R0"), "--output", str(tmp_path / "g.json")]) == 0
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["morphological_fidelity"]["pairs"] == 2 and report["image_quality"]["fid"] == NOT_COMPUTED
    assert report["real_reference"]["pairs"] > 2 and "2 generated" in report["size_shape"]["note"]


@pytest.mark.parametrize("domain", ["mask", "image", "joint"])
def test_the_cpu_configs_build_each_domains_networks(domain):
    configs = REPO / "train" / "configs"
    ae_cfg = from_dict(LDMTrainingConfig, config_data(configs / "ldm-autoencoder-cpu.yaml", [f"data.domain={domain}"]))
    ae, disc = build_autoencoder(ae_cfg)
    assert ae.config.in_channels == disc.config.in_channels == (2 if domain == "joint" else 1)
    assert ae_cfg.data.size // ae.config.downsampling == 16 and ae_cfg.loss.perceptual == 0
    ldm_cfg = from_dict(LDMTrainingConfig, config_data(configs / "ldm-diffusion-cpu.yaml", [f"data.domain={domain}"]))
    denoiser = build_denoiser(ldm_cfg, ae)
    assert denoiser.config.conditional == (domain == "image")
    assert (denoiser.config.beta_start, denoiser.config.beta_end, denoiser.config.timesteps) == (0.001, 0.02, 1000)
    assert ldm_cfg.loss.condition_dropout == 0.1


def test_experiment_refuses_mismatched_synthetic_pairs_and_a_missing_r0(tmp_path):
    argv = ["--output", str(tmp_path), "--ratios", "1", "2"]
    assert experiment_main(argv) == 2  # R = 0's segmenter judges the generated images
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "augment.json").write_text(json.dumps(
        {"mode": "two-step", "seed": 0, "steps": 50, "guidance": 5.0, "count": 10}))
    exp = Experiment(Path("a"), Path("d"), Path("s"), tmp_path, ("two-step",), (0, 1), 4, 50, 3.0, 0, 4, None, ())
    with pytest.raises(ValueError, match="other settings"):
        synthetic_pairs(exp, 5)
    assert synthetic_pairs(replace(exp, guidance=5.0), 10)["count"] == 10


@pytest.mark.slow
def test_experiment_runs_every_step_and_resumes_from_the_bundle(brats18_data, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    cases = find_cases([brats18_data], BRASYN)[:3]
    for case in cases:
        (root / case.name).symlink_to(case.files["t2f"].parent)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [c.name for c in cases[:2]], "validation": [cases[2].name]}))
    tiny = [f"data.roots=[{root}]", f"data.split={split}", f"data.cache_dir={tmp_path / 'cache'}", "data.size=32",
            "train.batch_size=2", "train.steps=2", "loss.adversarial_start=1", "run.progress=false",
            "run.device=cpu", "run.checkpoint_every=1", "model.autoencoder.channels=[8, 16]",
            "model.autoencoder.latent_channels=2", "model.autoencoder.norm_groups=4",
            "model.discriminator.channels=8", "model.denoiser.channels=[8, 16]",
            "model.denoiser.attention=[false, true]", "model.denoiser.head_channels=8",
            "model.denoiser.norm_groups=4", "model.denoiser.embedding_channels=8",
            "model.segmenter.filters=[8, 16, 32]"]
    argv = ["--output", str(tmp_path / "run"), "--ratios", "0", "1", "--modes", "two-step", "one-step",
            "--count", "4", "--steps", "2", "--batch-size", "4", *(a for o in tiny for a in ("--set", o))]
    assert experiment_main(argv) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    r0 = json.loads((tmp_path / "run" / "downstream-R0" / "validation.json").read_text())
    r1 = json.loads((tmp_path / "run" / "downstream-R1" / "validation.json").read_text())
    assert r1["synthetic_slices"] == r0["real_slices"] > 0
    record = json.loads((tmp_path / "run" / "synthetic" / "augment.json").read_text())
    assert record["count"] == r0["real_slices"] and record["steps"] == 2
    for entry in ("mask-autoencoder", "mask", "image-autoencoder", "image", "joint-autoencoder", "joint",
                  "segmenter-R0", "segmenter-R1"):
        assert f"| {entry} | 2 |" in report
    assert "| two-step |" in report and "| one-step |" in report and "| 1 |" in report
    assert "| two-step: image LDM on real masks |" in report
    assert (tmp_path / "run" / "pairs.png").stat().st_size > 1000
    capsys.readouterr()
    assert experiment_main(argv) == 0  # everything is reused: nothing trains or samples again
    err = capsys.readouterr().err
    assert err.count("reused") == 9 and "training" not in err


def test_bundled_image_generator_follows_real_masks_better_than_chance(brats18_data):
    """weights/ldm conditioned on tumour masks of a validation case: the bundled R = 0 segmenter finds each
    mask in the image painted around it better than it finds the masks of other slices there."""
    cpu = torch.device("cpu")
    generator = load_generator(BUNDLED, None, cpu)
    assert generator.mode == "two-step" and generator.modality == "t2f"
    norm = generator.image.denoiser.meta.normalization["t2f"]
    _, masks = real_pairs(brats18_data, read_split(SPLIT)[1][:1], "t2f", norm, generator.size)
    masks = masks[torch.linspace(0, len(masks) - 1, 8).long()]
    images, _ = generate(generator, [pair_seed(0, i) for i in range(8)], 10, 3.0, cpu, masks=masks)
    segmenter = load_model(BUNDLED / "segmenter-R0", kind="segmenter")
    fidelity = morphological_fidelity(masks, segmenter_masks(segmenter, images, "t2f"))
    assert fidelity["pairs"] == 8 and fidelity["dice"] > fidelity["chance_dice"] + 0.05

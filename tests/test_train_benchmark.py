"""The generator benchmark of document 000 (`python -m train.benchmark`): LPIPS from user-given weight files,
the slice-wise fidelity metrics, the statistics helpers on known numbers, and the whole benchmark on a tiny
budget (two families x two regimes on small crops of the real case) with its resume."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from infer.evaluate.fidelity import fidelity_metrics
from infer.evaluate.lpips import CHANNELS, LPIPS, load_lpips, volume_lpips
from infer.evaluate.statistics import (bootstrap_ci, correlations, paired_wilcoxon, smallest_wilcoxon_p,
                                       utility_ratio)
from train import benchmark

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs" / "benchmark"
CASE = "BraTS-GLI-00000-000"


def lpips_files(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random weights in torchvision's AlexNet format (with its classifier) and in the lpips package's format."""
    torch.manual_seed(seed)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    trunk = {}
    for index, shape in shapes.items():
        trunk[f"features.{index}.weight"] = torch.randn(shape) * (2 / math.prod(shape[1:])) ** 0.5
        trunk[f"features.{index}.bias"] = torch.zeros(shape[0])
    trunk["classifier.1.weight"] = torch.randn(8, 9216)
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(trunk, folder / "alexnet-owt-7be5be79.pth")
    torch.save(linear, folder / "alex.pth")
    return folder / "alexnet-owt-7be5be79.pth", folder / "alex.pth"


def brain(shape=(48, 40, 12), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32)[:, None, None, None] - 1) / 2
    inside = (((grid - centre) / (centre + 0.5)) ** 2).sum(axis=0) < 0.8
    smooth = np.cumsum(np.cumsum(rng.normal(size=shape), 0), 1)
    return np.where(inside, 1000 + 50 * smooth, 0).astype(np.float32)


def test_lpips_loads_both_formats_and_behaves_as_a_distance(tmp_path):
    trunk, linear = lpips_files(tmp_path)
    model = load_lpips(trunk, linear)
    assert isinstance(model, LPIPS)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(model(x, x), torch.zeros(2))
    torch.testing.assert_close(model(x, y), model(y, x))
    reference = brain()
    mask = reference > 0
    noise = np.random.default_rng(1).normal(size=reference.shape).astype(np.float32)
    values = [volume_lpips(model, np.where(mask, reference + s * noise, 0), reference, mask) for s in (0, 20, 100, 400)]
    assert values[0] == 0 and values[1] < values[2] < values[3]


def test_lpips_is_not_computed_without_its_weights_and_refuses_wrong_files(tmp_path):
    trunk, linear = lpips_files(tmp_path)
    assert load_lpips(None, linear) is None and load_lpips(trunk, tmp_path / "absent.pth") is None
    assert fidelity_metrics(brain(), brain())["lpips"] is None
    with pytest.raises(ValueError, match="alexnet-owt-7be5be79.pth: not the lpips package's linear layers"):
        LPIPS.from_files(trunk, trunk)
    with pytest.raises(ValueError, match="alex.pth: .*Missing key.*features.0.weight"):
        LPIPS.from_files(linear, linear)


def test_fidelity_of_identical_and_of_degraded_volumes(tmp_path):
    model = load_lpips(*lpips_files(tmp_path))
    reference = brain()
    same = fidelity_metrics(reference, reference, model)
    assert same["ssim"] == pytest.approx(1.0) and same["mae"] == 0 and same["psnr"] == math.inf and same["lpips"] == 0
    noisy = np.where(reference > 0, reference + np.random.default_rng(2).normal(0, 300, reference.shape), 0)
    worse = fidelity_metrics(noisy.astype(np.float32), reference, model)
    assert worse["ssim"] < 0.9 and worse["mae"] > 0 and 5 < worse["psnr"] < 60 and worse["lpips"] > 0


def test_statistics_on_known_numbers():
    assert bootstrap_ci([0.5] * 4) == (0.5, 0.5, 0.5)
    mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, None, math.nan])
    assert mean == 2.5 and 1.0 <= low < 2.5 < high <= 4.0
    assert all(math.isnan(v) for v in bootstrap_ci([None]))
    assert smallest_wilcoxon_p(5) == 0.0625 and smallest_wilcoxon_p(6) == 0.03125
    p, n = paired_wilcoxon([2.0, 3.0, 4.0, 5.0, 6.0, 7.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert n == 6 and p == pytest.approx(0.03125)  # all six differences positive: the exact test's least p
    assert math.isnan(paired_wilcoxon([1.0, 2.0], [1.0, 2.0])[0])
    assert utility_ratio({"ET": 0.5, "TC": 0.2, "WT": 0.9}, {"ET": 1.0, "TC": 0.05, "WT": 0.9}) == pytest.approx(0.75)
    assert math.isnan(utility_ratio({"WT": 0.5}, {"WT": 0.05}))
    c = correlations([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0])
    assert c["n"] == 4 and c["pearson_r"] > 0.98 and c["spearman_rho"] == pytest.approx(1.0)
    assert math.isnan(correlations([1.0, 2.0], [1.0, 2.0])["pearson_r"])


def crop_case(source: Path, root: Path, name: str, crop: tuple[slice, ...]) -> None:
    """A crop of the real case's four modalities and labels as the BraTS-layout case `name`."""
    folder = root / name
    folder.mkdir(parents=True)
    for key in ("t1c", "t1n", "t2f", "t2w", "seg"):
        image = nib.load(source / CASE / f"{CASE}-{key}.nii.gz")
        nib.save(image.slicer[crop], folder / f"{name}-{key}.nii.gz")


@pytest.fixture(scope="module")
def tiny_benchmark(brats_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """benchmark/tiny.yaml on one training crop and one held-out crop of the real case, with LPIPS weights."""
    root = tmp_path_factory.mktemp("benchmark")
    crop_case(brats_data, root / "data", "BraTS-GLI-00000-000", (slice(100, 164), slice(20, 84), slice(50, 82)))
    crop_case(brats_data, root / "data", "BraTS-GLI-00000-001", (slice(108, 172), slice(50, 114), slice(56, 88)))
    trunk, linear = lpips_files(root / "lpips")
    argv = ["--config", str(CONFIGS / "tiny.yaml"), "--set", f"data.roots=[{root / 'data'}]",
            "--set", "data.val_cases=[BraTS-GLI-00000-001]", "--set", f"output={root / 'out'}",
            "--set", f"lpips.trunk={trunk}", "--set", f"lpips.linear={linear}"]
    assert benchmark.main(argv) == 0
    return root / "out", argv


def test_the_tiny_benchmark_writes_its_tables(tiny_benchmark):
    out, _ = tiny_benchmark
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["family"], r["regime"], r["trained"]) for r in summary] == [
        ("baseline", "copy t1n", ""), ("pix2pix", "2d+3d", "pix2pix+refiner"), ("pix2pix", "3d", "full3d"),
        ("hfgan", "2d+3d", "hfgan+refiner"), ("hfgan", "3d", "full3d")]
    baseline, summary = summary[0], summary[1:]
    assert baseline["parameters"] == "0" and 0 < float(baseline["ssim"]) < 1 and float(baseline["dice_WT"]) >= 0
    for row in summary:
        assert row["n"] == "1" and int(row["parameters"]) > 0 and float(row["seconds_per_case"]) > 0
        assert 0 < float(row["ssim"]) < 1 and float(row["lpips"]) > 0 and float(row["mae"]) > 0
        assert 0 <= float(row["dice_WT"]) <= 1 and row["utility_dice"] != "" and row["ssim_p"] in ("n/a", "")
    # one full-3D stage served both families (same resolved config); each 2D generator has its refiner
    stages = sorted(p.name.split("-")[0] for p in (out / "train").iterdir())
    assert stages == ["full3d", "hfgan", "pix2pix", "refiner", "refiner"]
    cases = list(csv.DictReader((out / "per_case.csv").open()))
    assert {r["case"] for r in cases} == {"BraTS-GLI-00000-001"} and len(cases) == 5
    text = (out / "report.md").read_text()
    assert "| pix2pix | 2D + 3D-refine | pix2pix+refiner |" in text and "| hfgan | full 3D | full3d |" in text
    assert "least p-value the exact test can give is 1" in text and "Spearman" in text
    assert "| ssim | utility_dice | 3 |" in text  # the shared full-3D generator counts once; no baseline
    assert "| baseline | copy t1n |  | 0 M |" in text and "Downstream reference: the segmenter" in text
    assert (out / "fidelity.png").stat().st_size > 0 and (out / "utility.png").stat().st_size > 0
    assert (out / "results" / "hfgan-3d" / "pred" / "BraTS-GLI-00000-001-t2w.nii.gz").is_file()


def test_the_benchmark_resumes_without_retraining(tiny_benchmark, monkeypatch, capsys):
    out, argv = tiny_benchmark
    assert benchmark.main(argv) == 2  # a finished benchmark is not overwritten without --resume
    assert "pass --resume" in capsys.readouterr().err

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a finished stage")

    monkeypatch.setattr(benchmark, "fit_family", no_training)
    before = (out / "results" / "pix2pix-2d+3d" / "result.json").stat().st_mtime_ns
    (out / "results" / "hfgan-3d" / "result.json").unlink()  # as if stopped after training, before scoring
    with monkeypatch.context() as m:
        m.setattr(benchmark, "synthesise", no_training)
        assert benchmark.main([*argv, "--report-only"]) == 1  # the report so far: one run missing
    assert "hfgan full 3D: not run yet" in (out / "report.md").read_text()
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 4
    assert benchmark.main([*argv, "--resume"]) == 0
    assert (out / "results" / "pix2pix-2d+3d" / "result.json").stat().st_mtime_ns == before
    assert (out / "results" / "hfgan-3d" / "result.json").is_file()
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 5


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_benchmark_configs_and_their_stages_parse(path):
    cfg, base = benchmark.load_benchmark(path)
    task = benchmark.get_task(cfg.task)
    for name, spec in cfg.families.items():
        for stage in (spec.slice, spec.refiner, spec.volume):
            data = benchmark.stage_data(base / stage.config, stage.set, cfg, task)
            family = benchmark.get_family(benchmark.config_family(data))
            assert benchmark.from_dict(benchmark.resolve(family.schema), data).model.family == family.name


def test_a_regime_without_a_config_is_reported_as_not_run(tmp_path):
    config = tmp_path / "b.yaml"
    config.write_text("task: t1n2t2w\nregimes: [2.5d, 3d]\nfamilies: {pix2pix: {volume: benchmark/full3d.yaml}}\n")
    cfg, _ = benchmark.load_benchmark(config)
    assert benchmark.train_run(cfg, CONFIGS, "pix2pix", "2.5d", None, False) is None
    with pytest.raises(benchmark.ConfigError, match="unknown '4d'"):
        benchmark.load_benchmark(config, ["regimes=[4d]"])
    with pytest.raises(ValueError, match="unknown model family 'nothing'"):
        benchmark.load_benchmark(config, ["families={nothing: {}}"])


def test_slice_ssim_is_monais_2d_ssim_on_the_foreground_slices():
    from monai.metrics.regression import compute_ssim_and_cs

    from infer.evaluate.fidelity import slice_ssim
    rng = np.random.default_rng(3)
    ref = rng.uniform(size=(30, 26, 6)).astype(np.float32)
    pred = np.clip(ref + rng.normal(0, 0.2, ref.shape), 0, 1).astype(np.float32)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[5:20, 5:20, 1:4] = True
    mask[0, 0, 5] = True  # under 1 % of slice 5: not a foreground slice
    p, r = (torch.from_numpy(np.moveaxis(v[..., 1:4], -1, 0)[:, None].copy()) for v in (pred, ref))
    expected, _ = compute_ssim_and_cs(p, r, spatial_dims=2, kernel_size=[11, 11], kernel_sigma=[1.5, 1.5])
    assert slice_ssim(pred, ref, mask) == pytest.approx(float(expected.mean()), abs=1e-5)
    assert math.isnan(slice_ssim(pred, ref, np.zeros(ref.shape, dtype=bool)))

"""TISS-Net: the refined mask and error target on hand-made masks, a joint training step whose every loss term
reaches the parameters, the family trained through `python -m train fit` (both stages, stopped and resumed)
and run through `python -m infer` on crops of real BraTS 2018 cases, writing the synthesis and the mask."""
from __future__ import annotations

import json
from csv import DictReader
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import run_cli, save_tiny_checkpoint, snapshot
from infer.evaluate.cli import main as evaluate_main
from infer.routes import main as routes_main
from models.checkpoint import CheckpointMeta, load_model, read_config, save_checkpoint
from models.segmenter3d import Segmenter3D, Segmenter3DConfig
from models.tissnet import (PatchGANConfig, PerceptualConfig, PerceptualSegmenter, TissNet, TissNetConfig,
                            TissNetDiscriminators, consistency, error_target, refined_mask)
from train.__main__ import main as train_main
from train.families.tissnet import (JointBatch, JointNetworks, TissNetLoss, constant_then_linear, dice_loss,
                                    discriminator_terms, generator_terms, joint_step, tumour_box)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats18"
SPLIT = json.loads((Path(__file__).resolve().parents[1] / "train" / "splits" / "brats18.json").read_text())
CROP = (48, 48, 16)
TINY = [4, 8, 8, 8, 8]
FILES = {"t1c": "t1ce", "t1n": "t1", "t2f": "flair", "t2w": "t2", "seg": "seg"}


def test_refined_mask_flips_the_predicted_errors_and_consistency_is_their_squared_gap():
    coarse = torch.tensor([1.0, 1.0, 0.0, 0.0])
    truth = torch.tensor([1.0, 0.0, 1.0, 0.0])
    errors = error_target(coarse, truth)
    assert errors.tolist() == [0.0, 1.0, 1.0, 0.0]  # over-segmented, then under-segmented voxel
    assert refined_mask(coarse, errors).tolist() == truth.tolist()  # the right errors refine y_c to y
    assert consistency(truth, refined_mask(coarse, errors)).item() == 0.0
    assert consistency(torch.ones(4), refined_mask(coarse, errors)).item() == pytest.approx(0.5)
    soft = refined_mask(torch.tensor([0.8, 0.1]), torch.tensor([0.25, 0.9]))
    assert soft.tolist() == pytest.approx([0.2 * 0.25 + 0.8 * 0.75, 0.9 * 0.9 + 0.1 * 0.1])
    assert error_target(torch.tensor([0.6, 0.4]), torch.tensor([1.0, 1.0])).tolist() == [0.0, 1.0]  # y_c at 0.5


def test_tumour_box_and_schedule():
    tumour = np.zeros((6, 5, 4), dtype=bool)
    tumour[1, 2, 1] = tumour[3, 3, 2] = True
    box = tumour_box(tumour)
    assert box.sum() == 3 * 2 * 2 and box[1:4, 2:4, 1:3].all()
    assert not tumour_box(np.zeros((3, 3, 3), dtype=bool)).any()
    rates = [constant_then_linear(s, 10, 1e-4, 0.4) for s in range(11)]
    assert rates[:4] == [1e-4] * 4 and rates[4] == pytest.approx(1e-4) and rates[7] == pytest.approx(0.5e-4)
    assert rates[10] == 0.0


def tiny_networks(perceptual: bool = True) -> JointNetworks:
    torch.manual_seed(0)
    return JointNetworks(TissNet(TissNetConfig(channels=TINY)), TissNetDiscriminators(PatchGANConfig(base=4)),
                         PerceptualSegmenter(PerceptualConfig(channels=TINY)).requires_grad_(False).eval()
                         if perceptual else None)


def tumour_batch() -> JointBatch:
    generator = torch.Generator().manual_seed(1)
    sources = torch.rand(2, 3, 32, 32, 8, generator=generator) * 2 - 1
    tumour = torch.zeros(2, 1, 32, 32, 8)
    tumour[:, :, 10:20, 12:22, 2:6] = 1
    target = (sources.mean(1, keepdim=True) + tumour).clamp(-1, 1)
    return JointBatch(sources, target, tumour, tumour.bool())


def _reaches(loss: torch.Tensor, module: torch.nn.Module) -> bool:
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_every_loss_term_reaches_the_parameters_and_a_step_moves_every_network():
    nets, batch, dice = tiny_networks(), tumour_batch(), dice_loss()
    terms, out = generator_terms(nets, batch, -1.0, dice)
    assert set(terms) == {"l1_global", "adv_global", "l1_tumour", "adv_tumour", "perceptual", "coarse", "fine",
                          "error", "consistency"}
    generator, segmentor = nets.net.generator, nets.net.segmentor
    for name, value in terms.items():
        assert torch.isfinite(value) and value > 0, name
        assert _reaches(value, generator), name  # the segmentor's terms too: trained end to end
        if name in ("fine", "error", "consistency"):
            assert _reaches(value, segmentor), name
    assert not _reaches(terms["coarse"], segmentor)
    d_terms = discriminator_terms(nets.discriminators, batch, out.synthesis, -1.0)
    assert _reaches(d_terms["d_global"], nets.discriminators.global_)
    assert _reaches(d_terms["d_tumour"], nets.discriminators.tumour)
    assert not _reaches(d_terms["d_global"], nets.net)  # the synthesis is detached for D

    before = {name: p.detach().clone() for name, p in
              [*nets.net.named_parameters(), *nets.discriminators.named_parameters(prefix="d")]}
    frozen = [p.detach().clone() for p in nets.perceptual.parameters()]
    opt_g = torch.optim.Adam(nets.net.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(nets.discriminators.parameters(), lr=1e-3)
    logs = joint_step(nets, opt_g, opt_d, batch, TissNetLoss(), -1.0, dice, 1e-3)
    assert set(logs) == {*terms, "d_global", "d_tumour", "total"} and all(np.isfinite(v) for v in logs.values())
    after = dict([*nets.net.named_parameters(), *nets.discriminators.named_parameters(prefix="d")])
    for prefix in ("generator.encoder", "generator.decoders.0", "generator.decoders.1", "segmentor.decoders.0",
                   "segmentor.decoders.1", "d.global_", "d.tumour"):
        assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix)), prefix
    assert all(torch.equal(a, b) for a, b in zip(frozen, nets.perceptual.parameters()))


def _crop(image: nib.Nifti1Image, corner: np.ndarray) -> nib.Nifti1Image:
    return image.slicer[tuple(slice(int(c), int(c) + n) for c, n in zip(corner, CROP))]


def write_crop(case: str, root: Path, modalities: tuple[str, ...]) -> Path:
    """A CROP-sized crop of real case `case` around its tumour's centre, in the BraTS 2018 naming."""
    source = DATA / case
    if not source.is_dir():
        raise FileNotFoundError(f"real data missing: {source} (see ../shared/data/README.md)")
    seg = nib.load(source / f"{case}_seg.nii.gz")
    centre = np.argwhere(np.asanyarray(seg.dataobj) > 0).mean(axis=0).astype(int)
    corner = np.clip(centre - np.array(CROP) // 2, 0, np.array(seg.shape) - CROP)
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    for modality in modalities:
        name = f"{case}_{FILES[modality]}.nii.gz"
        nib.save(_crop(nib.load(source / name), corner), folder / name)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """S_p for one step, then TISS-Net for two (stopped after one and resumed), on crops of two real training
    cases, through `python -m train fit`; returns the joint run folder."""
    root = tmp_path_factory.mktemp("tissnet")
    for case in SPLIT["train"][:2]:
        write_crop(case, root / "data", tuple(FILES))
    common = ["--set", f"data.roots=[{root / 'data'}]", "--set", "data.split=null", "--set", "run.device=cpu",
              "--set", "run.progress=false", "--set", "patch.size=[32, 32, 8]", "--set", "train.batch_size=1",
              "--set", f"model.tissnet.channels={TINY}", "--set", f"model.perceptual.channels={TINY}",
              "--set", "model.discriminator.base=4", "--set", "patch.window_batch=4"]
    config = Path(__file__).resolve().parents[1] / "train" / "configs" / "tissnet-cpu.yaml"
    assert train_main(["fit", "--config", str(config), *common, "--set", "model.stage=perceptual",
                       "--set", "train.steps=1", "--set", f"run.output={root / 'sp'}"]) == 0
    joint = [*common, "--set", "train.steps=2", "--set", f"run.output={root / 'joint'}",
             "--set", f"model.perceptual_segmenter={root / 'sp' / 'perceptual'}"]
    assert train_main(["fit", "--config", str(config), *joint, "--stop-after", "1"]) == 0
    assert not (root / "joint" / "tissnet").exists() and (root / "joint" / "state.pt").is_file()
    assert train_main(["fit", "--config", str(config), *joint, "--resume"]) == 0
    return root / "joint"


def test_fit_dispatches_to_tissnet_and_resumes(trained):
    config = read_config(trained / "tissnet")
    assert config["family"] == "tissnet" and config["kind"] == "tissnet"
    assert config["provenance"]["targets"] == ["t2f"] and config["provenance"]["steps"] == 2
    assert config["provenance"]["train_cases"] == SPLIT["train"][:2]
    assert read_config(trained / "discriminators")["kind"] == "tissnet_discriminators"
    rows = (trained / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("step,l1_global,adv_global,l1_tumour,adv_tumour,perceptual")
    assert (trained / "curves.png").is_file()
    assert load_model(trained / "tissnet").meta.normalization["t2f"].__class__.__name__ == "ScaleNorm"


def test_inference_writes_the_synthesis_and_the_mask_of_a_real_case(trained, tmp_path, capsys):
    case = SPLIT["validation"][0]
    inputs = tmp_path / "in"
    write_crop(case, inputs, ("t1c", "t1n", "t2w"))
    other = SPLIT["validation"][1]
    write_crop(other, inputs, ("t1n", "t2f", "t2w"))  # lacks t1c: not this checkpoint's target
    out, seg = tmp_path / "out", tmp_path / "seg"
    code = run_cli(inputs, out, trained / "tissnet", "--segmentation-output", str(seg))
    err = capsys.readouterr().err
    assert code == 1 and f"{other}: this TISS-Net checkpoint synthesises t2f only, not t1c" in err
    reference = nib.load(inputs / case / f"{case}_t1.nii.gz")
    flair = nib.load(out / f"{case}_flair.nii.gz")
    mask = nib.load(seg / f"{case}-seg.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == [f"{case}_flair.nii.gz"]  # OUT holds the synthesis only
    for image, dtype in ((flair, np.float32), (mask, np.uint8)):
        assert image.shape == CROP and image.get_data_dtype() == dtype
        assert np.allclose(image.affine, reference.affine)
    data = np.asanyarray(flair.dataobj)
    signal = np.stack([np.asanyarray(nib.load(inputs / case / f"{case}_{FILES[m]}.nii.gz").dataobj) > 0
                       for m in ("t1c", "t1n", "t2w")])
    brain, outside = signal.all(axis=0), ~signal.any(axis=0)
    assert brain.any() and np.isfinite(data).all() and (data[brain] >= 1.0).all() and (data[outside] == 0).all()
    labels = np.asanyarray(mask.dataobj)
    assert set(np.unique(labels)) <= {0, 1} and not labels[outside].any()

    (seg / f"{case}-seg.nii.gz").unlink()  # a missing mask is computed again, with its synthesis
    assert run_cli(inputs, out, trained / "tissnet", "--segmentation-output", str(seg)) == 1
    assert np.array_equal(np.asanyarray(nib.load(seg / f"{case}-seg.nii.gz").dataobj), labels)
    assert np.array_equal(np.asanyarray(nib.load(out / f"{case}_flair.nii.gz").dataobj), data)
    capsys.readouterr()
    assert run_cli(inputs, out, trained / "tissnet", "--segmentation-output", str(seg)) == 1
    assert f"{case}: output exists, skipped" in capsys.readouterr().err


def test_segmentation_folder_lies_outside_the_output_and_needs_a_segmenting_family(trained, tmp_path, capsys):
    write_crop(SPLIT["validation"][0], tmp_path / "in", ("t1c", "t1n", "t2w"))
    code = run_cli(tmp_path / "in", tmp_path / "out", trained / "tissnet", "--segmentation-output",
                   str(tmp_path / "out" / "seg"))
    assert code == 2 and "is inside the output folder" in capsys.readouterr().err
    code = run_cli(tmp_path / "in", tmp_path / "out", save_tiny_checkpoint(tmp_path / "generator"),
                   "--segmentation-output", str(tmp_path / "seg"))
    assert code == 2 and "this checkpoint's family does not segment" in capsys.readouterr().err


def test_the_evaluation_scores_the_synthesis_and_the_whole_tumour_mask(trained, tmp_path, capsys):
    case = SPLIT["validation"][0]
    write_crop(case, tmp_path / "in", ("t1c", "t1n", "t2w"))
    reference = write_crop(case, tmp_path / "ref", tuple(FILES)).parent
    out, seg = tmp_path / "out", tmp_path / "seg"
    assert run_cli(tmp_path / "in", out, trained / "tissnet", "--segmentation-output", str(seg)) == 0
    csv = tmp_path / "scores.csv"
    assert evaluate_main(["--reference", str(reference), "--pred", str(out), "--segmentations", str(seg),
                          "--regions", "WT", "--csv", str(csv), "--no-progress"]) == 0
    with csv.open() as f:
        rows = {r["source"]: r for r in DictReader(f)}
    assert rows["prediction"]["modality"] == "t2f" and float(rows["prediction"]["psnr"]) > 0
    mask = np.asanyarray(nib.load(seg / f"{case}-seg.nii.gz").dataobj) > 0
    truth = np.asanyarray(nib.load(reference / case / f"{case}_seg.nii.gz").dataobj) > 0
    dice = 2 * np.count_nonzero(mask & truth) / max(np.count_nonzero(mask) + np.count_nonzero(truth), 1)
    assert float(rows["segmentation"]["dice_WT"]) == pytest.approx(dice, abs=1e-6)
    assert rows["segmentation"]["dice_ET"] == rows["segmentation"]["dice_TC"] == "nan"  # not scored


def test_routes_compare_four_ways_to_segment_without_flair(trained, tmp_path, capsys):
    cases = SPLIT["validation"][:2]
    for case in cases:
        write_crop(case, tmp_path / "data", tuple(FILES))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "validation": cases}))
    reduced = Segmenter3D(Segmenter3DConfig(in_channels=3, init_filters=8))
    save_checkpoint(reduced, tmp_path / "reduced", CheckpointMeta("segmenter3d", "segment", ("t1c", "t1n", "t2w"),
                                                                  views=()))
    before = snapshot(tmp_path / "data")
    out = tmp_path / "routes"
    assert routes_main(["--data", str(tmp_path / "data"), "--split", str(split), "--joint", str(trained / "tissnet"),
                        "--reduced", str(tmp_path / "reduced"), "--output", str(out), "--device", "cpu"]) == 0
    assert snapshot(tmp_path / "data") == before  # nothing written beside the inputs
    with (out / "per_case.csv").open() as f:
        rows = {(r["case"], r["route"]): r for r in DictReader(f)}
    assert sorted(rows) == sorted((c, r) for c in cases for r in ("without", "synthesise", "joint", "real"))
    for case in cases:
        mask = np.asanyarray(nib.load(out / "masks" / "joint" / f"{case}-seg.nii.gz").dataobj) > 0
        truth = np.asanyarray(nib.load(tmp_path / "data" / case / f"{case}_seg.nii.gz").dataobj) > 0
        dice = 2 * np.count_nonzero(mask & truth) / max(np.count_nonzero(mask) + np.count_nonzero(truth), 1)
        assert float(rows[case, "joint"]["dice"]) == pytest.approx(dice, abs=1e-6)
        for route in ("synthesise", "joint"):  # the two syntheses of FLAIR are scored as images
            assert 0 < float(rows[case, route]["psnr"]) < 60
        assert rows[case, "real"]["psnr"] == rows[case, "without"]["psnr"] == "nan"
        assert all(0 <= float(rows[case, r]["dice"]) <= 1 for r in ("without", "synthesise", "real"))
    summary = (out / "summary.md").read_text()
    assert "TISS-Net's own fine mask" in summary and summary.count("\n| ") == 2 + 4 + 2 + 2

"""The 3D tumour segmenter: region/label conversion, the coarse grid, a training run that learns and resumes,
and `python -m infer.segment` end to end (both namings in, 2023 labels out, runner guarantees)."""
import nibabel as nib
import numpy as np
import pytest
import torch

from conventions.regions import labels_from_regions, regions_from_labels
from infer.engine.segmentation import SegmentationPredictor, coarse_inputs, coarse_shape
from infer.segment import main as segment_main
from models.checkpoint import load_model
from train.config import ConfigError, load_config, VolumeConfig
from train.families.segmenter3d import fit_segmenter3d

from helpers import AFFINE, save_tiny_checkpoint, snapshot, synthetic_volumes

SHAPE = (40, 36, 30)


def test_labels_and_regions_round_trip():
    seg = np.random.default_rng(0).integers(0, 4, (6, 5, 4)).astype(np.uint8)
    regions = regions_from_labels(seg)
    assert regions.shape == (3, 6, 5, 4)
    np.testing.assert_array_equal(labels_from_regions(regions), seg)
    only_et = np.zeros((3, 2), bool)
    only_et[0, 0] = True  # ET claimed without TC or WT: still enhancing tumour
    assert labels_from_regions(only_et).tolist() == [3, 0]


def test_coarse_inputs_crop_downsample_and_normalise():
    volumes = synthetic_volumes(SHAPE, modalities=("t1c", "t1n", "t2f", "t2w"))
    x, box = coarse_inputs(volumes, ("t1c", "t1n", "t2f", "t2w"), 2.0)
    brain = volumes["t1c"] > 0
    assert all(s.start == np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != i)))[0]
               for i, s in enumerate(box))
    assert tuple(x.shape[1:]) == coarse_shape([s.stop - s.start for s in box], 2.0)
    inside = x[0][x[0] != 0]
    assert abs(float(inside.mean())) < 1e-4 and abs(float(inside.std()) - 1) < 1e-2


def _labelled_case(folder, case, seed, naming="2023"):
    """Four modalities with a bright ball labelled as tumour (2018 naming: `_` and enhancing = 4)."""
    rng = np.random.default_rng(seed)
    volumes = synthetic_volumes(SHAPE, seed, ("t1c", "t1n", "t2f", "t2w"))
    grid = np.indices(SHAPE)
    centre = np.array(SHAPE) // 2 + rng.integers(-4, 5, 3)
    ball = (((grid - centre[:, None, None, None]) / 6.0) ** 2).sum(0) < 1
    core = (((grid - centre[:, None, None, None]) / 3.0) ** 2).sum(0) < 1
    seg = np.where(core, 3, np.where(ball, 2, 0)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = {"t1c": "t1ce", "t1n": "t1", "t2f": "flair", "t2w": "t2"} if naming == "2018" else {}
    sep = "_" if naming == "2018" else "-"
    for m, v in volumes.items():
        v = np.where(ball, v + 4000, v) if m in ("t2f", "t1c") else v
        nib.save(nib.Nifti1Image(v.astype(np.int16), AFFINE), folder / f"{case}{sep}{tokens.get(m, m)}.nii.gz")
    stored = np.where(seg == 3, 4, seg) if naming == "2018" else seg
    nib.save(nib.Nifti1Image(stored.astype(np.uint8), AFFINE), folder / f"{case}{sep}seg.nii.gz")
    return seg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    for i in range(3):
        _labelled_case(root / "data" / f"c{i}", f"c{i}", i, naming="2018" if i % 2 else "2023")
    cfg = load_config(None, [f"data.roots=[{root / 'data'}]", "data.require_seg=true",
                             "model.segmenter3d={init_filters: 8}", "patch.size=[16,16,16]",
                             "patch.tumour_fraction=0.7", "optim.lr=0.003", "train.steps=40",
                             "train.batch_size=2", f"run.output={root / 'run'}", "run.device=cpu",
                             "run.progress=false", "run.checkpoint_every=20"], VolumeConfig)
    fit_segmenter3d(cfg, stop_after=20)
    assert not (root / "run" / "segmenter3d").exists()  # stopped: a resumable state, no final checkpoint
    fit_segmenter3d(cfg, resume=True)
    return root, cfg


def test_training_learns_resumes_and_writes_a_checkpoint(trained):
    root, _ = trained
    losses = [float(line.split(",")[1]) for line in (root / "run" / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5])
    model = load_model(root / "run" / "segmenter3d", kind="segmenter3d")
    assert model.meta.task == "segment" and model.config.spacing_mm == 2.0


def test_a_segmenter_without_flair_reads_only_its_inputs(trained, tmp_path):
    root, _ = trained
    cfg = load_config(None, [f"data.roots=[{root / 'data'}]", "data.inputs=[t2w, t1c, t1n]",
                             "model.segmenter3d={init_filters: 8}", "patch.size=[16,16,16]", "train.steps=2",
                             f"run.output={tmp_path / 'run'}", "run.device=cpu", "run.progress=false"], VolumeConfig)
    fit_segmenter3d(cfg)
    model = load_model(tmp_path / "run" / "segmenter3d", kind="segmenter3d")
    assert model.meta.modalities == ("t1c", "t1n", "t2w") and model.config.in_channels == 3  # the task's order
    volumes = synthetic_volumes(SHAPE, 0, ("t1c", "t1n", "t2w"))
    labels = SegmentationPredictor(model, device=torch.device("cpu")).predict(volumes, "seg")
    assert labels.shape == SHAPE
    bad = load_config(None, [f"data.roots=[{root / 'data'}]", "data.inputs=[t1c, dwi]",
                             f"run.output={tmp_path / 'bad'}", "run.device=cpu"], VolumeConfig)
    with pytest.raises(ConfigError, match="dwi"):
        fit_segmenter3d(bad)


def test_segment_command_end_to_end(trained, tmp_path, capsys):
    root, _ = trained
    seg = _labelled_case(tmp_path / "in" / "old", "old", 7, naming="2018")
    (tmp_path / "in" / "old" / "old_seg.nii.gz").unlink()
    _labelled_case(tmp_path / "in" / "three", "three", 8)
    (tmp_path / "in" / "three" / "three-t2w.nii.gz").unlink()
    before = snapshot(tmp_path / "in")
    code = segment_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                         "--weights", str(root / "run" / "segmenter3d"), "--device", "cpu"])
    assert code == 1 and "three: found 3 input modalities" in capsys.readouterr().err
    assert snapshot(tmp_path / "in") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["old-seg.nii.gz"]  # 2023 name and labels
    out = nib.load(tmp_path / "out" / "old-seg.nii.gz")
    assert out.shape == SHAPE and out.get_data_dtype() == np.uint8 and np.allclose(out.affine, AFFINE)
    labels = np.asarray(out.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    found, true = labels > 0, seg > 0
    assert 2 * (found & true).sum() / (found.sum() + true.sum()) > 0.5  # the ball is found


def test_segment_refuses_a_generator_checkpoint(small_checkpoint, tmp_path, capsys):
    _labelled_case(tmp_path / "in" / "a", "a", 0)
    code = segment_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                         "--weights", str(small_checkpoint)])
    assert code == 2 and "does not serve task segment" in capsys.readouterr().err


def test_downstream_protocol_in_the_evaluation(trained, tmp_path, capsys):
    """The three-way table: a perfect synthesis segments exactly as the real case; rows for the real case and
    each baseline completion; an old-layout reference read with 2023 labels."""
    from infer.evaluate import scoring as ev
    from infer.evaluate.cli import main as evaluate_main

    root, _ = trained
    _labelled_case(tmp_path / "ref" / "old", "old", 7, naming="2018")
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "old_flair.nii.gz").symlink_to(tmp_path / "ref" / "old" / "old_flair.nii.gz")
    code = evaluate_main(["--pred", str(pred), "--reference", str(tmp_path / "ref"), "--segment", "--segmenter",
                    str(root / "run" / "segmenter3d"), "--csv", str(tmp_path / "rows.csv"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "segmentation metrics" in out and "downstream_baseline_copy" in out
    rows = {r["source"]: r for r in ev.evaluate(tmp_path / "ref", pred, segmenter=_segmenter(root), progress=False,
                                                log=lambda _m: None).rows if r["source"].startswith("downstream_")}
    assert set(rows) == {"downstream_real", "downstream_prediction", "downstream_baseline_mean",
                         "downstream_baseline_copy"}
    assert all(r["modality"] == "t2f" and r["status"] == "ok" for r in rows.values())
    for metric in ("dice_WT", "nsd_WT", "nsd2mm_WT", "hd95_WT", "dice_ET"):
        assert rows["downstream_prediction"][metric] == rows["downstream_real"][metric]
    assert rows["downstream_real"]["dice_WT"] > 0.5 and rows["downstream_real"]["nsd2mm_WT"] >= \
        rows["downstream_real"]["nsd_WT"]


def _segmenter(root):
    from infer.segment import load_segmenter

    return load_segmenter(root / "run" / "segmenter3d", device="cpu")


def test_brats_package_segmenter_through_its_own_api(tmp_path, monkeypatch):
    """`--segmenter brats:BraTS23_1`: the package's own infer_single (input standardisation, output renaming)
    with only its container runner replaced by one that writes a known segmentation."""
    from brats.core import brats_algorithm

    from infer.evaluate import scoring as ev
    from infer.evaluate.cli import main as evaluate_main
    from infer.segment import brats_segmenter, load_segmenter

    seg = _labelled_case(tmp_path / "ref" / "old", "old", 7, naming="2018")
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "old_t1ce.nii.gz").symlink_to(tmp_path / "ref" / "old" / "old_t1ce.nii.gz")
    seen = []

    def run_container(algorithm, data_path, output_path, cuda_devices, force_cpu, internal_external_name_map=None):
        (subject,) = [p.name for p in data_path.iterdir()]
        seen.append(sorted(p.name for p in (data_path / subject).iterdir()))
        nib.save(nib.Nifti1Image(seg, AFFINE), output_path / f"{subject}.nii.gz")  # what the container writes

    monkeypatch.setattr(brats_algorithm, "run_docker_container", run_container)
    with pytest.raises(ValueError, match="unknown brats segmentation algorithm"):
        brats_segmenter("BraTS99_9")
    result = ev.evaluate(tmp_path / "ref", pred, segmenter=load_segmenter("brats:BraTS23_1", device="cpu"),
                         progress=False, log=lambda _m: None)
    rows = [r for r in result.rows if r["source"].startswith("downstream_")]
    assert not result.errors and len(rows) == 4 and len(seen) == 4  # real + prediction + two baselines
    assert all(len(files) == 4 for files in seen)
    assert all(r["dice_ET"] == 1.0 and r["dice_WT"] == 1.0 for r in rows)


def test_holdout_with_the_downstream_protocol(trained, tmp_path, capsys):
    """`python -m infer.holdout --segment`: every modality left out in turn, synthesised, scored, and the
    completed cases segmented; a case without labels gets no segmentation scores and no error."""
    from infer import holdout

    root, _ = trained
    _labelled_case(tmp_path / "cases" / "lab", "lab", 3, naming="2018")
    _labelled_case(tmp_path / "cases" / "nolab", "nolab", 4)
    (tmp_path / "cases" / "nolab" / "nolab-seg.nii.gz").unlink()
    weights = save_tiny_checkpoint(tmp_path / "gen", image_size=64)
    code = holdout.main(["--weights", str(weights), "--extra", str(tmp_path / "cases" / "lab"),
                         str(tmp_path / "cases" / "nolab"), "--output", str(tmp_path / "out"), "--device", "cpu",
                         "--segment", "--segmenter", str(root / "run" / "segmenter3d")])
    text = capsys.readouterr().out
    assert code == 0 and "lab: segmentation of the completed cases" in text
    assert "nolab: segmentation" not in text and "| t2f | real (all four) |" in text
    assert (tmp_path / "out" / "pred" / "without-t2f" / "lab_flair.nii.gz").is_file()
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "lab (1 case: lab)" in summary and "lab: segmentation of the completed cases" in summary


@pytest.mark.slow  # the bundled generator and segmenter on two full-size real cases: about 2 minutes
def test_downstream_protocol_on_two_real_cases_with_the_bundled_models(brats18_data, tmp_path):
    from infer.evaluate import scoring as ev
    from infer.evaluate.cli import main as evaluate_main
    from infer.cli import main as infer_main
    from infer.segment import load_segmenter

    cases = ["Brats18_CBICA_AME_1", "Brats18_TCIA10_639_1"]  # validation cases, 2018 naming
    for case in cases:
        folder = tmp_path / "in" / case
        folder.mkdir(parents=True)
        for token in ("t1", "t1ce", "t2"):
            (folder / f"{case}_{token}.nii.gz").symlink_to(brats18_data / case / f"{case}_{token}.nii.gz")
    assert infer_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--device", "cpu"]) == 0
    result = ev.evaluate(brats18_data, tmp_path / "out", cases=cases, segmenter=load_segmenter(device="cpu"),
                         progress=False, log=lambda _m: None)
    assert not result.errors
    rows = {(r["case"], r["source"]): r for r in result.rows if r["source"].startswith("downstream_")}
    assert len(rows) == 8 and all(r["modality"] == "t2f" and r["status"] == "ok" for r in rows.values())
    for case in cases:
        assert rows[(case, "downstream_real")]["dice_WT"] > 0.8  # the bundled segmenter on real FLAIR
        assert 0 <= rows[(case, "downstream_prediction")]["dice_WT"] <= 1

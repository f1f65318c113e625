"""End-to-end training on the real case (CPU, tiny networks): learning, checkpoints, inference, resume, DDP."""
import json
import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from infer.engine.slices import VolumePredictor, resolve_settings
from conventions.tasks import BRASYN
from models.checkpoint import load_model
from models.generator import HFGANGenerator
from models.segmenter import SliceSegmenter
from train.__main__ import main
from train.data.cases import find_cases, load_case
from train.config import ConfigError, load_config
from train.curves import read_csv
from train.distributed import init_distributed, shutdown
from train.loop import GanRun, fit
from train.families.segmenter import dice, fit_segmenter, validation_dice
from train.run import build_data
from train.state import STATE_FILE, TrainingClock, restore_training, save_state, save_training

TINY = Path(__file__).resolve().parents[1] / "train" / "configs" / "tiny.yaml"
VAL_CASE = "BraTS-GLI-00001-000"  # the case without a segmentation: validation only


@pytest.fixture(scope="module")
def common(brats_data, tmp_path_factory):
    """Overrides every run here shares: the real data, a slice cache prepared once, no progress bars."""
    cache = tmp_path_factory.mktemp("slice-cache")
    return [f"data.roots=[{brats_data}]", f"data.cache_dir={cache}", f"data.val_cases=[{VAL_CASE}]",
            "run.progress=false"]


def tiny(common, output, *overrides):
    return load_config(TINY, [*common, f"run.output={output}", *overrides])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_tiny_run_lowers_l1_and_writes_loadable_checkpoints(common, tmp_path):
    out = tmp_path / "run"
    sets = [x for c in [*common, f"run.output={out}"] for x in ("--set", c)]
    assert main(["fit", "--config", str(TINY), *sets]) == 0
    rows = read_csv(out / "log.csv")
    assert len(rows) == 30
    assert {"step", "lr", "l1", "ssim", "adversarial", "classification", "cycle", "feature", "g_total",
            "d_total"} == set(rows[0])
    l1 = np.array([float(r["l1"]) for r in rows])
    assert np.isfinite(l1).all()
    assert l1[-5:].mean() < 0.8 * l1[:5].mean(), l1.round(3)
    lr = [float(r["lr"]) for r in rows]
    assert lr[-1] < 0.05 * max(lr)  # one cosine cycle down to ~0
    assert (out / "curves.png").stat().st_size > 0
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 30

    generator = load_model(out / "generator")
    assert isinstance(generator, HFGANGenerator) and generator.config.image_size == 64
    assert generator.meta.provenance["steps"] == 30 and generator.meta.provenance["optimizer_steps"] == 120
    assert generator.meta.provenance["data"]["val_cases"] == [VAL_CASE]
    assert generator.meta.normalization == BRASYN.normalization and generator.meta.views == ("axial",)
    assert load_model(out / "discriminator").meta.kind == "discriminator"


def test_whole_slices_validate_and_the_checkpoint_runs_in_the_inference_engine(common, tmp_path, brats_data):
    out = tmp_path / "full"
    cfg = tiny(common, out, "data.crop=null", "model.generator={dim: 4, norm_groups: 4, dim_mults: [1,2,4,8,8], "
               "n_layers: 1, num_heads: 4}", "train.batch_size=2", "train.max_steps=1", "run.validate_every=1",
               "run.validation_batch_size=8")
    fit(cfg)
    (row,) = read_csv(out / "validation.csv")
    assert math.isfinite(float(row["psnr"])) and 0 < float(row["ssim_brain_healthy"]) <= 1
    assert row["ssim_brain_tumour"] == "nan"  # the validation case has no segmentation
    assert (out / "validation-1.png").stat().st_size > 0

    model = load_model(out / "generator")
    case = next(c for c in find_cases([brats_data], BRASYN) if c.name == VAL_CASE)
    volumes, _ = load_case(case, BRASYN.modalities)
    predictor = VolumePredictor(model, resolve_settings(BRASYN, model), batch_size=8)
    synthesis = predictor.predict({m: v for m, v in volumes.items() if m != "t2w"}, "t2w")
    assert synthesis.shape == volumes["t2w"].shape and np.isfinite(synthesis).all()


def test_resume_mid_epoch_reproduces_the_uninterrupted_run_exactly(common, tmp_path):
    settings = ["train.batch_size=2", "train.max_steps=4", "run.checkpoint_every=0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit(tiny(common, straight, *settings))
    fit(tiny(common, resumed, *settings), stop_after=3)
    assert torch.load(resumed / STATE_FILE, weights_only=True)["step"] == 3
    assert not (resumed / "generator").exists()  # no final model before the end
    fit(tiny(common, resumed, *settings), export=True)  # models from the step-3 state, no training
    exported = load_model(resumed / "generator")
    assert exported.meta.provenance["steps"] == 3 and exported.meta.provenance["time"]["exported_at_step"] == 3
    state = torch.load(resumed / STATE_FILE, weights_only=True)
    assert state["step"] == 3
    assert all(torch.equal(v, state["generator"][k]) for k, v in exported.state_dict().items())
    with pytest.raises(ValueError, match="config differs .* optim.lr"):
        fit(tiny(common, resumed, *settings, "optim.lr=0.1"), resume=True)
    fit(tiny(common, resumed, *settings), resume=True)
    for name in ("generator", "discriminator"):
        a, b = weights(straight / name), weights(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_csv(straight / "log.csv") == read_csv(resumed / "log.csv")
    with pytest.raises(FileExistsError, match="--resume"):
        fit(tiny(common, resumed, *settings))


def test_context_slices_views_and_random_subsets(common, tmp_path):
    out = tmp_path / "multi"
    fit(tiny(common, out, "data.views=[axial, sagittal]", "model.generator.context_slices=1",
             "model.generator.num_views=3", "train.random_subsets=true", "train.batch_size=2", "train.max_steps=2"))
    model = load_model(out / "generator")
    assert model.config.context_slices == 1 and model.config.num_views == 3
    assert model.meta.views == ("axial", "sagittal")
    assert all(math.isfinite(float(r["g_total"])) for r in read_csv(out / "log.csv"))


def test_weighted_targets_take_one_optimizer_step_each(common, tmp_path):
    out = tmp_path / "t1c-weighted"
    fit(tiny(common, out, "train.targets=[t1c, t1c, t2f]", "train.batch_size=2", "train.max_steps=2"))
    assert load_model(out / "generator").meta.provenance["optimizer_steps"] == 2 * 3
    with pytest.raises(ConfigError, match="train.targets"):
        fit(tiny(common, tmp_path / "bad", "train.targets=[t1ce]", "train.max_steps=1"))


def _ddp_worker(rank: int, cfg, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        run = GanRun(cfg, ctx, resume=False)
        run.fit()
        torch.save({k: v.clone() for k, v in run.generator.state_dict().items()}, folder / f"rank{rank}.pt")
    finally:
        shutdown(ctx)


def test_two_process_ddp_keeps_ranks_in_sync_and_only_rank0_writes(common, tmp_path):
    out = tmp_path / "ddp"
    cfg = tiny(common, out, "train.batch_size=2", "train.max_steps=2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(cfg, port, tmp_path), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)  # each rank saw other slices: equal only through DDP
    torch.manual_seed(cfg.train.seed)  # the run's initialisation
    initial = HFGANGenerator(load_model(out / "generator").config).state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # and they trained
    assert len(read_csv(out / "log.csv")) == 2
    assert load_model(out / "generator").meta.provenance["global_batch"] == 4
    assert not list(out.glob("*.tmp"))


def test_segmenter_training_feeds_the_tversky_term(common, tmp_path):
    seg_out, gan_out = tmp_path / "seg", tmp_path / "gan"
    fit_segmenter(tiny(common, seg_out, "data.min_tumour_fraction=0.001", "train.max_steps=3",
                       "loss.segmenter_cross_entropy=1"))
    segmenter = load_model(seg_out / "segmenter", kind="segmenter")
    assert isinstance(segmenter, SliceSegmenter) and segmenter.config.filters == (8, 16, 32, 64)
    log = read_csv(seg_out / "log.csv")
    assert len(log) == 3 and all(0 < float(r["tversky"]) < 4 and float(r["cross_entropy"]) > 0 for r in log)
    assert json.loads((seg_out / "validation.json").read_text()) == {}  # the held-out case has no labels
    data = build_data(tiny(common, seg_out), init_distributed("cpu"), context=0)
    scores = validation_dice(segmenter, data.train_cases[:1], data.modalities, data.norms, data.fill,
                             torch.device("cpu"), 16)
    (case_scores,) = scores.values()
    assert set(case_scores) == {"ET", "TC", "WT"} and all(0 <= v <= 1 for v in case_scores.values())
    assert dice(3, 1, 2) == 6 / 9 and dice(0, 0, 0) == 1.0
    with pytest.raises(ConfigError, match="loss.segmenter"):
        fit(tiny(common, gan_out, "loss.tversky=5"))
    fit(tiny(common, gan_out, "loss.tversky=5", f"loss.segmenter={seg_out / 'segmenter'}", "train.max_steps=2",
             "train.batch_size=2"))
    rows = read_csv(gan_out / "log.csv")
    assert all(0 < float(r["tversky"]) < 4 for r in rows)  # sum of four per-class terms, each in [0, 1]


def test_model_init_starts_a_run_from_a_generator_checkpoint(common, tmp_path):
    first = fit(tiny(common, tmp_path / "first", "train.max_steps=2"))
    source = weights(first / "generator")
    ctx = init_distributed("cpu")
    try:
        run = GanRun(tiny(common, tmp_path / "second", f"model.init={first / 'generator'}"), ctx, resume=False)
        state = run.generator.state_dict()
        assert state.keys() == source.keys()
        for name, value in source.items():
            torch.testing.assert_close(state[name], value)
        other = tiny(common, tmp_path / "third", f"model.init={first / 'generator'}", "model.generator.n_layers=2")
        with pytest.raises(ConfigError, match="another architecture"):
            GanRun(other, ctx, resume=False)
    finally:
        shutdown(ctx)


def test_training_clock_sums_the_seconds_of_resumed_segments(tmp_path):
    net = torch.nn.Linear(2, 2)
    first = TrainingClock("2026-01-01T00:00:00", origin=time.monotonic() - 5.0)  # trained 5 s so far
    save_training(tmp_path, {"model": net}, 3, {"a": 1}, 10, first)
    later = TrainingClock("2026-01-02T00:00:00")
    assert restore_training(tmp_path, {"model": net}, {"a": 1}, 10, later) == 3
    assert later.started == "2026-01-01T00:00:00" and 5.0 <= later.seconds < 6.0
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    save_state(tmp_path, {k: v for k, v in state.items() if k != "clock"})  # a state from before clocks were kept
    fresh = TrainingClock("2026-01-03T00:00:00")
    restore_training(tmp_path, {"model": net}, {"a": 1}, 10, fresh)
    assert fresh.started == "2026-01-03T00:00:00" and fresh.seconds < 1.0

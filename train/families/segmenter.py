"""Training of the slice segmenter that the generator's focal Tversky term runs frozen.

Focal Tversky loss (`train.losses.FocalTverskyLoss`, the same settings as the GAN term: `loss.tversky_*`), plus
`loss.segmenter_cross_entropy` x pixel-wise cross-entropy, on the centre slices of every modality, on slices whose tumour covers at least `data.min_tumour_fraction` of the
square slice (the thesis uses 0.1%). Adam with the warm-up + cosine schedule of `optim`. Single process or
`torchrun` (DDP), resumable like the GAN run; the run folder gets `log.csv`, `curves.png`, `state.pt` and, at
the end, `segmenter/` in the models checkpoint format and `validation.json`: the Dice of ET, TC and WT per
held-out case (`data.split`'s validation cases, or `data.val_fraction`), of the axial slices' labels stacked.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from conventions.normalization import Normalization
from conventions.regions import REGION_NAMES, region_mask
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.segmenter import SegmenterConfig, SliceSegmenter
from train.config import Config, ConfigError
from train.curves import CsvLog, plot_curves
from train.distributed import init_distributed, mean_over_ranks, shutdown
from train.losses import FocalTverskyLoss
from train.run import build_data, make_loader, now, prepare_output, provenance, total_steps
from train.data.cache import prepare_case
from train.data.cases import TrainCase
from train.data.sampler import ShardedBatches
from train.schedule import scaled_lr, set_lr, warmup_cosine
from train.state import Stateful, TrainingClock, restore_training, save_training


def fit_segmenter(cfg: Config, resume: bool = False, stop_after: int | None = None) -> Path:
    """Run (or resume) segmenter training as configured; returns the run folder."""
    ctx = init_distributed(cfg.run.device)
    try:
        clock = TrainingClock(now())
        out = prepare_output(cfg, ctx, resume)
        data = build_data(cfg, ctx, context=0)
        try:
            seg_cfg = SegmenterConfig(**{**cfg.model.segmenter, "in_channels": len(data.modalities)})
        except TypeError as err:
            raise ConfigError(f"model.segmenter: {err}") from None
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = SliceSegmenter(seg_cfg).to(ctx.device)
        global_batch = cfg.train.batch_size * ctx.world_size
        peak = scaled_lr(cfg.optim.lr, global_batch, cfg.optim.reference_batch)
        optimizer = torch.optim.Adam(model.parameters(), lr=peak, betas=tuple(cfg.optim.betas))
        batches = ShardedBatches(len(data.dataset), cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.train.seed)
        total = total_steps(cfg, batches.steps_per_epoch)
        parts: dict[str, Stateful] = {"model": model, "optimizer": optimizer}
        step = restore_training(out, parts, cfg.to_dict(), len(data.dataset), clock) if resume else 0
        net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) \
            if ctx.distributed else model
        if cfg.train.compile:
            net = torch.compile(net)
        loss_fn = FocalTverskyLoss(cfg.loss.tversky_alpha, cfg.loss.tversky_beta, cfg.loss.tversky_gamma)
        warmup = max(math.ceil(cfg.optim.warmup_fraction * total), 1)
        log = CsvLog(out / "log.csv", step if resume else None) if ctx.is_main else None

        def checkpoint() -> None:
            if ctx.is_main:
                save_training(out, parts, step, cfg.to_dict(), len(data.dataset), clock)
                plot_curves(out / "log.csv", out / "curves.png")

        stop = min(total, stop_after) if stop_after is not None else total
        batches.start, batches.stop = step, stop
        amp = cfg.train.amp and ctx.device.type == "cuda"
        for batch in tqdm(make_loader(data.dataset, batches, cfg, ctx.device), total=stop, initial=step,
                          desc="segmenter", unit="step", disable=not (ctx.is_main and cfg.run.progress)):
            x = batch["image"].to(ctx.device, non_blocking=True)
            labels = batch["seg"].to(ctx.device, non_blocking=True)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            tversky = loss_fn(logits, labels)
            cross_entropy = F.cross_entropy(logits.float(), labels.long())
            loss = tversky + cfg.loss.segmenter_cross_entropy * cross_entropy
            lr = warmup_cosine(step, total, peak, warmup, cfg.optim.min_lr_fraction)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            set_lr(optimizer, lr)
            optimizer.step()
            step += 1
            logs = mean_over_ranks({"tversky": float(tversky.detach()), "cross_entropy": float(cross_entropy.detach()),
                                    "lr": lr}, ctx)
            if log is not None:
                log.append({"step": step, **logs})
            if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and step < stop:
                checkpoint()
        checkpoint()
        if step == total and ctx.is_main:
            prov = provenance(cfg, data, step, global_batch, clock.started, clock.seconds)
            meta = CheckpointMeta(kind="segmenter", task=data.task.name, modalities=data.modalities,
                                  normalization=data.norms, views=tuple(cfg.data.views), provenance=prov)
            save_checkpoint(model, out / "segmenter", meta)
            scores = validation_dice(model, data.val_cases, data.modalities, data.norms, data.fill, ctx.device,
                                     cfg.run.validation_batch_size)
            (out / "validation.json").write_text(json.dumps(scores, indent=1))
            for case, dice in scores.items():
                print(f"validation {case}: " + ", ".join(f"Dice {r} {v:.4f}" for r, v in dice.items()))
        return out
    finally:
        shutdown(ctx)


def dice(tp: float, fp: float, fn: float) -> float:
    """2 TP / (2 TP + FP + FN); 1 when the region is absent from both prediction and truth (BraTS)."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


@torch.no_grad()
def validation_dice(model: torch.nn.Module, cases: Sequence[TrainCase], modalities: Sequence[str],
                    norms: Mapping[str, Normalization], fill: float, device: torch.device, batch_size: int
                    ) -> dict[str, dict[str, float]]:
    """Per labelled case, the Dice of each BraTS region (ET, TC, WT) of the labels predicted on every axial
    slice, counted over the whole volume; the model is left in train()."""
    model.eval()
    scores = {}
    for case in cases:
        (slab,) = prepare_case(case, modalities, norms, ["axial"])
        if slab.seg is None:
            continue
        counts = {r: np.zeros(3) for r in REGION_NAMES}  # TP, FP, FN
        for start in range(0, slab.shape[0], batch_size):
            pairs = [slab.full_slices(i, 0, fill) for i in range(start, min(start + batch_size, slab.shape[0]))]
            x = torch.from_numpy(np.stack([image for image, _ in pairs])).to(device)
            predicted = model(x).argmax(1).cpu().numpy()
            truth = np.stack([labels for _, labels in pairs])
            for r in REGION_NAMES:
                p, t = region_mask(predicted, r), region_mask(truth, r)
                counts[r] += [np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)]
        scores[case.name] = {r: dice(*counts[r]) for r in REGION_NAMES}
    model.train()
    return scores

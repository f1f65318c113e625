"""One training batch of the HF-GAN recipe (thesis 4.5, Algorithm 1), separate from the run driver.

For each target modality in turn (a random first one, then the others in order), per sample: mask the target
(and, with `random_subsets`, a random part of the rest), generate it, score it (L1, brain SSIM, adversarial and
modality classification through the discriminator, focal Tversky through a frozen segmenter), run the cycle
pass (the synthesis replaces the target's centre slice, another available modality is masked and generated:
cycle L1 against its ground truth, cosine between the two bottlenecks; with 2.5D context the target's
neighbouring slices stay real), one backward, gradient clipping, a generator step; then a discriminator step
on the real target slice and the detached synthesis (BCE, plus modality classification of the real slice).
Every random draw comes from a generator seeded by (seed, step, rank), so a resumed run repeats the same draws.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.config import LossConfig
from train.losses import AdversarialLoss, FeatureCosineLoss, FocalTverskyLoss, MaskedSSIMLoss
from train.schedule import set_lr

SSIM_REGIONS = ("brain", "healthy", "tumour")
GENERATOR_TERMS = ("l1", "ssim", "adversarial", "classification", "tversky", "cycle", "feature")
"""The generator loss terms, by their `LossConfig` weight names (a weight of 0 skips the term)."""


class FeatureGenerator(nn.Module):
    """The generator with `forward` returning (output, bottleneck), so DDP and torch.compile wrap that call."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, available: torch.Tensor, target: torch.Tensor,
                view: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.generator.forward_with_features(x, available, target, view)


@dataclass
class GanModels:
    """`generator`: a `FeatureGenerator`, possibly wrapped (DDP, compile). `discriminator`: possibly wrapped,
    used for its own step; `discriminator_raw`: the bare module the generator's losses run through, frozen
    meanwhile. `segmenter`: frozen, or None when the Tversky term is off."""

    generator: nn.Module
    discriminator: nn.Module
    discriminator_raw: nn.Module
    segmenter: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """CPU random generator for one step of one rank."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def availability(batch: int, modalities: int, target: int, random_subsets: bool, gen: torch.Generator,
                 inputs: torch.Tensor | None = None) -> torch.Tensor:
    """(B, M) bool: every input modality (`inputs`, (M,) bool; default all) but `target`, or per sample a uniform
    count 1..n of those n at random."""
    candidates = torch.ones(modalities, dtype=torch.bool) if inputs is None else inputs.clone()
    candidates[target] = False
    available = candidates.expand(batch, modalities).clone()
    if random_subsets:
        scores = torch.rand(batch, modalities, generator=gen)
        scores[:, ~candidates] = 2.0  # ranks last
        rank = scores.argsort(dim=1).argsort(dim=1)
        count = torch.randint(1, int(candidates.sum()) + 1, (batch, 1), generator=gen)
        available = rank < count
    return available


def cycle_target(available: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B,) one available modality per sample, uniformly."""
    scores = torch.rand(available.shape, generator=gen).masked_fill(~available, -1.0)
    return scores.argmax(dim=1)


class GanUpdate:
    """Runs one batch (every target modality); returns the mean of each loss term, and of the learning rate,
    over the modalities' optimizer steps.

    targets: the model indices trained as targets (default all); inputs: (M,) bool of the modalities that may be
    given (default all), e.g. only the ultrasound for us2mr."""

    def __init__(self, models: GanModels, weights: LossConfig, lr: Callable[[int], float], d_lr_factor: float,
                 grad_clip: float, context: int, fill: float, seed: int, rank: int, random_subsets: bool,
                 amp: bool, channels_last: bool, use_view: bool, targets: Sequence[int] | None = None,
                 inputs: torch.Tensor | None = None) -> None:
        if any(r not in SSIM_REGIONS for r in weights.ssim_regions):
            raise ValueError(f"loss.ssim_regions must be among {', '.join(SSIM_REGIONS)}, got {weights.ssim_regions}")
        if not any(getattr(weights, name) for name in GENERATOR_TERMS):
            raise ValueError(f"every generator loss weight is 0 ({', '.join(GENERATOR_TERMS)})")
        self.models, self.weights, self.lr, self.d_lr_factor = models, weights, lr, d_lr_factor
        self.grad_clip, self.context, self.fill, self.seed, self.rank = grad_clip, context, fill, seed, rank
        self.random_subsets, self.amp, self.channels_last, self.use_view = random_subsets, amp, channels_last, use_view
        self.targets, self.inputs = (None if targets is None else list(targets)), inputs
        self.adversarial = AdversarialLoss()
        self.feature = FeatureCosineLoss()
        self.ssim = MaskedSSIMLoss()
        self.tversky = FocalTverskyLoss(weights.tversky_alpha, weights.tversky_beta, weights.tversky_gamma)

    def __call__(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, float]:
        x, seg = batch["image"], batch["seg"]
        view = batch["view"] if self.use_view else None
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        k, per = self.context, 2 * self.context + 1
        truth = x[:, k::per]  # (B, M, H, W) centre slices
        b, m = truth.shape[:2]
        targets = self.targets or list(range(m))
        n = len(targets)
        gen = step_generator(self.seed, step, self.rank)
        first = int(torch.randint(n, (1,), generator=gen))
        totals: dict[str, torch.Tensor] = {}
        lrs = []
        for i in range(n):
            target = targets[(first + i) % n]
            available = availability(b, m, target, self.random_subsets, gen, self.inputs)
            second = cycle_target(available, gen)
            lrs.append(self.lr(step * n + i))
            logs = self._modality_step(x, truth, seg, view, target, available.to(x.device), second.to(x.device),
                                       lrs[-1])
            for name, value in logs.items():
                totals[name] = totals.get(name, 0.0) + value / n
        values = torch.stack(list(totals.values())).tolist()  # one device sync per batch
        return {**dict(zip(totals, values)), "lr": sum(lrs) / n}

    def _autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp and device.type == "cuda")

    def _modality_step(self, x: torch.Tensor, truth: torch.Tensor, seg: torch.Tensor, view: torch.Tensor | None,
                       target: int, available: torch.Tensor, second: torch.Tensor, lr: float
                       ) -> dict[str, torch.Tensor]:
        """One generator step and one discriminator step for `target` (`second`: the cycle pass's target per
        sample); the detached loss values."""
        md, w = self.models, self.weights
        b, device = x.shape[0], x.device
        tgt = torch.full((b,), target, dtype=torch.long, device=device)
        real = truth[:, target:target + 1]
        terms: dict[str, torch.Tensor] = {}
        with self._autocast(device):
            out, z1 = md.generator(x, available, tgt, view)
        fake = out.float()
        if w.l1:
            terms["l1"] = F.l1_loss(fake, real)
        if w.ssim:
            brain = real > self.fill
            tumour = (seg > 0)[:, None]
            masks = {"brain": brain, "healthy": brain & ~tumour, "tumour": tumour}
            terms["ssim"] = self.ssim(fake, real, [masks[r] for r in w.ssim_regions])
        if w.adversarial or w.classification:
            md.discriminator_raw.requires_grad_(False)
            with self._autocast(device):
                patch, cls = md.discriminator_raw(out)
            md.discriminator_raw.requires_grad_(True)
            if w.adversarial:
                terms["adversarial"] = self.adversarial(patch, real=True)
            if w.classification:
                terms["classification"] = F.cross_entropy(cls.float(), tgt)
        if w.tversky:
            completed = truth.clone()
            completed[:, target] = fake[:, 0]
            with self._autocast(device):
                logits = md.segmenter(completed)
            terms["tversky"] = self.tversky(logits, seg)
        if w.cycle or w.feature:
            x2 = x.clone()
            x2[:, target * (2 * self.context + 1) + self.context] = fake[:, 0]
            available2 = available.clone()
            available2[:, target] = True
            available2[torch.arange(b, device=device), second] = False
            with self._autocast(device):
                out2, z2 = md.generator(x2, available2, second, view)
            if w.cycle:
                terms["cycle"] = F.l1_loss(out2.float(), truth[torch.arange(b, device=device), second][:, None])
            if w.feature:
                terms["feature"] = self.feature(z1, z2)
        total = sum(getattr(w, name) * value for name, value in terms.items())

        md.opt_g.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(md.generator.parameters(), self.grad_clip)
        set_lr(md.opt_g, lr)
        md.opt_g.step()

        logs = {**{name: value.detach() for name, value in terms.items()}, "g_total": total.detach()}
        if not (w.adversarial or w.classification):  # nothing uses the discriminator: leave it untrained
            return logs
        with self._autocast(device):
            patch, cls = md.discriminator(torch.cat([real, fake.detach()]))
        patch = patch.float()
        d_total = 0.5 * (self.adversarial(patch[:b], real=True) + self.adversarial(patch[b:], real=False)) \
            + F.cross_entropy(cls[:b].float(), tgt)
        md.opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        set_lr(md.opt_d, lr * self.d_lr_factor)
        md.opt_d.step()
        return {**logs, "d_total": d_total.detach()}

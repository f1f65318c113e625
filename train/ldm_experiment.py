"""Document 001's experiment end to end, resumable: `python -m train.ldm_experiment`.

1. The autoencoder and the latent diffusion model of each domain: mask and image (the two-step framework) and,
   with `--modes ... one-step`, joint image + mask (the one-step comparison).
2. The downstream segmenter on the real training slices alone (R = 0).
3. `max(R) x (real training slices)` synthetic pairs from the two-step bundle (`infer.augment`).
4. The downstream segmenters with R x as many synthetic pairs as real ones, for the other R.
5. `infer.evaluate.generative` for each mode: FID / KID (with `--features`), morphological fidelity judged by the
   R = 0 segmenter, and the size-shape relation, against the split's validation cases.
6. `report.md` in the output folder: every table, the training time of each network and the command, with
   `pairs.png`: real validation pairs and generated ones of each mode (the mask's outline in red).

A stage whose checkpoint is in the bundle is reused; one whose run folder holds a resumable state continues
from it; so stopping the command and running it again picks up where it stopped. The three stage configs are
the ldm family's (`train/configs/ldm-*-cpu.yaml` by default); `--output` replaces their `run.output`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from infer.augment import RECORD_FILE, augment, generate, load_generator, pair_seed, read_pairs
from infer.engine.cases import read_split
from infer.evaluate.generative import main as evaluate_generative, real_pairs
from infer.evaluate.report import markdown_table
from models.checkpoint import CONFIG_FILE, CheckpointError, read_config
from train.__main__ import fit_family
from train.config import ConfigError, config_data, from_dict
from train.distributed import pick_device
from train.families.ldm import LDMTrainingConfig, bundle_entry, bundle_folder, run_folder
from train.state import STATE_FILE

CONFIGS = Path(__file__).resolve().parent / "configs"
MODE_DOMAINS: dict[str, tuple[str, ...]] = {"two-step": ("mask", "image"), "one-step": ("joint",)}
"""The domains whose autoencoder and LDM (bundle entries `<domain>-autoencoder` and `<domain>`) each sampling
mode needs."""


@dataclass
class Experiment:
    """The command's arguments (`build_parser`)."""

    autoencoder: Path
    diffusion: Path
    downstream: Path
    output: Path
    modes: tuple[str, ...]
    ratios: tuple[int, ...]
    count: int
    steps: int
    guidance: float
    seed: int
    batch_size: int
    features: str | None
    overrides: tuple[str, ...]

    @property
    def bundle(self) -> Path:
        return bundle_folder(self.downstream_config(0))

    @property
    def synthetic(self) -> Path:
        return self.output / "synthetic"

    @property
    def device(self) -> torch.device:
        """The downstream config's run.device, resolved."""
        return pick_device(self.downstream_config(0).run.device, 0)

    def downstream_config(self, ratio: int) -> LDMTrainingConfig:
        """The parsed downstream stage config for `ratio`."""
        return from_dict(LDMTrainingConfig, self.stage(self.downstream, f"data.ratio={ratio}",
                                                       f"data.synthetic={self.synthetic}"))

    def stage(self, path: Path, *overrides: str) -> dict[str, Any]:
        """A stage config with the command's overrides, `run.output` and the given ones."""
        return config_data(path, [*self.overrides, f"run.output={self.output}", "run.bundle=null", *overrides])


def _finished(entry: Path) -> bool:
    return (entry / CONFIG_FILE).is_file()


def fit_stage(data: dict[str, Any]) -> Path:
    """Train one stage unless its bundle entry exists; continue from its run folder's state when that has one.
    Returns the run folder."""
    cfg = from_dict(LDMTrainingConfig, data)
    entry, run = bundle_entry(cfg), run_folder(cfg)
    if _finished(entry):
        print(f"{entry.name}: trained before, reused", file=sys.stderr)
        return run
    resume = (run / STATE_FILE).is_file()
    print(f"{entry.name}: {'continuing' if resume else 'training'} ({run})", file=sys.stderr)
    fit_family(data, resume=resume)
    return run


def train_generators(exp: Experiment) -> None:
    """Step 1: every domain's autoencoder, then its LDM."""
    for domain in dict.fromkeys(d for mode in exp.modes for d in MODE_DOMAINS[mode]):
        fit_stage(exp.stage(exp.autoencoder, f"data.domain={domain}"))
        fit_stage(exp.stage(exp.diffusion, f"data.domain={domain}"))


def fit_downstream_run(exp: Experiment, ratio: int) -> dict[str, Any]:
    """Steps 2 and 4 for one R: the validation scores of its segmenter."""
    run = fit_stage(exp.downstream_config(ratio).to_dict())
    return json.loads((run / "validation.json").read_text())


def synthetic_pairs(exp: Experiment, count: int) -> dict[str, Any]:
    """Step 3: the record of at least `count` two-step pairs in `exp.synthetic`, generated unless a finished
    earlier run with the same settings holds enough (an unfinished one is discarded)."""
    record_path = exp.synthetic / RECORD_FILE
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        same = (record["mode"], record["seed"], record["steps"], record["guidance"]) == \
            ("two-step", exp.seed, exp.steps, exp.guidance)
        if same and record["count"] >= count:
            print(f"synthetic pairs: {record['count']} generated before, reused", file=sys.stderr)
            return record
        raise ConfigError(f"{exp.synthetic} holds {record['count']} pairs of other settings or fewer than {count}: "
                          "remove it or choose another --output")
    if exp.synthetic.exists():
        shutil.rmtree(exp.synthetic)
    return augment(exp.bundle, count, exp.synthetic, exp.guidance, exp.seed, exp.steps, exp.batch_size, "two-step",
                   exp.device)


def evaluate_mode(exp: Experiment, mode: str) -> dict[str, Any]:
    """Step 5 for one mode (stored in `generative-<mode>.json` and reused)."""
    path = exp.output / f"generative-{mode}.json"
    if not path.is_file():
        cfg = exp.downstream_config(0)
        if not cfg.data.split or not cfg.data.roots:
            raise ConfigError(f"{exp.downstream}: data.roots and data.split name the real validation cases")
        argv = ["--weights", str(exp.bundle), "--real", str(cfg.data.roots[0]), "--split", str(cfg.data.split),
                "--mode", mode, "--count", str(exp.count), "--steps", str(exp.steps), "--guidance",
                str(exp.guidance), "--seed", str(exp.seed), "--segmenter", str(bundle_entry(cfg)),
                "--output", str(path), "--device", str(exp.device)]
        if exp.features:
            argv += ["--features", exp.features]
        if evaluate_generative(argv) != 0:
            raise RuntimeError(f"python -m infer.evaluate.generative {' '.join(argv)} failed")
    return json.loads(path.read_text())


# -------------------------------------------------------------------------------------------------- report


PICTURE_PAIRS: int = 8
"""Pairs per row of `pairs.png`."""


def pairs_picture(rows: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: Path) -> Path:
    """One row per title: (N, 1, S, S) images in [-1, 1] with their {0, 1} masks outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(images) for images, _ in rows.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.7 * len(rows)), squeeze=False)
    for ax_row, (title, (images, masks)) in zip(axes, rows.items()):
        for k, ax in enumerate(ax_row):
            ax.axis("off")
            if k < len(images):
                ax.imshow(images[k, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
                if masks[k].any():
                    ax.contour(masks[k, 0].numpy(), levels=[0.5], colors="red", linewidths=0.7)
        ax_row[0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def picture_rows(exp: Experiment) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Evenly spaced real validation pairs, the first synthetic two-step pairs and, for the one-step mode,
    as many of its pairs (seeds as the evaluation's)."""
    data = exp.downstream_config(0).data
    generator = load_generator(exp.bundle, exp.modes[0], exp.device)
    lead = generator.image or generator.joint
    images, masks = real_pairs(data.roots[0], read_split(data.split)[1], generator.modality,
                               lead.denoiser.meta.normalization[generator.modality], generator.size, data.region)
    pick = torch.linspace(0, len(images) - 1, PICTURE_PAIRS).long()
    rows = {"real (validation)": (images[pick], masks[pick])}
    if (exp.synthetic / RECORD_FILE).is_file():
        rows["two-step (synthetic set)"] = read_pairs(exp.synthetic, PICTURE_PAIRS)
    if "one-step" in exp.modes:
        one_step = load_generator(exp.bundle, "one-step", exp.device)
        x, m = generate(one_step, [pair_seed(exp.seed, i) for i in range(PICTURE_PAIRS)], exp.steps, 0.0, exp.device)
        rows["one-step"] = (x.cpu(), m.cpu())
    return rows


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def training_table(bundle: Path) -> list[str]:
    """Each bundled network: steps, training minutes, parameters' size on disk."""
    rows = []
    for entry in sorted(p for p in bundle.iterdir() if _finished(p) and not p.name.endswith("-discriminator")):
        try:
            prov = read_config(entry).get("provenance", {})
        except CheckpointError:
            continue
        size = sum(f.stat().st_size for f in entry.iterdir()) / 2 ** 20
        rows.append([entry.name, prov.get("steps", "?"), _num(prov.get("time", {}).get("train_seconds", 0) / 60, 1),
                     f"{size:.1f}"])
    return markdown_table(["network", "steps", "training (min)", "size (MB)"], rows)


def report(exp: Experiment, command: str, generative: Mapping[str, Mapping[str, Any]],
           downstream: Sequence[Mapping[str, Any]]) -> str:
    """The markdown report of the experiment."""
    lines = ["# Mask-guided latent diffusion on real brains (document 001)", "", "```bash", command, "```", "",
             "## Training", "", *training_table(exp.bundle), "", "## Generated pairs", "",
             f"{exp.count} pairs per mode (seed {exp.seed}, {exp.steps} DDIM steps, guidance omega "
             f"{_num(exp.guidance, 1)} for the two-step image LDM) against the axial tumour slices of the "
             "validation cases. Morphological fidelity: Dice / HD95 (mm) between each non-empty conditioning mask "
             "and the R = 0 segmenter's mask of the generated image; chance: the same with the masks shuffled "
             "between images; real: the segmenter on the real validation pairs; empty: generated pairs whose "
             "mask is empty (not scored). \"image LDM on real masks\": the second step alone, painting images "
             "around real validation masks.", ""]
    rows = []
    for mode, rep in generative.items():
        fid, iq = rep.get("morphological_fidelity", {}), rep["image_quality"]
        real = rep.get("real_reference", {})
        rows.append([mode, _num(fid.get("dice")), _num(fid.get("chance_dice")), _num(fid.get("hd95"), 1),
                     _num(fid.get("chance_hd95"), 1), _num(real.get("dice")), _num(real.get("hd95"), 1),
                     fid.get("empty"), _num(iq["fid"], 1), _num(iq["kid"], 4)])
        if "real_mask_conditioning" in rep:
            own = rep["real_mask_conditioning"]
            rows.append([f"{mode}: image LDM on real masks", _num(own.get("dice")), _num(own.get("chance_dice")),
                         _num(own.get("hd95"), 1), _num(own.get("chance_hd95"), 1), "", "", own.get("empty"), "",
                         ""])
    lines += markdown_table(["mode", "Dice", "chance Dice", "HD95", "chance HD95", "real Dice", "real HD95", "empty",
                             "FID", "KID"], rows)
    lines += ["", "Size-shape relation (Tables 3-4): median tumour size (share of the slice) and ESD, Wilcoxon "
              "rank-sum p against the real masks; log ESD = b0 + b1 log size, t-test p of equal slopes.", ""]
    rows = []
    for mode, rep in generative.items():
        ss = rep["size_shape"]
        if "note" in ss:
            rows.append([mode, ss["note"], "", "", "", "", "", ""])
            continue
        rows.append([mode, f"{ss['size']['real_median']:.4f} / {ss['size']['generated_median']:.4f}",
                     _num(ss["size"]["p"]), f"{ss['esd']['real_median']:.1f} / {ss['esd']['generated_median']:.1f}",
                     _num(ss["esd"]["p"]), _num(ss["real_fit"]["beta1"]), _num(ss["generated_fit"]["beta1"]),
                     _num(ss["slope_p"])])
    lines += markdown_table(["mode", "size real / generated", "p", "ESD real / generated", "p", "b1 real",
                             "b1 generated", "slope p"], rows)
    lines += ["", "![real and generated pairs](pairs.png)", "", "## Downstream segmentation", "",
              "A FLAIR-only two-class slice segmenter trained on the real training slices plus R x as many "
              "two-step synthetic pairs, scored on the validation cases' tumour slices (mean Dice and HD95 in mm "
              "per slice).", ""]
    lines += markdown_table(["R", "real slices", "synthetic slices", "validation slices", "Dice", "HD95"],
                            [[d["ratio"], d["real_slices"], d["synthetic_slices"], d["validation_slices"],
                              _num(d["dice"]), _num(d["hd95"], 2)] for d in downstream])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- command


def run(exp: Experiment, command: str) -> Path:
    """Every step (module docstring); returns the report's path."""
    if 0 not in exp.ratios:
        raise ConfigError("--ratios must include 0 (its segmenter judges the generated images)")
    train_generators(exp)
    downstream = [fit_downstream_run(exp, 0)]
    if max(exp.ratios) > 0:
        synthetic_pairs(exp, max(exp.ratios) * downstream[0]["real_slices"])
        downstream += [fit_downstream_run(exp, r) for r in sorted(set(exp.ratios) - {0})]
    generative = {mode: evaluate_mode(exp, mode) for mode in exp.modes}
    pairs_picture(picture_rows(exp), exp.output / "pairs.png")
    path = exp.output / "report.md"
    path.write_text(report(exp, command, generative, downstream))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.ldm_experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", type=Path, default=CONFIGS / "ldm-autoencoder-cpu.yaml")
    p.add_argument("--diffusion", type=Path, default=CONFIGS / "ldm-diffusion-cpu.yaml")
    p.add_argument("--downstream", type=Path, default=CONFIGS / "ldm-downstream-cpu.yaml")
    p.add_argument("--output", type=Path, default=Path("runs/ldm-cpu"), help="run folder of every stage")
    p.add_argument("--modes", nargs="+", choices=tuple(MODE_DOMAINS), default=["two-step"])
    p.add_argument("--ratios", nargs="+", type=int, default=[0, 1, 2, 3], help="R: synthetic pairs per real one")
    p.add_argument("--count", type=int, default=200, help="pairs generated per mode for the evaluation")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=3.0, help="omega of the two-step image LDM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="pairs generated at once")
    p.add_argument("--features", help="TorchScript feature network for FID / KID")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override in every stage config (repeatable), e.g. run.device=cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exp = Experiment(args.autoencoder, args.diffusion, args.downstream, args.output, tuple(args.modes),
                     tuple(args.ratios), args.count, args.steps, args.guidance, args.seed, args.batch_size,
                     args.features, tuple(args.overrides))
    command = "python -m train.ldm_experiment " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        path = run(exp, command)
    except (ConfigError, CheckpointError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

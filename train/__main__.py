"""Command line: `python -m train {stats,prepare,fit,segmenter,cache-volumes,refiner,full3d,segmenter3d} ...`
(fit and segmenter also under torchrun; the volumetric commands take `train.config.VolumeConfig` files).

Config keys are overridden with `--set key.sub=value` (repeatable) or directly as `--key.sub=value` /
`--key.sub value`; values are YAML (`0.001`, `[axial, sagittal]`, `null`).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from infer.cases import CaseError
from train.cache import load_slabs
from train.cases import find_cases, get_task
from train.config import Config, ConfigError, VolumeConfig, load_config
from train.distributed import pick_device
from train.generator3d import fit_generator3d
from train.loop import fit
from train.refiner import cache_generator_volumes, fit_refiner
from train.run import normalization, now, training_cases
from train.segmenter import fit_segmenter
from train.segmenter3d import fit_segmenter3d
from train.stats import dataset_statistics, save_stats

VOLUME_COMMANDS: dict[str, str] = {
    "cache-volumes": "cache the training cases and the frozen 2D generator's volumes (data.cache_dir)",
    "refiner": "train the residual 3D refiner on the cached 2D generator volumes",
    "full3d": "train the full-3D patch generator",
    "segmenter3d": "train the 3D BraTS tumour segmenter (python -m infer.segment)",
}
RESUMABLE_VOLUME_COMMANDS: tuple[str, ...] = ("segmenter3d",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="per-modality intensity statistics of a dataset (JSON for data.stats)")
    stats.add_argument("--data", nargs="+", required=True, help="BraTS-layout folder(s)")
    stats.add_argument("--output", required=True, help="JSON file to write")
    stats.add_argument("--task", default="brasyn")
    stats.add_argument("--percentile", type=float, default=99.5)
    stats.add_argument("--no-progress", action="store_true")
    for name, text in (("prepare", "prepare the slice cache (data.cache_dir) of the training cases"),
                       ("fit", "train the generator and discriminator (GAN)"),
                       ("segmenter", "train the slice segmenter used by the Tversky loss")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="YAML config (train/configs/*.yaml); defaults when omitted")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable)")
        if name != "prepare":
            p.add_argument("--resume", action="store_true", help="continue the run in run.output")
            p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps in total")
        if name == "fit":
            p.add_argument("--export", action="store_true",
                           help="write generator/ and discriminator/ from the run's latest state, without training")
    for name, text in VOLUME_COMMANDS.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="YAML config (train/configs/refiner.yaml, full3d.yaml, segmenter3d.yaml); "
                                        "defaults when omitted")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable)")
        if name in RESUMABLE_VOLUME_COMMANDS:
            p.add_argument("--resume", action="store_true", help="continue the run in run.output")
            p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps in total")
    return parser


def dotted_overrides(extra: Sequence[str]) -> list[str]:
    """`--a.b=v` / `--a.b v` tokens as KEY=VALUE overrides."""
    out, tokens = [], list(extra)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or "." not in token.split("=")[0]:
            raise ConfigError(f"unrecognised argument {token!r}")
        if "=" in token:
            out.append(token[2:])
        elif tokens:
            out.append(f"{token[2:]}={tokens.pop(0)}")
        else:
            raise ConfigError(f"{token} needs a value")
    return out


def run_stats(args: argparse.Namespace) -> None:
    task = get_task(args.task)
    cases = find_cases(args.data, task)
    norms = dataset_statistics(cases, task.modalities, args.percentile, progress=not args.no_progress)
    save_stats(args.output, norms, {"data": list(args.data), "cases": len(cases), "percentile": args.percentile,
                                    "created": now()})
    print(f"wrote {args.output} ({len(cases)} cases)")


def run_prepare(cfg: Config) -> None:
    if cfg.data.cache_dir is None:
        raise ConfigError("prepare needs data.cache_dir")
    task = get_task(cfg.data.task)
    train_cases, _ = training_cases(cfg, task)
    slabs = load_slabs(train_cases, task.modalities, normalization(cfg, task), cfg.data.views, cfg.data.cache_dir,
                       progress=cfg.run.progress)
    print(f"{cfg.data.cache_dir}: {len(slabs)} case views ready")


def run_volumetric(command: str, cfg: VolumeConfig, args: argparse.Namespace) -> None:
    if command == "segmenter3d":
        print(f"run folder: {fit_segmenter3d(cfg, args.resume, args.stop_after)}")
    elif command == "cache-volumes":
        cases, _ = cache_generator_volumes(cfg, pick_device(cfg.run.device, 0))
        print(f"{cfg.data.cache_dir}: {len(cases)} case(s) with the generator's volumes ready")
    elif command == "refiner":
        print(f"run folder: {fit_refiner(cfg)}")
    else:
        print(f"run folder: {fit_generator3d(cfg)}")


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    try:
        if args.command == "stats":
            if extra:
                raise ConfigError(f"unrecognised arguments: {' '.join(extra)}")
            run_stats(args)
            return 0
        overrides = [*args.overrides, *dotted_overrides(extra)]
        if args.command in VOLUME_COMMANDS:
            run_volumetric(args.command, load_config(args.config, overrides, VolumeConfig), args)
            return 0
        cfg = load_config(args.config, overrides)
        if args.command == "prepare":
            run_prepare(cfg)
        elif args.command == "fit":
            print(f"run folder: {fit(cfg, args.resume, args.stop_after, args.export)}")
        else:
            print(f"run folder: {fit_segmenter(cfg, args.resume, args.stop_after)}")
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, CaseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

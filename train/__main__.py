"""Command line: `python -m train {stats,prepare,cache-volumes,fit,segmenter,refiner,full3d,segmenter3d} ...`.

`fit --config C` trains the model family the config names (`model.family`, looked up in `models.families`,
which names the family's config schema and trainer); `segmenter`, `refiner`, `full3d` and `segmenter3d` are
`fit` for that family. `stats`, `prepare` and `cache-volumes` prepare data. fit (GAN families) and segmenter
also run under torchrun.

Config keys are overridden with `--set key.sub=value` (repeatable) or directly as `--key.sub=value` /
`--key.sub value`; values are YAML (`0.001`, `[axial, sagittal]`, `null`).
"""
from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infer.engine.cases import CaseError
from models.families import FAMILIES, get_family, resolve
from train.data.cache import load_slabs
from train.data.cases import find_cases, get_task
from train.config import Config, ConfigError, VolumeConfig, config_data, config_family, from_dict, load_config
from train.distributed import pick_device
from train.families.refiner import cache_generator_volumes
from train.run import normalization, now, training_cases
from train.data.stats import dataset_statistics, save_stats

FAMILY_COMMANDS: tuple[str, ...] = ("segmenter", "refiner", "full3d", "segmenter3d")
"""Commands that are `fit` for the family of the same name."""

TRAINER_OPTIONS: tuple[str, ...] = ("resume", "stop_after", "export")
"""Options of `fit` that a family's trainer receives when its signature declares them."""


def _config_options(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--config", help=f"YAML config ({text}); defaults when omitted")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")


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
    _config_options(sub.add_parser("prepare", help="prepare the slice cache (data.cache_dir) of the training cases"),
                    "train/configs/*.yaml")
    _config_options(sub.add_parser("cache-volumes", help="cache the training cases and the frozen 2D generator's "
                                                         "volumes (data.cache_dir) for the refiner"),
                    "train/configs/refiner.yaml")
    families = "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values())
    commands = {"fit": f"train the model family the config names (model.family; {families})",
                **{f: f"fit the {f} family: {FAMILIES[f].description}" for f in FAMILY_COMMANDS}}
    for name, text in commands.items():
        p = sub.add_parser(name, help=text)
        _config_options(p, "train/configs/*.yaml")
        p.add_argument("--resume", action="store_true", help="continue the run in run.output")
        p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps in total")
        p.add_argument("--export", action="store_true",
                       help="write the final checkpoints from the run's latest resumable state, without training")
    return parser


def run_fit(args: argparse.Namespace, overrides: Sequence[str]) -> Path:
    """Train the family the config names (or the command's): its schema parses the config, its trainer runs with
    the options it declares."""
    data = config_data(args.config, overrides)
    forced = args.command if args.command in FAMILY_COMMANDS else None
    if forced is not None:
        named = (data.get("model") or {}).get("family", forced) if isinstance(data.get("model"), dict) else forced
        if named != forced:
            raise ConfigError(f"the config trains the {named} family, not {forced}: use python -m train fit")
        data = {**data, "model": {**(data.get("model") or {}), "family": forced}}
    return fit_family(data, **{name: getattr(args, name) for name in TRAINER_OPTIONS})


def fit_family(data: dict[str, Any], **options: Any) -> Path:
    """Train the family a config's dict names: its schema parses `data`, its trainer runs with the `options`
    (from `TRAINER_OPTIONS`) that are set, each refused when the trainer does not declare it."""
    try:
        family = get_family(config_family(data))
    except ValueError as err:
        raise ConfigError(f"model.family: {err}") from None
    cfg = from_dict(resolve(family.schema), data)
    trainer = resolve(family.trainer)
    accepted = inspect.signature(trainer).parameters
    unsupported = [name for name, value in options.items() if value not in (None, False) and name not in accepted]
    if unsupported:
        flags = ", ".join("--" + name.replace("_", "-") for name in unsupported)
        raise ConfigError(f"the {family.name} trainer does not take {flags}")
    return trainer(cfg, **{name: value for name, value in options.items() if name in accepted})


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


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    try:
        if args.command == "stats":
            if extra:
                raise ConfigError(f"unrecognised arguments: {' '.join(extra)}")
            run_stats(args)
            return 0
        overrides = [*args.overrides, *dotted_overrides(extra)]
        if args.command == "prepare":
            run_prepare(load_config(args.config, overrides))
        elif args.command == "cache-volumes":
            cfg = load_config(args.config, overrides, VolumeConfig)
            cases, _ = cache_generator_volumes(cfg, pick_device(cfg.run.device, 0))
            print(f"{cfg.data.cache_dir}: {len(cases)} case(s) with the generator's volumes ready")
        else:
            print(f"run folder: {run_fit(args, overrides)}")
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, CaseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

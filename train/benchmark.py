"""The generator benchmark of document 000: `python -m train.benchmark --config C [--resume] [--set KEY=VALUE]`.

For each model family x inference regime of the config: train at the budget (`steps` optimizer steps per
training stage, through the family's own trainer as `python -m train fit` runs it), synthesise the held-out
cases through the inference engine (the predictor `python -m infer` builds), and score them:

- fidelity (`infer.evaluate.fidelity`): SSIM (slice-wise, foreground slices), PSNR, MAE, LPIPS (not computed,
  "n/a", without its two weight files: `infer.evaluate.lpips`);
- downstream (`infer.evaluate.downstream`): the segmenter (`segmenter`, default the bundled weights/segment) on
  each case with the synthesised modality in place of the real one and the other real modalities as they are,
  Dice / NSD at 2 mm / HD95 per region against the reference labels, and the utility ratio against the same
  segmenter on the real images (`infer.evaluate.statistics.utility_ratio`). Only for BraTS tasks and cases that
  have all four modalities and labels;
- the copy baseline as one more row (`infer.evaluate.baselines.copy_baseline`: the input as the synthesis);
- per run: means with 95 % bootstrap intervals over cases, parameters, seconds per case; per metric a paired
  Wilcoxon test of every run against the best (with the least p-value the number of cases allows); across runs,
  Pearson and Spearman correlations of each fidelity metric with the utility; a plot.

Regimes (`REGIMES`): 2d and 2.5d train the family's slice config with 0 or 1 neighbouring slice per side; 2d+3d
trains the family's refiner config on the 2d generator (the same trained 2d run); 3d trains the family's volume
config. A family entry names its configs (paths relative to the benchmark config); a regime whose config is not
given is reported as not run. A training stage's folder is named by a hash of its resolved config, so identical
stages (e.g. one full-3D config shared by several families) train once.

Held-out cases: the validation cases of `data.split` (or `data.val_cases`) under `data.roots`, and each folder of
`data.extra`. Output (`output`): `train/` (the runs), `results/<family>-<regime>/` (inputs, predictions,
`result.json`), `per_case.csv`, `summary.csv`, `report.md`, `fidelity.png`, `utility.png`. `--report-only` writes
the report of the runs finished so far without training anything. With `--resume` finished stages and runs are
skipped (an interrupted GAN training continues from its last state). A run that
fails is reported and the others go on; the exit status is then 1 (2: a configuration or setup error).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import math
import shutil
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from conventions.naming import BRATS_2023, SEGMENTATION, Naming
from conventions.regions import REGION_NAMES
from conventions.tasks import BRASYN, BRATS_MODALITIES, TaskSpec
from infer.engine.cases import CaseFiles, case_naming, discover_cases, read_split
from infer.engine.refine import NO_REFINER
from infer.engine.runner import run as run_cases
from infer.evaluate.baselines import copy_baseline, copy_source
from infer.evaluate.downstream import Segmenter, score_labels
from infer.evaluate.fidelity import FIDELITY_METRICS, LOWER_IS_BETTER, fidelity_metrics
from infer.evaluate.lpips import LINEAR_FILE, TRUNK_FILE, LPIPS, load_lpips
from infer.evaluate.report import markdown_table
from infer.evaluate.scoring import load_volume, prediction_file
from infer.evaluate.statistics import (bootstrap_ci, correlations, paired_wilcoxon, smallest_wilcoxon_p,
                                       utility_ratio)
from infer.predictors import PredictorOptions, build_predictor
from models.checkpoint import read_config
from models.families import Family, get_family, resolve
from train.__main__ import fit_family
from train.config import ConfigError, config_data, config_family, from_dict
from train.data.cases import get_task
from train.distributed import pick_device

DOWNSTREAM_METRICS: tuple[str, ...] = (*(f"dice_{r}" for r in REGION_NAMES), *(f"nsd2mm_{r}" for r in REGION_NAMES),
                                       *(f"hd95_{r}" for r in REGION_NAMES))
UTILITY_METRICS: tuple[str, ...] = ("utility_dice", "utility_nsd2mm")
CASE_METRICS: tuple[str, ...] = (*FIDELITY_METRICS, *DOWNSTREAM_METRICS, *UTILITY_METRICS)
REPORT_DOWNSTREAM: tuple[str, ...] = ("dice_WT", "nsd2mm_WT", "hd95_WT")
NOT_CONFIGURED = "not configured"
NOT_YET = "not run yet"
BASELINE = "baseline"
"""The family name of the copy baseline's row (no training: the preferred input modality as the synthesis)."""


@dataclass(frozen=True)
class Regime:
    """An inference regime: the stage it trains (`slice` or `volume` config), the overrides of that config, and
    whether a refiner is trained on the slice generator."""

    label: str
    stage: str
    overrides: tuple[str, ...] = ()
    refine: bool = False


REGIMES: dict[str, Regime] = {
    "2d": Regime("2D", "slice", ("model.generator.context_slices=0",)),
    "2.5d": Regime("2.5D", "slice", ("model.generator.context_slices=1",)),
    "2d+3d": Regime("2D + 3D-refine", "slice", ("model.generator.context_slices=0",), refine=True),
    "3d": Regime("full 3D", "volume"),
}
"""Document 000's four regimes (section 2.3)."""


@dataclass
class Stage:
    """A training config (path relative to the benchmark config) and overrides of it (KEY=VALUE)."""

    config: str
    set: list[str] = field(default_factory=list)


@dataclass
class FamilyConfigs:
    """The training stages of one family: `slice` for 2d / 2.5d / the generator of 2d+3d, `refiner` for 2d+3d,
    `volume` for 3d (each a `Stage`, or just its config path)."""

    slice: Stage | None = None
    refiner: Stage | None = None
    volume: Stage | None = None


def _family_configs(name: str, spec: Any) -> FamilyConfigs:
    spec = spec or {}
    known = [f.name for f in dataclasses.fields(FamilyConfigs)]
    if not isinstance(spec, dict) or set(spec) - set(known):
        raise ConfigError(f"families.{name}: expected a mapping with some of {', '.join(known)}, got {spec!r}")
    return FamilyConfigs(**{k: from_dict(Stage, {"config": v} if isinstance(v, str) else v, f"families.{name}.{k}.")
                            for k, v in spec.items() if v is not None})


@dataclass
class BenchmarkData:
    """roots: folders of training and validation cases; split (a split file) or val_cases: the held-out cases
    among them; extra: further held-out case folders."""

    roots: list[str] = field(default_factory=list)
    split: str | None = None
    val_cases: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


@dataclass
class LpipsWeights:
    """The two LPIPS weight files (`infer.evaluate.lpips`); LPIPS is "n/a" unless both exist."""

    trunk: str | None = None
    linear: str | None = None


@dataclass
class BenchmarkConfig:
    """A benchmark: task, data, budget (`steps` per training stage), regimes, families (registry name ->
    `FamilyConfigs`), output folder, device, downstream segmenter (None: no downstream), LPIPS weights."""

    task: str = "t1n2t2w"
    data: BenchmarkData = field(default_factory=BenchmarkData)
    steps: int = 100
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    families: dict[str, Any] = field(default_factory=dict)
    output: str = "runs/benchmark"
    device: str = "cpu"
    segmenter: str | None = "weights/segment"
    lpips: LpipsWeights = field(default_factory=LpipsWeights)
    seed: int = 0


@dataclass
class Case:
    """A held-out case: its task files and, for downstream, its four BraTS modalities and labels (or None) and
    the naming convention of its labels."""

    files: CaseFiles
    brats: dict[str, Path] | None
    seg: Path | None
    naming: Naming

    @property
    def name(self) -> str:
        return self.files.name


def load_benchmark(path: str | Path, overrides: Sequence[str] = ()) -> tuple[BenchmarkConfig, Path]:
    """The benchmark config (with overrides) and the folder its family config paths are relative to."""
    cfg = from_dict(BenchmarkConfig, config_data(path, overrides))
    unknown = [r for r in cfg.regimes if r not in REGIMES]
    if unknown:
        raise ConfigError(f"regimes: unknown {unknown[0]!r}; known: {', '.join(REGIMES)}")
    cfg.families = {name: _family_configs(name, spec) for name, spec in cfg.families.items()}
    for name in cfg.families:
        get_family(name)
    if cfg.steps < 1:
        raise ConfigError("steps must be at least 1")
    return cfg, Path(path).resolve().parent


# Held-out cases.

def _case_in(folder: Path, task: TaskSpec) -> CaseFiles:
    found = [c for c in discover_cases(folder.parent, task) if c.name == folder.name]
    if not found or not set(task.modalities) <= set(found[0].files):
        raise ValueError(f"{folder}: not a case with all of {', '.join(task.modalities)}")
    case_naming(found[0], task)
    return found[0]


def _downstream_files(folder: Path, task: TaskSpec) -> tuple[dict[str, Path] | None, Path | None, Naming]:
    """The four BraTS modalities and the labels of a case folder (None where absent) and its naming."""
    if not set(task.modalities) <= set(BRATS_MODALITIES):
        return None, None, BRATS_2023
    found = [c for c in discover_cases(folder.parent, BRASYN) if c.name == folder.name]
    if not found or set(found[0].files) != set(BRATS_MODALITIES):
        return None, None, BRATS_2023
    naming = case_naming(found[0], BRASYN)
    seg = folder / naming.file_name(folder.name, SEGMENTATION)
    return dict(found[0].files), seg if seg.is_file() else None, naming


def held_out_cases(cfg: BenchmarkConfig, task: TaskSpec) -> list[Case]:
    """The validation cases under the roots and the extra case folders."""
    names = read_split(cfg.data.split)[1] if cfg.data.split else list(cfg.data.val_cases)
    if not names and not cfg.data.extra:
        raise ConfigError("no held-out case: give data.split or data.val_cases, and/or data.extra")
    folders = []
    for name in names:
        matches = [Path(root) / name for root in cfg.data.roots if (Path(root) / name).is_dir()]
        if not matches:
            raise ValueError(f"held-out case {name} not found under {', '.join(cfg.data.roots)}")
        folders.append(matches[0])
    folders += [Path(f) for f in cfg.data.extra]
    cases = []
    for folder in folders:
        cases.append(Case(_case_in(folder, task), *_downstream_files(folder, task)))
    return cases


# Training stages.

def _schema_keys(schema: type, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        keys |= _schema_keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else {prefix + f.name}
    return keys


def stage_data(path: Path, overrides: Sequence[str], cfg: BenchmarkConfig, task: TaskSpec) -> dict[str, Any]:
    """A stage's training config as a dict: the file, its overrides, then the benchmark's data, budget, device
    and seed (each set where the family's schema has the key)."""
    data = config_data(path, overrides)
    schema = resolve(get_family(config_family(data)).schema)
    keys = _schema_keys(schema)
    steps_key = "train.max_steps" if "train.max_steps" in keys else "train.steps"
    wanted = {"data.roots": [str(Path(r).resolve()) for r in cfg.data.roots], "data.task": task.name,
              "data.split": str(Path(cfg.data.split).resolve()) if cfg.data.split else None,
              "data.val_cases": list(cfg.data.val_cases), steps_key: cfg.steps, "run.device": cfg.device,
              "run.progress": False, "train.seed": cfg.seed}
    extra = [f"{k}={json.dumps(v)}" for k, v in wanted.items() if k in keys]
    return config_data(path, [*overrides, *extra])


def _with(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {**data, head: _with(data.get(head) or {}, rest, value) if rest else value}


def _main_checkpoint(run: Path, family: Family) -> Path:
    kind = next(iter(family.networks))
    for config in sorted(run.glob("*/config.json")):
        if read_config(config.parent)["kind"] == kind:
            return config.parent
    raise ValueError(f"{run}: no {kind} checkpoint after training")


def train_stage(data: dict[str, Any], root: Path, resume: bool) -> tuple[Path, float]:
    """Train one stage (or reuse it when it finished before); returns its main checkpoint and training seconds.

    The run folder is `root/<family>-<hash of the config>`; `benchmark-stage.json` in it marks a finished stage.
    """
    family = get_family(config_family(data))
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    folder = root / f"{family.name}-{digest}"
    done = folder / "benchmark-stage.json"
    if done.is_file():
        record = json.loads(done.read_text())
        return folder / record["checkpoint"], float(record["train_seconds"])
    data = _with(data, "run.output", str(folder))
    keys = _schema_keys(resolve(family.schema))
    if "data.cache_dir" in keys and isinstance(data.get("data", {}).get("cache_dir"), str):
        data = _with(data, "data.cache_dir", str(folder / "cache"))
    trainer = resolve(family.trainer)
    can_resume = "resume" in inspect.signature(trainer).parameters
    again = resume and can_resume and (folder / "state.pt").is_file()
    if folder.exists() and not again:
        shutil.rmtree(folder)  # an unfinished stage that cannot continue starts over
    print(f"training {folder.name} ({family.name}, {'resumed' if again else 'new'})", file=sys.stderr)
    clock = time.monotonic()
    fit_family(data, **({"resume": True} if again else {}))
    seconds = time.monotonic() - clock
    checkpoint = _main_checkpoint(folder, family)
    done.write_text(json.dumps({"checkpoint": checkpoint.name, "train_seconds": round(seconds, 1),
                                "family": family.name}))
    return checkpoint, seconds


@dataclass
class Trained:
    """What a (family, regime) run infers with."""

    weights: Path
    refiner: Path | None
    families: list[str]
    train_seconds: float


def train_run(cfg: BenchmarkConfig, base: Path, family: str, regime: str, task: TaskSpec, resume: bool
              ) -> Trained | None:
    """Train (or reuse) the stages of `family` under `regime`; None when the family has no config for it."""
    spec: FamilyConfigs = cfg.families[family]
    r = REGIMES[regime]
    stage = spec.slice if r.stage == "slice" else spec.volume
    if stage is None or (r.refine and spec.refiner is None):
        return None
    root = Path(cfg.output) / "train"
    data = stage_data(base / stage.config, [*stage.set, *r.overrides], cfg, task)
    weights, seconds = train_stage(data, root, resume)
    trained = [config_family(data)]
    refiner = None
    if r.refine:
        data = stage_data(base / spec.refiner.config, [*spec.refiner.set, f"model.generator={weights}"], cfg, task)
        refiner, more = train_stage(data, root, resume)
        trained.append(config_family(data))
        seconds += more
    return Trained(weights, refiner, trained, seconds)


# Inference and scoring.

def parameters(path: Path) -> int:
    """Parameters of a checkpoint's network (counted from its tensors)."""
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def synthesise(trained: Trained, cases: Sequence[Case], task: TaskSpec, folder: Path, device: torch.device
               ) -> float:
    """The held-out cases' targets synthesised into `folder/pred` (inputs linked in `folder/inputs`); returns
    the seconds per case (reading, synthesis, writing)."""
    target = task.requested_targets[0]
    for case in cases:
        (folder / "inputs" / case.name).mkdir(parents=True, exist_ok=True)
        for modality in task.inputs_for(target):
            link = folder / "inputs" / case.name / case.files.files[modality].name
            if not link.is_symlink():
                link.symlink_to(case.files.files[modality].resolve())
    refine = str(trained.refiner) if trained.refiner is not None else NO_REFINER
    options = PredictorOptions(device=device, refine=refine, precision="fp32")
    predictor = build_predictor(trained.weights, task, options)
    clock = time.monotonic()
    summary = run_cases(task, folder / "inputs", folder / "pred", predictor, overwrite=True, progress=False)
    if not summary.ok:
        raise RuntimeError(f"synthesis failed: {'; '.join(summary.failed)}")
    return (time.monotonic() - clock) / len(cases)


class Downstream:
    """The segmenter and its scores on the real cases (computed once per case, kept in `cache`)."""

    def __init__(self, segmenter: Segmenter, cache: Path) -> None:
        self.segmenter, self.cache = segmenter, cache
        cache.mkdir(parents=True, exist_ok=True)

    def scores(self, case: Case, replace: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
        """Dice / NSD 2 mm / HD95 of the segmenter on the case (with `replace`'s volumes instead of the real
        ones); the real case's scores are cached."""
        stored = self.cache / f"{case.name}.json"
        if replace is None and stored.is_file():
            return json.loads(stored.read_text())
        assert case.brats is not None and case.seg is not None
        image = nib.load(case.brats[BRATS_MODALITIES[0]])
        volumes = {m: np.asarray(nib.load(p).dataobj, dtype=np.float32) for m, p in case.brats.items()}
        volumes.update(replace or {})
        reference, spacing = load_volume(case.seg)
        reference = case.naming.read_labels(reference)
        labels = self.segmenter(volumes, image.affine)
        found = score_labels(labels, reference, spacing)
        out = {k: float(found[k]) for k in DOWNSTREAM_METRICS}
        if replace is None:
            stored.write_text(json.dumps(out))
        return out


def predictions(task: TaskSpec, pred: Path) -> Callable[[Case], np.ndarray]:
    """A case's synthesis as written by the inference engine into `pred`."""
    target = task.requested_targets[0]
    return lambda case: load_volume(prediction_file(pred, case.name, target, case_naming(case.files, task)))[0]


def copy_input(task: TaskSpec) -> Callable[[Case], np.ndarray]:
    """A case's "synthesis" by the copy baseline (`infer.evaluate.baselines.copy_baseline`: the preferred input
    modality, rescaled with the task's statistics, background by majority vote)."""
    target = task.requested_targets[0]

    def synthesis(case: Case) -> np.ndarray:
        inputs = {m: load_volume(case.files.files[m])[0] for m in task.inputs_for(target)}
        return copy_baseline(inputs, target, task.normalization)

    return synthesis


def score_run(cases: Sequence[Case], task: TaskSpec, synthesis_of: Callable[[Case], np.ndarray],
              lpips: LPIPS | None, downstream: Downstream | None) -> list[dict[str, Any]]:
    """One row per case: fidelity, downstream and utility (None where not computed)."""
    target = task.requested_targets[0]
    rows = []
    for case in cases:
        reference = load_volume(case.files.files[target])[0]
        synthesis = synthesis_of(case)
        row: dict[str, Any] = {"case": case.name, **fidelity_metrics(synthesis, reference, lpips)}
        row.update({k: None for k in (*DOWNSTREAM_METRICS, *UTILITY_METRICS)})
        if downstream is not None and case.brats is not None and case.seg is not None:
            real = downstream.scores(case)
            synthetic = downstream.scores(case, {target: synthesis.astype(np.float32)})
            row.update(synthetic)
            row["utility_dice"] = utility_ratio({r: synthetic[f"dice_{r}"] for r in REGION_NAMES},
                                                {r: real[f"dice_{r}"] for r in REGION_NAMES})
            row["utility_nsd2mm"] = utility_ratio({r: synthetic[f"nsd2mm_{r}"] for r in REGION_NAMES},
                                                  {r: real[f"nsd2mm_{r}"] for r in REGION_NAMES})
        rows.append(row)
    return rows


def result_folder(cfg: BenchmarkConfig, name: str) -> Path:
    """`<output>/results/<name>/`: a run's inputs, predictions and `result.json` (name `<family>-<regime>`, or
    `copy-input` for the baseline)."""
    return Path(cfg.output) / "results" / name


def stored_result(stored: Path, lpips: LPIPS | None) -> dict[str, Any] | None:
    """The run result stored at `stored` when it was scored with the same LPIPS availability, else None."""
    if not stored.is_file():
        return None
    result = json.loads(stored.read_text())
    return result if (lpips is None) == all(r["lpips"] is None for r in result["cases"]) else None


def benchmark_run(cfg: BenchmarkConfig, base: Path, family: str, regime: str, task: TaskSpec, cases: Sequence[Case],
                  lpips: LPIPS | None, downstream: Downstream | None, resume: bool) -> dict[str, Any]:
    """One (family, regime): trained, run and scored, or read back from its `result.json` when it finished
    before with the same LPIPS availability. Status "not configured" when the family has no config for it."""
    folder = result_folder(cfg, f"{family}-{regime}")
    stored = folder / "result.json"
    result = stored_result(stored, lpips) if resume else None
    if result is not None:
        return result
    trained = train_run(cfg, base, family, regime, task, resume)
    if trained is None:
        return {"family": family, "regime": regime, "status": NOT_CONFIGURED, "cases": []}
    seconds = synthesise(trained, cases, task, folder, pick_device(cfg.device, 0))
    params = parameters(trained.weights) + (parameters(trained.refiner) if trained.refiner else 0)
    model = "+".join(p.parent.name for p in (trained.weights, trained.refiner) if p is not None)
    result = {"family": family, "regime": regime, "status": "ok", "trained": trained.families, "model": model,
              "parameters": params, "seconds_per_case": seconds, "train_seconds": trained.train_seconds,
              "cases": score_run(cases, task, predictions(task, folder / "pred"), lpips, downstream)}
    stored.write_text(json.dumps(result, indent=1))
    return result


def baseline_run(cfg: BenchmarkConfig, task: TaskSpec, cases: Sequence[Case], lpips: LPIPS | None,
                 downstream: Downstream | None, resume: bool) -> dict[str, Any]:
    """The copy baseline scored as a run (family `BASELINE`, nothing trained), or read back as `benchmark_run`
    does."""
    stored = result_folder(cfg, "copy-input") / "result.json"
    result = stored_result(stored, lpips) if resume else None
    if result is not None:
        return result
    clock = time.monotonic()
    copy = copy_input(task)
    copies = {case.name: copy(case) for case in cases}
    seconds = (time.monotonic() - clock) / len(cases)
    rows = score_run(cases, task, lambda case: copies[case.name], lpips, downstream)
    source = copy_source(set(task.inputs_for(task.requested_targets[0])), task.requested_targets[0])
    result = {"family": BASELINE, "regime": f"copy {source}", "status": "ok", "trained": [], "model": BASELINE,
              "parameters": 0, "seconds_per_case": seconds, "train_seconds": 0.0, "cases": rows}
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(result, indent=1))
    return result


# Summary and report.

def summarize(results: Sequence[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One row per finished run: mean and 95 % bootstrap interval of every case metric, p-value of the paired
    Wilcoxon test against the best run of each metric (None for the best itself), parameters, seconds."""
    done = [r for r in results if r["status"] == "ok"]
    rows = []
    for r in done:
        row: dict[str, Any] = {k: r[k] for k in ("family", "regime", "model", "parameters", "seconds_per_case",
                                                  "train_seconds")}
        row["trained"] = "+".join(r["trained"])
        row["n"] = len(r["cases"])
        for metric in CASE_METRICS:
            mean, low, high = bootstrap_ci([c[metric] for c in r["cases"]], seed=seed)
            row.update({metric: mean, f"{metric}_low": low, f"{metric}_high": high})
        rows.append(row)
    for metric in (*FIDELITY_METRICS, *UTILITY_METRICS):
        scored = [(row, r) for row, r in zip(rows, done) if math.isfinite(row[metric])]
        if not scored:
            continue
        sign = -1 if metric in LOWER_IS_BETTER else 1
        best_row, best = max(scored, key=lambda pair: sign * pair[0][metric])
        best_values = {c["case"]: c[metric] for c in best["cases"]}
        for row, r in scored:
            if row is best_row:
                row[f"{metric}_p"] = None
                continue
            mine = {c["case"]: c[metric] for c in r["cases"]}
            common = sorted(set(mine) & set(best_values))
            row[f"{metric}_p"] = paired_wilcoxon([mine[c] for c in common], [best_values[c] for c in common])[0]
    return rows


def metric_correlations(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Across trained models (runs that share their training stages count once; the baseline is left out): each
    fidelity metric's mean against each utility's mean."""
    models = list({r["model"]: r for r in rows if r["family"] != BASELINE}.values())
    return [{"metric": m, "utility": u, **correlations([r[m] for r in models], [r[u] for r in models])}
            for m in FIDELITY_METRICS for u in UTILITY_METRICS]


def regime_label(regime: str) -> str:
    """A regime's name in tables (the baseline's row names what it copies)."""
    return REGIMES[regime].label if regime in REGIMES else regime


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(row: Mapping[str, Any], metric: str, digits: int = 3) -> str:
    if not math.isfinite(row[metric]):
        return "n/a"
    return f"{row[metric]:.{digits}f} ({row[f'{metric}_low']:.{digits}f}, {row[f'{metric}_high']:.{digits}f})"


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as CSV (columns in first-seen order; None and NaN as "n/a")."""
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k), 6) if isinstance(row.get(k), float) or row.get(k) is None
                             else row[k] for k in columns})


def report(cfg: BenchmarkConfig, task: TaskSpec, cases: Sequence[Case], results: Sequence[Mapping[str, Any]],
           rows: Sequence[Mapping[str, Any]], lpips: bool, real: Sequence[Mapping[str, float]]) -> str:
    """The Markdown report; `real`: the segmenter's scores on the real cases (empty: no downstream)."""
    downstream = bool(real)
    n = len(cases)
    lines = [f"# Generator benchmark: {task.name} ({', '.join(task.inputs_for(task.requested_targets[0]))} -> "
             f"{task.requested_targets[0]})", "",
             f"Budget: {cfg.steps} optimizer steps per training stage on {cfg.device}; {n} held-out case(s): "
             f"{', '.join(c.name for c in cases)}. Means with 95 % bootstrap intervals over cases. 'train' counts "
             "every stage a run uses (a stage shared by runs trains once). The baseline row copies the input "
             "(`infer.evaluate.baselines.copy_baseline`): a model that does not beat it has not learned the "
             "target contrast.", ""]
    if not lpips:
        lines += [f"LPIPS not computed (n/a): give both weight files, {TRUNK_FILE} (torchvision's AlexNet) and "
                  f"{LINEAR_FILE} (the lpips package's v0.1 linear layers), as lpips.trunk / lpips.linear.", ""]
    if downstream:
        lines += [f"Downstream reference: the segmenter ({cfg.segmenter}) on the real images of the "
                  f"{len(real)} labelled case(s): " + ", ".join(
                      f"{label} {np.mean([r[m] for r in real]):.{2 if m.startswith('hd95') else 3}f}"
                      for m, label in zip(REPORT_DOWNSTREAM, ("Dice WT", "NSD2mm WT", "HD95 WT (mm)")))
                  + " (mean; the utility ratios divide by these scores case by case).", ""]
    else:
        lines += ["Downstream segmentation not computed (no segmenter, or no held-out case with all four BraTS "
                  "modalities and reference labels).", ""]
    header = ["family", "regime", "trained", "params", "train (min)", "s / case", "SSIM", "PSNR (dB)", "MAE", "LPIPS",
              "Dice WT", "NSD2mm WT", "HD95 WT (mm)", "utility Dice", "utility NSD2mm"]
    lines += markdown_table(header, [
        [row["family"], regime_label(row["regime"]), row["trained"], f"{row['parameters'] / 1e6:.3g} M",
         f"{row['train_seconds'] / 60:.1f}", f"{row['seconds_per_case']:.1f}", _ci(row, "ssim"), _ci(row, "psnr", 2),
         _ci(row, "mae"), _ci(row, "lpips"),
         *(_ci(row, m, 2 if m.startswith("hd95") else 3) for m in REPORT_DOWNSTREAM),
         _ci(row, "utility_dice"), _ci(row, "utility_nsd2mm")] for row in rows])
    skipped = [f"{r['family']} {regime_label(r['regime'])}" for r in results if r["status"] == NOT_CONFIGURED]
    if skipped:
        lines += ["", f"Not run (no config for the regime in the benchmark config): {', '.join(skipped)}."]
    lines += [f"{r['family']} {regime_label(r['regime'])}: {r['status']}" for r in results
              if r["status"] not in ("ok", NOT_CONFIGURED)]
    tested = [m for m in (*FIDELITY_METRICS, *UTILITY_METRICS) if any(f"{m}_p" in row for row in rows)]
    lines += ["", "## Paired Wilcoxon signed-rank tests against the best run of each metric", "",
              f"Two-sided p-values over the {n} held-out case(s); 'best' marks the best run. With {n} pairs the "
              f"least p-value the exact test can give is {smallest_wilcoxon_p(n):.3g}"
              + (", so no difference can be significant at 0.05: read these as descriptive."
                 if smallest_wilcoxon_p(n) >= 0.05 else "; with so few cases the tests have little power."), "",
              *markdown_table(["family", "regime", *tested],
                              [[row["family"], regime_label(row["regime"]),
                                *("best" if f"{m}_p" in row and row[f"{m}_p"] is None else _fmt(row.get(f"{m}_p"))
                                  for m in tested)] for row in rows])]
    if downstream:
        lines += ["", "## Fidelity against downstream utility, across trained models", "",
                  "Runs that share their training stages (e.g. one full-3D generator for several families) count "
                  "once.", "",
                  *markdown_table(["metric", "utility", "models", "Pearson r (p)", "Spearman rho (p)"],
                                  [[c["metric"], c["utility"], c["n"], f"{_fmt(c['pearson_r'])} ({_fmt(c['pearson_p'])})",
                                    f"{_fmt(c['spearman_rho'])} ({_fmt(c['spearman_p'])})"]
                                   for c in metric_correlations(rows)])]
    lines += ["", "Plots: fidelity.png" + (", utility.png" if downstream else "") + "."]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], folder: Path, downstream: bool) -> None:
    """fidelity.png: each metric's mean and interval per run; utility.png: each fidelity metric against the
    Dice utility ratio, one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['family']} {regime_label(r['regime'])}" for r in rows]
    fig, axes = plt.subplots(1, len(FIDELITY_METRICS), figsize=(4 * len(FIDELITY_METRICS), 0.4 * len(rows) + 1.5),
                             sharey=True)
    for ax, metric in zip(axes, FIDELITY_METRICS):
        for i, r in enumerate(rows):
            if math.isfinite(r[metric]):
                ax.errorbar(r[metric], i, xerr=[[r[metric] - r[f"{metric}_low"]], [r[f"{metric}_high"] - r[metric]]],
                            fmt="o", capsize=3)
        ax.set_title(metric.upper() + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
        ax.set_yticks(range(len(rows)), names)
    fig.tight_layout()
    fig.savefig(folder / "fidelity.png", dpi=100)
    plt.close(fig)
    if not downstream:
        return
    fig, axes = plt.subplots(1, len(FIDELITY_METRICS), figsize=(4 * len(FIDELITY_METRICS), 3.5), sharey=True)
    for ax, metric in zip(axes, FIDELITY_METRICS):
        for name, r in zip(names, rows):
            if math.isfinite(r[metric]) and math.isfinite(r["utility_dice"]):
                ax.scatter(r[metric], r["utility_dice"])
                ax.annotate(name, (r[metric], r["utility_dice"]), fontsize=7)
        ax.set_xlabel(metric.upper())
    axes[0].set_ylabel("utility ratio (Dice)")
    fig.tight_layout()
    fig.savefig(folder / "utility.png", dpi=100)
    plt.close(fig)


def finished_run(cfg: BenchmarkConfig, family: str, regime: str) -> dict[str, Any]:
    """A run's stored result, or status `NOT_YET` when it has not finished."""
    stored = result_folder(cfg, f"{family}-{regime}") / "result.json"
    if stored.is_file():
        return json.loads(stored.read_text())
    return {"family": family, "regime": regime, "status": NOT_YET, "cases": []}


def run_benchmark(cfg: BenchmarkConfig, base: Path, resume: bool = False, report_only: bool = False
                  ) -> tuple[Path, bool]:
    """The whole benchmark (see the module docstring); returns the report's path and whether every configured
    run finished (a failed run is reported and the others go on). `report_only`: no training or synthesis, the
    report of the runs that finished (e.g. while the benchmark still runs)."""
    task = get_task(cfg.task)
    if len(task.requested_targets) != 1:
        raise ConfigError(f"task {task.name}: the benchmark needs one default target")
    out = Path(cfg.output)
    if not (resume or report_only) and (out / "results").exists():
        raise FileExistsError(f"{out} already holds a benchmark; pass --resume or choose another output")
    out.mkdir(parents=True, exist_ok=True)
    cases = held_out_cases(cfg, task)
    lpips = load_lpips(cfg.lpips.trunk, cfg.lpips.linear)
    downstream = None
    if cfg.segmenter is not None and any(c.brats is not None and c.seg is not None for c in cases):
        from infer.segment import load_segmenter

        downstream = Downstream(load_segmenter(cfg.segmenter, device=cfg.device), out / "real-segmentation")
    results = [baseline_run(cfg, task, cases, lpips, downstream, resume or report_only)]
    for family in cfg.families:
        for regime in cfg.regimes:
            if report_only:
                results.append(finished_run(cfg, family, regime))
                continue
            try:
                results.append(benchmark_run(cfg, base, family, regime, task, cases, lpips, downstream, resume))
            except Exception as err:  # noqa: BLE001 - one failed run is reported; the others go on
                message = f"failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
                print(f"{family} {regime}: {message}", file=sys.stderr)
                results.append({"family": family, "regime": regime, "status": message, "cases": []})
    rows = summarize(results, cfg.seed)
    write_csv(out / "per_case.csv", [{"family": r["family"], "regime": r["regime"], **c}
                                     for r in results for c in r["cases"]])
    write_csv(out / "summary.csv", rows)
    if downstream is not None:
        write_csv(out / "correlations.csv", metric_correlations(rows))
    if rows:
        plot(rows, out, downstream is not None)
    real = [downstream.scores(c) for c in cases if c.brats is not None and c.seg is not None] if downstream else []
    (out / "report.md").write_text(report(cfg, task, cases, results, rows, lpips is not None, real))
    return out / "report.md", all(r["status"] in ("ok", NOT_CONFIGURED) for r in results)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="benchmark YAML (train/configs/benchmark/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a benchmark config key (repeatable), e.g. lpips.trunk=PATH")
    p.add_argument("--resume", action="store_true", help="skip finished runs and stages of the output folder")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report of the runs finished so far (the others: not run yet)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, base = load_benchmark(args.config, args.overrides)
        path, complete = run_benchmark(cfg, base, args.resume, args.report_only)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"report: {path}", file=sys.stderr)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())

"""Configs: the shipped recipes load and build, overrides and their errors; the learning-rate schedule."""
from pathlib import Path

import pytest

from models.generator import GeneratorConfig
from train.__main__ import dotted_overrides
from models.families import get_family, resolve
from train.config import ConfigError, config_data, config_family, from_dict, load_config
from train.loop import network_configs
from train.schedule import scaled_lr, warmup_cosine

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_parses_with_its_familys_schema(path):
    data = config_data(path)
    family = get_family(config_family(data))
    cfg = from_dict(resolve(family.schema), data)
    assert cfg.model.family == family.name


@pytest.mark.parametrize("name", ["axial", "sagittal", "multiview", "tiny"])
def test_shipped_configs_load_and_build_network_configs(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    gen, disc = network_configs(cfg, 4)
    assert disc.image_size == gen.image_size == (cfg.data.crop or 240)
    assert cfg.optim.grad_clip == 0.1 and cfg.optim.d_lr_factor == 0.1


def test_paper_recipes():
    axial = load_config(CONFIGS / "axial.yaml")
    assert network_configs(axial, 4)[0] == GeneratorConfig()  # the published full-size generator
    assert (axial.loss.l1, axial.loss.adversarial, axial.loss.classification, axial.loss.ssim) == (10, 0.25, 0.25, 5)
    assert axial.optim.lr == 5e-4 and axial.optim.reference_batch == 64
    assert load_config(CONFIGS / "sagittal.yaml").data.views == ["sagittal"]
    multi = load_config(CONFIGS / "multiview.yaml")
    assert multi.data.views == ["axial", "sagittal"] and multi.loss == axial.loss


def test_overrides_set_and_dotted_flags():
    extra = dotted_overrides(["--optim.lr=1e-3", "--data.views", "[axial, coronal]"])
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.max_steps=7", "data.stats=null", *extra])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.data.views == ["axial", "coronal"] and cfg.train.max_steps == 7 and cfg.data.stats is None
    assert cfg.model.generator["dim"] == 8  # untouched keys keep the file's values


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key optim.lrr"),
    ("train.batch_size=many", "train.batch_size"),
    ("optim", "not KEY=VALUE"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(CONFIGS / "tiny.yaml", [override])
    assert "\n" not in str(err.value)


def test_generator_image_size_comes_from_the_data():
    with pytest.raises(ConfigError, match="set by the data"):
        network_configs(load_config(CONFIGS / "tiny.yaml", ["model.generator.image_size=96"]), 4)


def test_warmup_then_one_cosine_cycle():
    peak, total, warmup = 1.0, 100, 10
    lrs = [warmup_cosine(s, total, peak, warmup, min_fraction=0.1) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(0.1) and lrs[warmup - 1] == pytest.approx(1.0)
    assert lrs[warmup] == pytest.approx(1.0) and lrs[total] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert scaled_lr(5e-4, 16, 64) == pytest.approx(1.25e-4)

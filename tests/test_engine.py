"""Engine settings, view averaging, the refinement hook, output units, and batching with a tiny generator."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from infer.engine.slices import CPU_BATCH_SIZE, GPU_BATCH_LIMIT, EngineSettings, VolumePredictor, batch_input, \
    batch_size_for_memory, normalize_inputs, padded_stack, resolve_settings
from infer.engine.geometry import pad_to_square, to_slices, with_context
from infer.engine.intensity import background_vote, denormalize, foreground, normalize
from conventions.normalization import ZScoreNorm
from conventions.tasks import BRASYN, VIEWS, TaskSpec

from helpers import CopyModel, settings_for, synthetic_volumes, tiny_generator, tiny_meta


def with_meta(model, **fields):
    model.meta = tiny_meta(**fields)
    return model


def test_settings_precedence_task_then_checkpoint_then_caller():
    model = with_meta(tiny_generator(), views=("sagittal",), normalization={"t1c": ZScoreNorm(1.0, 2.0, 3.0)})
    settings = resolve_settings(BRASYN, model)
    assert settings.views == ("sagittal",) and settings.image_size == 32 and not settings.view_embedding
    assert settings.normalization["t1c"] == ZScoreNorm(1.0, 2.0, 3.0)
    assert settings.normalization["t2w"] == BRASYN.normalization["t2w"]
    assert resolve_settings(BRASYN, model, ("coronal", "axial")).views == ("coronal", "axial")
    assert resolve_settings(BRASYN, with_meta(tiny_generator(), views=())).views == BRASYN.default_views


def test_settings_errors():
    with pytest.raises(ValueError, match="for task 'mr2ct'"):
        resolve_settings(BRASYN, with_meta(tiny_generator(), task="mr2ct"))
    with pytest.raises(ValueError, match="modalities"):
        resolve_settings(BRASYN, with_meta(tiny_generator(), modalities=("t1c", "t1n", "t2f", "dwi")))
    with pytest.raises(ValueError, match="knows 2 view"):
        resolve_settings(BRASYN, with_meta(tiny_generator(num_views=2)), ("axial", "coronal"))
    with pytest.raises(ValueError, match="distinct"):
        settings_for(("axial", "axial"))
    with pytest.raises(ValueError, match="unknown view"):
        settings_for(("axial", "oblique"))


class ViewConstant(nn.Module):
    """Outputs the view index it is given, everywhere."""

    def forward(self, x, available, target, view=None):
        return view.to(x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[2:]).clone()


def test_multi_view_is_a_mean_over_different_views():
    volumes = synthetic_volumes((20, 18, 10))
    settings = replace(settings_for(VIEWS, image_size=32), view_embedding=True)
    out = VolumePredictor(ViewConstant(), settings).predict(volumes, "t1n")
    foreground = out > 0
    assert foreground.any()
    np.testing.assert_allclose(out[foreground], denormalize(np.array([1.0]), BRASYN.normalization["t1n"])[0],
                               rtol=1e-6)  # (axial 0 + sagittal 1 + coronal 2) / 3


def test_refinement_hook_sees_the_normalised_volume_before_denormalisation():
    volumes = synthetic_volumes((20, 18, 10))
    calls = []

    def refine(synthesis, inputs, target):
        calls.append((synthesis.shape, inputs.shape, target))
        return synthesis + 1.0

    settings = settings_for(("axial",), image_size=32)
    out = VolumePredictor(CopyModel(source=0), settings, refine=refine).predict(volumes, "t1n")
    assert calls == [((20, 18, 10), (4, 20, 18, 10), 1)]
    expected = denormalize(normalize(volumes["t1c"], BRASYN.normalization["t1c"]) + 1.0, BRASYN.normalization["t1n"])
    expected[background_vote([foreground(v) for v in volumes.values()])] = 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-3)


def test_output_units_of_a_ct_like_task_need_no_engine_change():
    ct_norm = ZScoreNorm(clip_max=4000.0, mean=1000.0, std=500.0)  # CT normalised as HU + 1000
    task = TaskSpec(name="mr2ct", modalities=("t1", "ct"), min_inputs=1, max_inputs=1,
                    normalization={"t1": ZScoreNorm(5000.0, 800.0, 900.0), "ct": ct_norm}, targets=("ct",),
                    output_offset=-1000.0, output_background=-1000.0)
    settings = EngineSettings(modalities=task.modalities, normalization=task.normalization, views=("axial",),
                              image_size=32, output_offset=task.output_offset,
                              output_background=task.output_background)
    t1 = synthetic_volumes((20, 18, 10))["t1c"]
    out = VolumePredictor(CopyModel(source=0), settings).predict({"t1": t1}, "ct")
    assert (out[t1 == 0] == -1000.0).all()
    expected = denormalize(normalize_inputs({"t1": t1}, settings)[0][0], ct_norm) - 1000.0
    np.testing.assert_allclose(out[t1 > 0], expected[t1 > 0], rtol=1e-6)


def test_normalize_inputs_fills_missing_with_background():
    volumes = synthetic_volumes((6, 5, 4))
    inputs, available = normalize_inputs(volumes, settings_for(("axial",)))
    assert inputs.shape == (4, 6, 5, 4) and inputs.dtype == np.float32
    np.testing.assert_array_equal(available, [True, False, True, True])
    assert (inputs[1] == -1.0).all()
    with pytest.raises(ValueError, match="one shape"):
        normalize_inputs({**volumes, "t1c": volumes["t1c"][:-1]}, settings_for(("axial",)))


def test_tiny_generator_is_batch_independent_and_finite():
    model = with_meta(tiny_generator(context_slices=1))
    settings = resolve_settings(BRASYN, model, ("axial", "coronal"))
    volumes = synthetic_volumes((14, 12, 9))
    one = VolumePredictor(model, settings, batch_size=1).predict(volumes, "t1n")
    five = VolumePredictor(model, settings, batch_size=5).predict(volumes, "t1n")
    np.testing.assert_allclose(one, five, rtol=1e-4, atol=1e-2)
    assert np.isfinite(one).all() and (one >= 0).all()


def test_slices_larger_than_the_model_are_refused():
    predictor = VolumePredictor(CopyModel(source=0), settings_for(("axial", "coronal", "sagittal"), image_size=16))
    with pytest.raises(ValueError, match="^axial slices of 20x12, coronal slices of 20x8 exceed the model's 16x16"):
        predictor.predict(synthetic_volumes((20, 12, 8)), "t1n")


def test_cannot_synthesise_an_available_modality():
    with pytest.raises(ValueError, match="cannot synthesise 't1c'"):
        VolumePredictor(CopyModel(source=0), settings_for(("axial",))).predict(synthetic_volumes((4, 4, 4)), "t1c")


@pytest.mark.parametrize("precision, native, enabled", [("auto", False, False), ("auto", True, True),
                                                         ("fp32", True, False), ("bf16", False, True)])
def test_bf16_autocast_follows_the_precision(monkeypatch, precision, native, enabled):
    entered = []
    real_autocast = torch.autocast

    def spy(device_type, dtype=None, enabled=True):
        entered.append((device_type, dtype, enabled))
        return real_autocast(device_type, dtype=dtype, enabled=enabled)

    monkeypatch.setattr(torch, "autocast", spy)
    monkeypatch.setattr("infer.engine.precision.cpu_has_native_bf16", lambda: native)
    predictor = VolumePredictor(CopyModel(source=0), settings_for(("axial",), image_size=16), precision=precision)
    predictor.predict(synthetic_volumes((8, 8, 2)), "t1n")
    assert entered == [("cpu", torch.bfloat16, enabled)]
    assert predictor.precision == ("bf16" if enabled else "fp32")


def test_bf16_output_is_float32_and_near_fp32():
    torch.manual_seed(0)
    model = with_meta(tiny_generator())
    settings = resolve_settings(BRASYN, model, ("axial",))
    volumes = synthetic_volumes((20, 18, 10))
    outputs = {p: VolumePredictor(model, settings, precision=p).predict(volumes, "t1n") for p in ("fp32", "bf16")}
    assert outputs["bf16"].dtype == np.float32 and not np.array_equal(outputs["bf16"], outputs["fp32"])
    difference = np.abs(outputs["bf16"] - outputs["fp32"]) / BRASYN.normalization["t1n"].std  # normalised units
    assert difference.mean() < 0.01 and difference.max() < 0.1


def test_inference_runs_in_eval_and_inference_mode():
    seen = []

    class Probe(CopyModel):
        def forward(self, x, available, target, view=None):
            seen.append((self.training, torch.is_inference_mode_enabled(), x.dtype, available.tolist()[0],
                         target.tolist()[0], view))
            return super().forward(x, available, target, view)

    model = Probe(source=0).train()
    VolumePredictor(model, settings_for(("axial",), image_size=48)).predict(synthetic_volumes((40, 36, 3)), "t1n")
    assert seen == [(False, True, torch.float32, [True, False, True, True], 1, None)]


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("k", [0, 1, 2])
def test_batches_from_the_padded_stack_equal_context_then_padding(view, k):
    volume = np.random.default_rng(k).normal(size=(3, 9, 6, 5)).astype(np.float32)  # (M, X, Y, Z)
    slices = to_slices(volume, view)
    stack = padded_stack(torch.from_numpy(volume), view, 12, k, -1.0)
    for indices in (np.arange(0, 2), np.arange(1, len(slices)), np.array([0, 2, len(slices) - 1])):
        expected = pad_to_square(with_context(slices, indices, k, -1.0), 12, -1.0)
        np.testing.assert_array_equal(batch_input(stack, indices, k).numpy(), expected)


def test_default_batch_sizes():
    assert VolumePredictor(CopyModel(source=0), settings_for(("axial",))).batch_size == CPU_BATCH_SIZE == 8
    slice_bytes = 300 * 2**20
    assert batch_size_for_memory(4 * 2**30, slice_bytes) == 6  # half of 4 GiB holds 6 slices of 300 MiB
    assert batch_size_for_memory(2**20, slice_bytes) == 1
    assert batch_size_for_memory(80 * 2**30, 2**20) == GPU_BATCH_LIMIT


def test_predict_reports_its_stage_times():
    timings = {"read": 1.5}
    VolumePredictor(CopyModel(source=0), settings_for(("axial", "coronal"), image_size=16)).predict(
        synthetic_volumes((8, 8, 4)), "t1n", timings)
    assert set(timings) == {"read", "preprocess", "forward", "postprocess"} and timings["read"] == 1.5
    assert all(t > 0 for t in timings.values())


def test_brasyn_output_never_writes_background_inside_the_brain():
    """A synthesis at or below the normalised background inside the inputs' foreground is floored at one
    intensity unit (BraTS brains hold no 0 voxel); the vote's background stays 0."""
    norms = {m: BRASYN.case_normalization[m] for m in BRASYN.modalities}
    settings = replace(settings_for(("axial",), image_size=32), normalization=norms,
                       output_floor=BRASYN.output_floor)
    volumes = synthetic_volumes((20, 18, 10))
    volumes["t2f"][:10] = 0  # brain by the vote of t1c and t2w, -1 (background) in the copied t2f
    out = VolumePredictor(CopyModel(source=BRASYN.modalities.index("t2f")), settings).predict(volumes, "t1n")
    brain = ~background_vote([foreground(v) for v in volumes.values()])
    assert brain[:10].any() and BRASYN.output_floor == 1.0
    assert (out[:10][brain[:10]] == 1.0).all() and (out[brain] >= 1.0).all() and (out[~brain] == 0).all()

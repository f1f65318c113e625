"""Quality-control picture: the inputs and the synthesis in the three planes through one centre point."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from infer.engine.geometry import to_slices, view_axis
from infer.engine.intensity import foreground
from conventions.tasks import VIEWS
from infer.engine.writer import atomic_path


def qc_centre(brain: np.ndarray, tumour: np.ndarray | None = None) -> tuple[int, int, int]:
    """Voxel at the centroid of `tumour` when it has any voxel, else of `brain`, else the volume centre."""
    for mask in (tumour, brain):
        if mask is not None and mask.any():
            return tuple(int(round(c.mean())) for c in np.nonzero(mask))
    return tuple(n // 2 for n in brain.shape)


def save_qc(path: Path, inputs: Mapping[str, np.ndarray], synthesis: Mapping[str, np.ndarray],
            tumour: np.ndarray | None = None) -> Path:
    """PNG at `path`: a row per input and per synthesised volume, a column per plane (matplotlib Agg).

    The planes go through `qc_centre` of the tumour mask when given, else of the inputs' brain (any foreground).
    """
    brain = np.logical_or.reduce([foreground(v) for v in inputs.values()])
    centre = qc_centre(brain, tumour)
    rows = [(name, v) for name, v in inputs.items()] + [(f"{name} (synthesis)", v) for name, v in synthesis.items()]
    fig = Figure(figsize=(3 * len(VIEWS), 3 * len(rows)), facecolor="black")
    axes = fig.subplots(len(rows), len(VIEWS), squeeze=False)
    for (name, volume), row in zip(rows, axes):
        signal = volume[volume > 0]
        vmax = float(np.percentile(signal, 99.5)) if signal.size else 1.0
        for view, ax in zip(VIEWS, row):
            ax.imshow(np.rot90(to_slices(volume, view)[centre[view_axis(view)]]), cmap="gray", vmin=0.0, vmax=vmax)
            ax.set_axis_off()
            ax.set_title(f"{name} {view}", color="white", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return path

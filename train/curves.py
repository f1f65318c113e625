"""Run records: a CSV row per step (every loss and the learning rate) and PNG plots of the curves."""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


class CsvLog:
    """Append-only CSV with a fixed header (the keys of the first row). Opening it with `resume_step` keeps
    only the rows of steps up to that one, so a resumed run does not duplicate the steps it repeats."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        if resume_step is not None and self.path.is_file():
            rows = read_csv(self.path)
            kept = [r for r in rows if int(float(r["step"])) <= resume_step]
            if rows:
                self.columns = list(rows[0])
                self._write(kept, "w")
        elif self.path.is_file():
            self.path.unlink()

    def _write(self, rows: list[Mapping[str, object]], mode: str) -> None:
        with self.path.open(mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def append(self, row: Mapping[str, object]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self._write([], "w")
        missing = set(self.columns) ^ set(row)
        if missing:
            raise ValueError(f"{self.path}: row keys differ from the header ({', '.join(sorted(missing))})")
        self._write([row], "a")


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(csv_path: str | Path, png_path: str | Path, x: str = "step") -> Path:
    """One panel per column of the CSV against `x` (log scale where every value is positive)."""
    rows = read_csv(csv_path)
    columns = [c for c in (rows[0] if rows else {}) if c != x]
    n = max(len(columns), 1)
    cols = min(n, 4)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4 * cols, 3 * math.ceil(n / cols)), squeeze=False)
    steps = [float(r[x]) for r in rows]
    for ax, column in zip(axes.flat, columns):
        values = [float(r[column]) if r[column] not in ("", "nan") else math.nan for r in rows]
        ax.plot(steps, values, lw=0.8)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        if all(v > 0 for v in values if not math.isnan(v)) and any(v > 0 for v in values):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return Path(png_path)

"""Inference: a task-agnostic volume-synthesis engine, its tasks, evaluation and the command line."""
from infer.engine.cachedirs import ensure_matplotlib_folder

ensure_matplotlib_folder()  # before anything imports matplotlib (MONAI does)

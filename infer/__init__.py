"""Inference: a task-agnostic volume-synthesis engine, its tasks, evaluation and the command line."""

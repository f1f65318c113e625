"""The ground of the project: task specs, intensity normalisations, naming and label conventions (imports nothing of ours)."""

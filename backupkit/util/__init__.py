"""Small helpers below every other layer: units, workers, memory, progress, streams."""

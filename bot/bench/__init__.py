"""Benchmarks of arbot's own machinery (`arbot bench ...`)."""

"""Backbones, decoders and the multi-task model that joins them to the task heads."""

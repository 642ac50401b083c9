"""Inference pipelines: `animate` (speech -> animation files), with the output folder they share
and the release's temporal smoothing."""

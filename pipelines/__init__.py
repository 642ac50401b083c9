"""Workflows of MeshTalk (prep, synth, training, ...) and the I/O they need."""

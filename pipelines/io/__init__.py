"""Files in and out: meshes, audio, atomic writes, locks, pictures, provenance."""

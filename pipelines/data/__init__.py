"""Package data: topology facts shipped with meshtalk."""

"""Pure torch modules of MeshTalk."""

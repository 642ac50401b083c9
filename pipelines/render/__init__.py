"""Rendering animations: headless shaded frames (OpenGL through EGL) and videos with the speech.

`MeshRenderer` draws frames, `render_video` streams frames into an H.264 + AAC file, and
`pipeline.run(RenderConfig)` is `meshtalk render` (an animation npz to a video).
"""

from meshtalk.pipelines.render.clip import render_video
from meshtalk.pipelines.render.renderer import VIEWS, MeshRenderer, Panel, open_context

__all__ = ["VIEWS", "MeshRenderer", "Panel", "open_context", "render_video"]

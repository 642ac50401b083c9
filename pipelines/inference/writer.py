"""The files of one take (npz, PC2, template, per-frame meshes, GLB/USD, mp4), written as frames
come (GLB and USD from the finished npz)."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from meshtalk.pipelines.export import (
    FrameMeshWriter,
    NpzWriter,
    PC2Header,
    PC2Writer,
    iter_rows,
)
from meshtalk.pipelines.export.formats import METRES, ExportOptions, write_formats
from meshtalk.pipelines.export.npz import Rows
from meshtalk.pipelines.io.mesh import Mesh, copy_materials, write_mesh
from meshtalk.pipelines.render.colours import part_colours

AUDIO_ROWS = 1 << 16
"""Samples of the npz's audio read back at a time for the video."""


class TakeWriter:
    """The files of one take, written as its frames come.

    Args:
        folder: where the take's files go (created).
        template: the template mesh (faces, texture coordinates).
        suffix: '.ply' or '.obj', the format of the template export (the given template's).
        total: T, frames the take will have.
        frames: 'ply' or 'obj' to write one mesh per frame, or None.
        scale: multiplies the PC2, template and per-frame exports.
        mapping: turns each chunk of frames given to `write` into frames of `template` (a
            transfer from another topology); None: the frames are `template`'s already.
        orientation: (3, 3) rotation of the face in the template's coordinates, for the video's
            camera (a transfer's registration knows it); None: the face looks along +Z, up +Y.
        exports: --formats (GLB/USD written from the npz at `finish`), --units, --mesh-units.

    The template export and every per-frame mesh keep what the template carried (UVs, OBJ
    materials with their files, normals, colours).
    """

    def __init__(
        self,
        folder: Path,
        template: Mesh,
        suffix: str,
        total: int,
        frames: str | None,
        scale: float,
        mapping=None,
        orientation: np.ndarray | None = None,
        exports: ExportOptions | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.exports = exports
        if exports is not None:  # --units: the template's units to those of PC2/PLY/OBJ
            scale = scale * exports.unit_scale(template.vertices)
        self.folder, self.template, self.total, self.scale = folder, template, total, scale
        self.mapping, self.orientation = mapping, orientation
        self.suffix = suffix
        num_vertices = len(template.vertices)
        self.npz_path = folder / "animation.npz"
        self.npz = NpzWriter(self.npz_path)
        self.vertices = self.npz.stream("vertices", (total, num_vertices, 3), np.float32)
        self.pc2 = PC2Writer(folder / "animation.pc2", PC2Header(num_vertices, total), scale)
        self.meshes = None
        if frames is not None:
            self.meshes = FrameMeshWriter(
                folder / "frames", template.faces, frames, scale, mesh=template
            )
        self.codes: list[np.ndarray] = []

    def write(self, frames: np.ndarray) -> np.ndarray:
        """(n, V, 3) frames, in the template's units; returns them as written (mapped)."""
        if len(frames) == 0:
            return frames
        if self.mapping is not None:
            frames = self.mapping(frames)
        self.vertices.write(frames)
        self.pc2.write(frames)
        if self.meshes is not None:
            self.meshes.write(frames)
        return frames

    def finish(self, **members) -> None:
        """Close the streams; the npz's other members (faces, template, codes; for a head of
        parts (materials) part_colours (V, 3) in [0, 1] and drawn_faces (F,) bool, as the video
        paints and draws them; with a head rig's mapping expression_weights (T, E) and
        expression_names (E,); then `members`: arrays, or `Rows` written a chunk at a time)."""
        self.vertices.close()
        self.pc2.close()
        npz = self.npz
        npz.add("faces", self.template.faces.astype(np.int32))
        npz.add("template", self.template.vertices.astype(np.float32))
        if self.codes:
            npz.add("codes", np.concatenate(self.codes).astype(np.int64))
        painted = part_colours(self.template, getattr(self.mapping, "parts", None))
        if painted is not None:  # a head of parts: their colours for viewers (`meshtalk view`)
            npz.add("part_colours", painted[0].astype(np.float32))
            npz.add("drawn_faces", painted[1].astype(bool))
        weights = getattr(self.mapping, "weights", None)
        if weights:  # a whole head driven through its rig: each frame's expression weights
            npz.add("expression_weights", np.concatenate(weights).astype(np.float32))
            npz.add("expression_names", np.asarray(self.mapping.rig.names))
        for name, value in members.items():
            if isinstance(value, Rows):
                npz.add_rows(name, value)
            else:
                npz.add(name, np.asarray(value))
        npz.close()
        template = self.template
        scaled = template.vertices.astype(np.float32) * np.float32(self.scale)
        write_mesh(self.folder / f"template{self.suffix}", replace(template, vertices=scaled))
        if self.suffix == ".obj":
            copy_materials(template, self.folder)
        formats = () if self.exports is None else self.exports.format_list()
        if formats:
            units = self.exports.template_units(template.vertices)
            write_formats(self.folder, self.npz_path, template, formats, METRES[units])

    def video(
        self, fps: Fraction, audio: np.ndarray | None, audio_rate: int, size, progress: bool
    ) -> None:
        """Render animation.mp4 from the written vertices (read back a chunk at a time) with
        `audio`, or with None the npz's own audio member (read back a block at a time too)."""
        from meshtalk.pipelines.render import render_video

        if audio is None:
            audio = iter_rows(self.npz_path, "audio", AUDIO_ROWS)
        render_video(
            iter_rows(self.npz_path, "vertices"),
            self.template.faces,
            self.folder / "animation.mp4",
            fps=fps,
            audio=audio,
            audio_rate=audio_rate,
            size=size,
            template=self.template.vertices.astype(np.float32),
            total=self.total,
            progress=progress,
            orientation=self.orientation,
        )

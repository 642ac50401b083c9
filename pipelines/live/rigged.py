"""`meshtalk stream --rig RIG.glb`: each frame also as ARKit weights of a user's rig, live.

The same carrying and solving as `meshtalk rig` (pipelines/inference/rig.py), a frame at a time:
a rig of the model's topology takes the motion scaled to its size; a rig of another topology is
registered once at start (`transfer_for`) and each frame carried through the transfer. The
weights solve the bounded least squares of `BlendshapeSolver` on the vertices the ARKit targets
move, and are sent in `ARKIT_NAMES` order (0 for the names the rig lacks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError

log = logging.getLogger(__name__)


class RigWeights:
    """Vertex offsets of the model's template -> (52,) ARKit weights of a rig.

    Args:
        path: the rig (GLB with ARKit-named morph targets).
        template: (V, 3) the model's template; faces: (F, 3) its triangles.
    """

    def __init__(self, path: Path, template: np.ndarray, faces: np.ndarray) -> None:
        from meshtalk.pipelines.export.arkit import ARKIT_NAMES
        from meshtalk.pipelines.export.blendshape_solver import BlendshapeSolver
        from meshtalk.pipelines.inference.rig import _checked_rig, _size, face_vertices
        from meshtalk.pipelines.io.mesh import Mesh, surface_problem

        rig = _checked_rig(Path(path))
        self.names = [name for name in ARKIT_NAMES if name in rig.arkit]
        indices = [rig.arkit[name] for name in self.names]
        self.face = face_vertices(rig, indices)
        if self.face.size == 0:
            raise MeshtalkError(path, "its ARKit targets move no vertex")
        self.solver = BlendshapeSolver(rig.targets[indices][:, self.face])
        self.template = np.asarray(template, dtype=np.float32)
        same = len(template) == len(rig.neutral) and np.array_equal(faces, rig.faces)
        if same:
            self.ratio = np.float32(_size(rig.neutral) / max(_size(template), 1e-30))
            self.transfer = None
        else:
            from meshtalk.pipelines.transfer.source import transfer_for

            target = Mesh(vertices=rig.neutral, faces=rig.faces)
            problem = surface_problem(target)
            if problem is not None:
                raise MeshtalkError(path, problem)
            source = Mesh(vertices=self.template, faces=np.asarray(faces))
            self.transfer, _ = transfer_for(source, target, target_path=Path(path))
            self.neutral = rig.neutral.astype(np.float32)
        log.info("%s: %d of ARKit's 52 targets, %d face vertices", path, len(self.names),
                 self.face.size)  # fmt: skip

    def weights(self, offsets: np.ndarray) -> np.ndarray:
        """(52,) float32 ARKit weights of one frame's (V, 3) offsets."""
        from meshtalk.pipelines.export.arkit import arkit_weights

        if self.transfer is None:
            displacement = offsets * self.ratio
        else:
            moved = self.transfer.apply((self.template + offsets)[None], self.template)[0]
            displacement = moved - self.neutral
        solved = self.solver.solve(displacement[None][:, self.face])
        return arkit_weights(solved, self.names)[0].astype(np.float32)

"""The same speech on three heads that are not the model's: a picture of `animate SPEECH HEAD`.

Builds three heads from the MeshTalk template in ../shared/reference (6,172 vertices, mm, Y up):
the template itself, the template subdivided once (24k vertices) in metres and turned 90 degrees
about the vertical, and the template remeshed to about 3,000 vertices (fast-simplification);
animates the reference recording onto each with the bundled default model (registration and
transfer are automatic), and draws each head at its frame with the mouth most open, front and side.

    python examples/heads_picture.py docs/figures/default_model_on_three_heads.png [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw

from meshtalk.pipelines.io.mesh import Mesh, read_mesh, write_mesh
from meshtalk.pipelines.render.renderer import MeshRenderer, Panel

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
PANEL = 320


def heads(template: Mesh) -> dict[str, tuple[Mesh, np.ndarray]]:
    """name -> (mesh, the rotation that turns the template's front into this head's)."""
    import fast_simplification

    points, faces = template.vertices.astype(np.float64), template.faces
    fine, fine_faces = trimesh.remesh.subdivide(points, faces)
    turn = trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0])[:3, :3]
    turned = (fine @ turn.T) * 1e-3
    coarse, coarse_faces = fast_simplification.simplify(
        points.astype(np.float32), faces.astype(np.int64), target_reduction=0.5
    )
    same = np.eye(3)
    return {
        "MeshTalk head (6,172 vertices, mm)": (template, same),
        f"subdivided, metres, turned ({len(fine)} vertices)": (
            Mesh(vertices=turned.astype(np.float32), faces=fine_faces),
            turn,
        ),
        f"remeshed ({len(coarse)} vertices)": (
            Mesh(vertices=coarse.astype(np.float32), faces=coarse_faces.astype(np.int64)),
            same,
        ),
    }


def mouth_most_open(frames: np.ndarray, rest: np.ndarray) -> int:
    """The frame that moved furthest from rest (the largest 99th percentile of vertex motion:
    the open mouth, not a few stray vertices)."""
    motion = np.linalg.norm(frames - rest[None], axis=-1)
    return int(np.argmax(np.percentile(motion, 99, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the heads and animations here")
    args = parser.parse_args()
    template = read_mesh(REFERENCE / "meshtalk_topology" / "face_template.obj")
    speech = sorted((REFERENCE / "speech").glob("*.wav"))[0]
    work = Path(args.keep or tempfile.mkdtemp(prefix="heads-"))
    columns, titles = [], []
    meshtalk = Path(sys.executable).parent / "meshtalk"
    for index, (name, (mesh, orientation)) in enumerate(heads(template).items()):
        path = work / f"head_{index}.ply"
        write_mesh(path, mesh)
        out = work / f"animation_{index}"
        command = [str(meshtalk), "animate", str(speech), str(path), "-o", str(out)]
        subprocess.run([*command, "--no-video", "--force"], check=True)
        with np.load(out / "animation.npz", allow_pickle=False) as archive:
            frames = archive["vertices"]
        frame = mouth_most_open(frames, mesh.vertices)
        size = (PANEL, 2 * PANEL)
        with MeshRenderer(
            mesh.faces, mesh.vertices, size=size, samples=4, orientation=orientation
        ) as draw:
            columns.append(
                draw.render_panels([[Panel(frames[frame], view) for view in ("front", "side")]])
            )
        titles.append(f"{name}, frame {frame}")
    canvas = Image.fromarray(np.concatenate(columns, axis=1))
    pen = ImageDraw.Draw(canvas)
    for column, title in enumerate(titles):
        pen.text((column * PANEL + 6, 6), title, fill=(30, 30, 30))
    canvas.save(args.output)
    print(f"wrote {args.output}: {', '.join(titles)}")


if __name__ == "__main__":
    main()

"""A frame grid of the bundled default model on its clip: front and side, in the per-part colours.

Animates the bundled example (`meshtalk animate --example`, the whole ICT-FaceKit head) or reads
an animation folder of it, and draws the first frame, the frame with the mouth most open and the
frame with the eyes most closed, front above side:

    python examples/default_face_picture.py docs/figures/default_model_frames.png [--animation OUT/]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from meshtalk.pipelines.data.resources import default_model
from meshtalk.pipelines.inference.head import RIG_FILE, read_rig
from meshtalk.pipelines.io.mesh import read_mesh
from meshtalk.pipelines.render.colours import part_colours
from meshtalk.pipelines.render.renderer import MeshRenderer, Panel

PANEL = 360


def picture(animation: Path, output: Path, seed: int) -> None:
    with np.load(animation / "animation.npz", allow_pickle=False) as archive:
        vertices = archive["vertices"]
    head = read_mesh(animation / "template.obj")
    with np.load(default_model.folder() / RIG_FILE, allow_pickle=False) as data:
        landmarks = data["landmarks_68"]
    rig = read_rig(default_model.folder() / RIG_FILE)
    colours, visible = part_colours(head, rig.parts)
    lips = (vertices[:, landmarks[[61, 62, 63]], 1] - vertices[:, landmarks[[67, 66, 65]], 1]).max(
        1
    )
    eyes = vertices[:, landmarks[[43, 44, 37, 38]], 1] - vertices[:, landmarks[[47, 46, 41, 40]], 1]
    frames = {
        "first frame": 0,
        f"mouth most open ({lips.max():.1f} mm)": int(np.argmax(lips)),
        f"eyes most closed ({eyes.mean(1).min():.1f} mm)": int(np.argmin(eyes.mean(1))),
    }
    renderer = MeshRenderer(
        head.faces[visible], head.vertices, size=(PANEL * len(frames), 2 * PANEL), samples=4
    )
    with renderer:
        image = renderer.render_panels(
            [
                [Panel(vertices[i], view, colours) for view in ("front", "side")]
                for i in frames.values()
            ]
        )
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for column, (title, index) in enumerate(frames.items()):
        draw.text((column * PANEL + 8, 6), f"{title}, frame {index}", fill=(30, 30, 30))
    output.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(output)
    print(f"wrote {output}: frames {frames}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--animation", type=Path, help="an animate output folder of the example")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    args = parser.parse_args()
    if args.animation is not None:
        picture(args.animation, args.output, args.seed)
        return
    from meshtalk.pipelines.inference.animate import AnimateConfig
    from meshtalk.pipelines.inference.animate import run as animate

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        animate(AnimateConfig(example=True, output=out, video=False, seed=args.seed))
        picture(out, args.output, args.seed)


if __name__ == "__main__":
    main()

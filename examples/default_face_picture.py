"""A frame grid of the ICT-FaceKit head, front above side, in the per-part colours.

Animates the bundled example (`meshtalk animate --example`, the whole ICT-FaceKit head, once the
default model is of that head) or reads an animation folder of it, and draws the first frame, the
frame with the mouth most open and the frame with the eyes most closed; or, with `--data`, draws a
`synth --face ict` dataset's ground truth on the whole head (rest, mouth open, blink, p/b/m):

    python examples/default_face_picture.py docs/figures/default_model_frames.png [--animation OUT/]
    python examples/default_face_picture.py docs/figures/ict_synth_frames.png --data DATASET/
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
        head.faces[visible],
        head.vertices,
        size=(PANEL * len(frames), 2 * PANEL),
        samples=4,
        frame_on=rig.neutral[: rig.face_area],  # the face, as the video frames it
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


def data_picture(data: Path, output: Path) -> None:
    """The training data's identity 0 (the neutral head) on the whole head, from the ground
    truth's expression weights of its sentences: rest, the most open mouth, a blink, p/b/m."""
    import json

    topology = data / "topology"
    rig = read_rig(topology / RIG_FILE)
    head = read_mesh(topology / "head.obj")
    identity = sorted((data / "ground_truth").iterdir())[0]
    records = [json.loads(p.read_text()) for p in sorted(identity.glob("*.json"))]
    weights = np.concatenate(
        [np.stack([r["expression_weights"][n] for n in rig.names], 1) for r in records]
    )
    closures = [
        round((p["start_s"] + p["duration_s"] / 2) * r["fps"])
        + sum(len(q["frame_ids"]) for q in records[:k])
        for k, r in enumerate(records)
        for p in r["phones"]
        if p["viseme"] == "PP"
    ]
    column = {n: weights[:, k] for k, n in enumerate(rig.names)}
    frames = {
        "rest": 0,
        "mouth most open": int(np.argmax(column["jawOpen"])),
        "blink": int(np.argmax(column["eyeBlink_L"])),
        "p/b/m": int(closures[len(closures) // 2]) if closures else 1,
    }
    poses = rig.pose(weights[list(frames.values())])
    colours, visible = part_colours(head, rig.parts)
    face = rig.neutral[: rig.face_area]
    with MeshRenderer(
        head.faces[visible], head.vertices, size=(PANEL * len(frames), 2 * PANEL), samples=4,
        frame_on=np.concatenate([face, face * [1, 1, 0] + [0, 0, face[:, 2].min()]]),
    ) as renderer:  # fmt: skip
        image = renderer.render_panels(
            [[Panel(pose, view, colours) for view in ("front", "side")] for pose in poses]
        )
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for column_index, (title, index) in enumerate(frames.items()):
        draw.text((column_index * PANEL + 8, 6), f"{title}, frame {index}", fill=(30, 30, 30))
    output.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(output)
    print(f"wrote {output}: frames {frames}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--animation", type=Path, help="an animate output folder of the example")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--data", type=Path, help="draw a synth --face ict dataset's truth instead")
    args = parser.parse_args()
    if args.data is not None:
        data_picture(args.data, args.output)
        return
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

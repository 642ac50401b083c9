"""Run by Blender's Python (bpy): import an animation and write its evaluated vertex positions.

    python blender_positions.py KIND FILE FPS FRAMES OUT.npy [MESH.ply]

KIND: glb (bpy.ops.import_scene.gltf, merge_vertices=False), usd (wm.usd_import) or pc2 (the
Mesh Cache modifier on MESH.ply, frame_start = 0). The scene runs at FPS before the import (the glTF
importer puts keys at frame = t x fps). Writes (FRAMES, V, 3) float64: glb and usd in world
coordinates turned back to +Y up (Blender (x, y, z) is glTF/USD (x, -z, y); inverted here), pc2 in
the mesh's own coordinates (what the cache holds). Prints one JSON line of what it found.
"""

import json
import sys

import bpy
import numpy as np

kind, path, out = sys.argv[1], sys.argv[2], sys.argv[5]
fps, frames = float(sys.argv[3]), int(sys.argv[4])
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.fps = round(fps)
scene.render.fps_base = round(fps) / fps
if kind == "glb":
    bpy.ops.import_scene.gltf(filepath=path, merge_vertices=False)
elif kind == "usd":
    bpy.ops.wm.usd_import(filepath=path)
elif kind == "pc2":
    bpy.ops.wm.ply_import(filepath=sys.argv[6], forward_axis="Y", up_axis="Z")
else:
    raise SystemExit(f"unknown kind {kind}")
meshes = [obj for obj in scene.objects if obj.type == "MESH"]
if len(meshes) != 1:
    raise SystemExit(f"expected one mesh object, found {len(meshes)}")
obj = meshes[0]
if kind == "pc2":
    modifier = obj.modifiers.new("cache", "MESH_CACHE")
    modifier.cache_format = "PC2"
    modifier.filepath = path
    modifier.frame_start = 0
depsgraph = bpy.context.evaluated_depsgraph_get()
result = None
for frame in range(frames):
    scene.frame_set(frame)
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    count = len(mesh.vertices)
    if result is None:
        result = np.zeros((frames, count, 3))
    coords = np.zeros(count * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", coords)
    coords = coords.reshape(-1, 3).astype(np.float64)
    if kind != "pc2":
        matrix = np.array(evaluated.matrix_world)
        coords = coords @ matrix[:3, :3].T + matrix[:3, 3]
        coords = np.stack([coords[:, 0], coords[:, 2], -coords[:, 1]], axis=1)
    result[frame] = coords
    evaluated.to_mesh_clear()
np.save(out, result)
keys = obj.data.shape_keys
print(
    json.dumps(
        {
            "vertices": int(result.shape[1]),
            "frames": frames,
            "shape_keys": 0 if keys is None else len(keys.key_blocks),
        }
    )
)

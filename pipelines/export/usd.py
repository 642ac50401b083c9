"""USD through Pixar's usd-core: `.usdz` with UsdSkel blend shapes and the speech, `.usdc` with
time-sampled points.

Both stages: +Y up, metersPerUnit 1 (positions in metres), timeCodesPerSecond = framesPerSecond =
the clip's fps, time code t = frame t. The `.usdz` carries the template as a skinned mesh (one root
joint), the same blend shapes as the GLB (`basis.Basis`: weights in [0, 1], an offset shape held at
1), a SkelAnimation whose blendShapeWeights are sampled at every frame, and a
`UsdMediaSpatialAudio` prim playing the speech's WAV (packaged inside) from time code 0. The
`.usdc` is the plain mesh with its points sampled at every frame, for modelling tools.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from meshtalk.pipelines.export.basis import Basis
from meshtalk.pipelines.io.mesh import Mesh

ROOT, MESH, SKEL = "/Face", "/Face/Mesh", "/Face/Skel"


UPGRADE_NOTICE = ("RequestWriteVersionUpgrade", "Upgrading crate file")
"""usd-core tells on stderr that a layer holding time codes (the audio prim's) becomes crate 0.9;
the tests' clients read it, so the notice is dropped (any other line is passed on)."""


@contextlib.contextmanager
def _without_upgrade_notice(folder: Path) -> Iterator[None]:
    """Catch what usd-core's C++ writes to stderr meanwhile; pass on all but the notice."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(dir=folder) as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if not any(mark in line for mark in UPGRADE_NOTICE):
                    sys.stderr.write(line + "\n")


def _stage(path: Path, fps: float, frames: int):
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.SetTimeCodesPerSecond(fps)
    stage.SetFramesPerSecond(fps)
    stage.SetStartTimeCode(0)
    stage.SetEndTimeCode(max(frames - 1, 0))
    return stage


def _mesh(stage, path: str, mesh: Mesh, kind=None):
    """The template as a UsdGeom.Mesh (or `kind`: a schema with Define) with its UVs."""
    from pxr import Sdf, UsdGeom, Vt

    prim = (kind or UsdGeom.Mesh).Define(stage, path)
    geom = UsdGeom.Mesh(prim.GetPrim())
    faces = np.asarray(mesh.faces, np.int32).reshape(-1, 3)
    points = np.asarray(mesh.vertices, np.float32)
    geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points))
    geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, np.int32)))
    geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(faces.ravel()))
    geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    geom.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([points.min(0), points.max(0)])))
    if mesh.uvs is not None and mesh.face_uvs is not None:
        st = UsdGeom.PrimvarsAPI(geom).CreatePrimvar(
            "st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.faceVarying
        )
        st.Set(Vt.Vec2fArray.FromNumpy(np.asarray(mesh.uvs, np.float32)))
        st.SetIndices(Vt.IntArray.FromNumpy(np.asarray(mesh.face_uvs, np.int32).ravel()))
    if mesh.colours is not None and len(mesh.colours) == len(points):
        colours = np.asarray(mesh.colours, np.float32)[:, :3]
        geom.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set(Vt.Vec3fArray.FromNumpy(colours))
    return geom


def _audio(stage, wav: Path, frames: int, fps: float, duration_s: float) -> None:
    from pxr import Sdf, UsdMedia

    audio = UsdMedia.SpatialAudio.Define(stage, f"{ROOT}/Speech")
    audio.CreateFilePathAttr(Sdf.AssetPath(wav.name))
    audio.CreateAuralModeAttr(UsdMedia.Tokens.nonSpatial)
    audio.CreatePlaybackModeAttr(UsdMedia.Tokens.onceFromStartToEnd)
    audio.CreateStartTimeAttr(Sdf.TimeCode(0))
    audio.CreateEndTimeAttr(Sdf.TimeCode(max(duration_s * fps, frames - 1)))


def write_usdz(
    path: Path,
    mesh: Mesh,
    basis: Basis,
    fps: float,
    wav: Path | None = None,
    duration_s: float = 0.0,
    extras: dict | None = None,
) -> None:
    """The clip as a `.usdz` package (the caller makes `path` atomic).

    Args:
        path: the `.usdz` to write.
        mesh: the template in metres.
        basis: blend shapes (metres) and per-frame weights.
        fps: frames per second.
        wav: the speech, packaged beside the stage, or None.
        duration_s: the speech's length (the audio prim's end).
        extras: recorded in the stage's customLayerData under `meshtalk`.
    """
    from pxr import Gf, Sdf, UsdGeom, UsdSkel, Vt

    weights = np.asarray(basis.weights, np.float32)
    frames = len(weights)
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".usdz-") as folder,
        _without_upgrade_notice(path.parent),
    ):
        layer = Path(folder) / "animation.usdc"
        stage = _stage(layer, fps, frames)
        root = UsdSkel.Root.Define(stage, ROOT)
        stage.SetDefaultPrim(root.GetPrim())
        skeleton = UsdSkel.Skeleton.Define(stage, SKEL)
        identity = Vt.Matrix4dArray([Gf.Matrix4d(1)])
        skeleton.CreateJointsAttr(["root"])
        skeleton.CreateBindTransformsAttr(identity)
        skeleton.CreateRestTransformsAttr(identity)
        animation = UsdSkel.Animation.Define(stage, f"{SKEL}/Animation")
        animation.CreateJointsAttr(["root"])
        animation.CreateTranslationsAttr(Vt.Vec3fArray([Gf.Vec3f(0)]))
        animation.CreateRotationsAttr(Vt.QuatfArray([Gf.Quatf(1)]))
        animation.CreateScalesAttr(Vt.Vec3hArray([Gf.Vec3h(1)]))
        names = basis.names
        animation.CreateBlendShapesAttr(names)
        attribute = animation.CreateBlendShapeWeightsAttr()
        for frame, row in enumerate(weights):
            attribute.Set(Vt.FloatArray.FromNumpy(row), frame)
        UsdSkel.BindingAPI.Apply(skeleton.GetPrim()).CreateAnimationSourceRel().SetTargets(
            [animation.GetPath()]
        )
        geom = _mesh(stage, MESH, mesh)
        binding = UsdSkel.BindingAPI.Apply(geom.GetPrim())
        binding.CreateSkeletonRel().SetTargets([skeleton.GetPath()])
        binding.CreateJointIndicesPrimvar(True, 1).Set(Vt.IntArray([0]))
        binding.CreateJointWeightsPrimvar(True, 1).Set(Vt.FloatArray([1.0]))
        binding.CreateGeomBindTransformAttr(Gf.Matrix4d(1))
        binding.CreateBlendShapesAttr(names)
        shapes = []
        for name, target in zip(names, basis.targets):
            shape = UsdSkel.BlendShape.Define(stage, f"{MESH}/{name}")
            shape.CreateOffsetsAttr(Vt.Vec3fArray.FromNumpy(np.asarray(target, np.float32)))
            shapes.append(shape.GetPath())
        binding.CreateBlendShapeTargetsRel().SetTargets(shapes)
        UsdGeom.Imageable(geom).CreatePurposeAttr(UsdGeom.Tokens.default_)
        if wav is not None:
            _audio(stage, wav, frames, fps, duration_s)
        stage.GetRootLayer().customLayerData = {"meshtalk": dict(extras or {})}
        stage.GetRootLayer().Save()
        del stage
        # The package: the stage first, then the speech it names (Sdf aligns the files to 64
        # bytes, as USDZ wants; nothing is written outside the output folder).
        writer = Sdf.ZipFileWriter.CreateNew(str(path))
        writer.AddFile(str(layer), layer.name)
        if wav is not None:
            writer.AddFile(str(wav), wav.name)
        writer.Save()


def write_usdc(
    path: Path,
    mesh: Mesh,
    frames: Iterable[np.ndarray],
    total: int,
    fps: float,
    extras: dict | None = None,
) -> None:
    """The clip as a `.usdc` mesh whose points are sampled at every frame (time code = frame).

    Args:
        path: the `.usdc` to write (the caller makes it atomic; its suffix must be `.usdc`).
        mesh: the template in metres.
        frames: (n, V, 3) chunks of positions in metres, `total` frames in all.
        fps: frames per second.
    """
    from pxr import UsdGeom, Vt

    stage = _stage(path, fps, total)
    root = UsdGeom.Xform.Define(stage, ROOT)
    stage.SetDefaultPrim(root.GetPrim())
    geom = _mesh(stage, MESH, mesh)
    # time samples straight into the root layer (the stage's edit target): a third of the cost of
    # Usd.Attribute.Set, which resolves the edit target and sends change notices per sample
    layer = stage.GetRootLayer()
    points, extent = geom.GetPointsAttr().GetPath(), geom.GetExtentAttr().GetPath()
    frame = 0
    for chunk in frames:
        chunk = np.asarray(chunk, np.float32)
        # each axis's extremes by strided slices: numpy reduces over a length-3 last axis at a
        # twentieth of the speed (3 s of 60 s of a 26k-vertex head, against 0.07 s)
        low = np.stack([chunk[:, :, axis].min(axis=1) for axis in range(3)], axis=1)
        high = np.stack([chunk[:, :, axis].max(axis=1) for axis in range(3)], axis=1)
        for positions, box in zip(chunk, np.stack([low, high], axis=1), strict=True):
            layer.SetTimeSample(points, frame, Vt.Vec3fArray.FromNumpy(positions))
            layer.SetTimeSample(extent, frame, Vt.Vec3fArray.FromNumpy(box))
            frame += 1
    layer.customLayerData = {"meshtalk": dict(extras or {})}
    layer.Save()


def validate(path: Path) -> list[str]:
    """Every issue `pxr.UsdValidation`'s registered validators find on the file (empty: none)."""
    from pxr import Usd, UsdValidation

    stage = Usd.Stage.Open(str(path))
    registry = UsdValidation.ValidationRegistry()
    context = UsdValidation.ValidationContext(registry.GetOrLoadAllValidators())
    return [f"{error.GetName()}: {error.GetMessage()}" for error in context.Validate(stage)]

"""Headless shaded rendering of a face mesh: OpenGL through EGL (moderngl), no display needed.

On a machine without a GPU, Mesa's llvmpipe draws a 640x480 frame of the 6172-vertex MeshTalk face
in a few milliseconds. Coordinates follow the rest of the toolkit: x to the face's left (the
viewer's right), y up, z towards the viewer of the front view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError

VIEWS = ("front", "side", "both")
BACKGROUND = (0.93, 0.93, 0.93)
"""Light grey behind the face."""
FACE_COLOUR = (0.74, 0.72, 0.70)
"""A warm grey, darker than the background even where the face is lit head-on."""
FIELD_OF_VIEW = 20.0
"""Vertical field of view in degrees: a long lens, so the face is barely distorted."""
MARGIN = 1.12
"""The template's bounds fill 1 / MARGIN of a panel, leaving room for motion beyond them."""

# The directions the camera looks from: (towards the camera, up) for each named view.
CAMERAS = {
    "front": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    "side": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
}

VERTEX_SHADER = """
#version 330
uniform mat4 view_projection;
in vec3 position;
in vec3 normal;
in vec3 colour;
out vec3 v_position;
out vec3 v_normal;
out vec3 v_colour;
void main() {
    v_position = position;
    v_normal = normal;
    v_colour = colour;
    gl_Position = view_projection * vec4(position, 1.0);
}
"""

# Two-sided diffuse from a key and a fill light fixed to the camera, ambient, a little specular.
FRAGMENT_SHADER = """
#version 330
uniform vec3 eye;
uniform vec3 right;
uniform vec3 up;
uniform vec3 base_colour;
uniform bool vertex_colours;
in vec3 v_position;
in vec3 v_normal;
in vec3 v_colour;
out vec4 f_colour;
void main() {
    vec3 to_eye = normalize(eye - v_position);
    vec3 n = normalize(v_normal);
    if (dot(n, to_eye) < 0.0) n = -n;
    vec3 forward = -to_eye;
    vec3 key = normalize(-forward + 0.5 * up + 0.45 * right);
    vec3 fill = normalize(-forward - 0.2 * up - 0.8 * right);
    float diffuse = 0.65 * max(dot(n, key), 0.0) + 0.2 * max(dot(n, fill), 0.0);
    float specular = 0.1 * pow(max(dot(n, normalize(key + to_eye)), 0.0), 32.0);
    vec3 albedo = vertex_colours ? v_colour : base_colour;
    f_colour = vec4(albedo * (0.2 + diffuse) + vec3(specular), 1.0);
}
"""


def open_context():
    """A standalone OpenGL context through EGL, or a one-line error naming the missing package."""
    try:
        import moderngl

        return moderngl.create_standalone_context(backend="egl", require=330)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MeshtalkError(
            None,
            f"cannot open an OpenGL context through EGL ({reason}): install the Debian package "
            "libegl1 (and libgl1-mesa-dri for software rendering with llvmpipe); "
            "--no-video skips the video",
        ) from None


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted per-vertex normals, unit length (zero for unused vertices).

    Args:
        vertices: (V, 3) float32.
        faces: (F, 3) int vertex indices.

    Returns:
        (V, 3) float32.
    """
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    a, b = v1 - v0, v2 - v0
    face_normals = np.empty_like(a)
    face_normals[:, 0] = a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1]
    face_normals[:, 1] = a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2]
    face_normals[:, 2] = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    corners = faces.reshape(-1)
    per_corner = np.repeat(face_normals, 3, axis=0)
    count = len(vertices)
    normals = np.empty((count, 3), dtype=np.float32)
    for axis in range(3):
        normals[:, axis] = np.bincount(corners, weights=per_corner[:, axis], minlength=count)
    length = np.sqrt(np.einsum("ij,ij->i", normals, normals))
    normals /= np.maximum(length, 1e-12)[:, None]
    return normals


@dataclass(frozen=True)
class Camera:
    """A perspective camera framed on a box, as the matrices and vectors the shaders take."""

    view_projection: np.ndarray
    eye: np.ndarray
    right: np.ndarray
    up: np.ndarray


def frame_camera(
    bounds: np.ndarray, view: str, aspect: float, orientation: np.ndarray | None = None
) -> Camera:
    """A camera looking at the box around `bounds` from `view`, the box filling the panel.

    Args:
        bounds: (N, 3) points whose bounding box must be in view (the template).
        view: "front" or "side".
        aspect: panel width / height.
        orientation: (3, 3) rotation of the face in these coordinates (its front is
            orientation @ +Z, its up orientation @ +Y); None: the face is given front +Z, up +Y.
    """
    towards, up_hint = (np.asarray(v, dtype=np.float64) for v in CAMERAS[view])
    if orientation is not None:
        towards, up_hint = orientation @ towards, orientation @ up_hint
    low, high = bounds.min(axis=0).astype(np.float64), bounds.max(axis=0).astype(np.float64)
    centre = (low + high) / 2
    right = np.cross(up_hint, towards)
    up = np.cross(towards, right)
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])]) - centre  # fmt: skip
    half_width = np.abs(corners @ right).max() * MARGIN
    half_height = np.abs(corners @ up).max() * MARGIN
    half_depth = np.abs(corners @ towards).max()
    radius = float(np.linalg.norm(high - low)) / 2 or 1.0
    tan_half = math.tan(math.radians(FIELD_OF_VIEW) / 2)
    distance = max(half_height / tan_half, half_width / (tan_half * aspect)) + half_depth
    distance = max(distance, 1e-6)
    eye = centre + distance * towards
    near = max(distance - 3 * radius, distance * 0.02)
    far = distance + 3 * radius
    view_matrix = np.eye(4)
    view_matrix[0, :3], view_matrix[1, :3], view_matrix[2, :3] = right, up, towards
    view_matrix[:3, 3] = -view_matrix[:3, :3] @ eye
    focal = 1 / tan_half
    projection = np.zeros((4, 4))
    # y is flipped so that the framebuffer reads back top row first, as images are stored.
    projection[0, 0], projection[1, 1] = focal / aspect, -focal
    projection[2, 2] = (far + near) / (near - far)
    projection[2, 3] = 2 * far * near / (near - far)
    projection[3, 2] = -1.0
    matrix = (projection @ view_matrix).astype(np.float32)
    return Camera(matrix, eye.astype(np.float32), right.astype(np.float32), up.astype(np.float32))


@dataclass(frozen=True)
class Panel:
    """One mesh drawn in one cell of the image grid.

    Attributes:
        vertices: (V, 3) positions.
        view: "front" or "side".
        colours: (V, 3) float32 per-vertex colours in [0, 1], or None for the plain face colour.
    """

    vertices: np.ndarray
    view: str = "front"
    colours: np.ndarray | None = None


class MeshRenderer:
    """Renders a mesh of fixed topology frame after frame into RGB images, reusing one context.

    Args:
        faces: (F, 3) int vertex indices.
        bounds_vertices: (V, 3) the template; the camera is framed once on its bounding box, so the
            view does not move during an animation.
        size: (width, height) of the images in pixels.
        view: "front", "side", or "both" (front and side panels side by side).
        samples: multisample anti-aliasing (0: off). Smoother silhouettes, but on llvmpipe 4
            samples halve the frame rate (about 170 -> 85 frames/s at 640x480 on 2 cores).
        orientation: (3, 3) rotation of the face in the mesh's coordinates, for a mesh not given
            front +Z and up +Y (a transfer's registration knows it); None: as given.
        frame_on: (N, 3) points the camera is framed on instead of `bounds_vertices` (to draw
            two meshes with one camera).

    Raises:
        MeshtalkError: when no OpenGL context can be opened through EGL.
    """

    def __init__(
        self,
        faces: np.ndarray,
        bounds_vertices: np.ndarray,
        size: tuple[int, int] = (640, 480),
        view: str = "front",
        samples: int = 0,
        orientation: np.ndarray | None = None,
        frame_on: np.ndarray | None = None,
    ) -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        faces = np.ascontiguousarray(faces, dtype=np.int64)
        bounds_vertices = np.asarray(bounds_vertices, dtype=np.float32)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {faces.shape}")
        if not len(faces):
            raise MeshtalkError(None, "the mesh has no faces to draw (give a mesh, or --no-video)")
        if bounds_vertices.ndim != 2 or bounds_vertices.shape[1] != 3:
            raise ValueError(f"bounds_vertices must be (V, 3), got {bounds_vertices.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= len(bounds_vertices)):
            raise ValueError(f"faces index vertices outside 0..{len(bounds_vertices) - 1}")
        self.faces = faces
        self.bounds = bounds_vertices if frame_on is None else np.asarray(frame_on, np.float32)
        self.orientation = None
        if orientation is not None:
            rotation = np.asarray(orientation, dtype=np.float64)
            u, _, vt = np.linalg.svd(rotation)  # the nearest rotation (drops scale)
            self.orientation = u @ vt
        self.num_vertices = len(bounds_vertices)
        self.size = (int(size[0]), int(size[1]))
        self.view = view
        self.samples = int(samples)
        self._cameras: dict[tuple[str, float], Camera] = {}
        self.ctx = open_context()
        try:
            self._setup()
        except BaseException:
            self.ctx.release()
            raise

    def _setup(self) -> None:
        ctx = self.ctx
        width, height = self.size
        self.program = ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        vertex_bytes = self.num_vertices * 3 * 4
        self.positions = ctx.buffer(reserve=vertex_bytes, dynamic=True)
        self.normals = ctx.buffer(reserve=vertex_bytes, dynamic=True)
        self.colours = ctx.buffer(reserve=vertex_bytes, dynamic=True)
        self.indices = ctx.buffer(self.faces.astype(np.uint32).tobytes())
        self.vao = ctx.vertex_array(
            self.program,
            [
                (self.positions, "3f", "position"),
                (self.normals, "3f", "normal"),
                (self.colours, "3f", "colour"),
            ],
            index_buffer=self.indices,
            index_element_size=4,
        )
        samples = min(max(self.samples, 0), ctx.max_samples)
        self.fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((width, height), components=4, samples=samples)],
            depth_attachment=ctx.depth_renderbuffer((width, height), samples=samples),
        )
        # Multisampled pixels are averaged into a plain framebuffer before they are read.
        self.resolved = self.fbo
        if samples:
            self.resolved = ctx.framebuffer(
                color_attachments=[ctx.renderbuffer((width, height), components=4)]
            )
        self._colours_bound: np.ndarray | None = None

    def _camera(self, view: str, aspect: float) -> Camera:
        key = (view, round(aspect, 6))
        if key not in self._cameras:
            self._cameras[key] = frame_camera(self.bounds, view, aspect, self.orientation)
        return self._cameras[key]

    def render(self, vertices: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
        """One frame of the mesh in this renderer's view.

        Args:
            vertices: (V, 3) float positions.
            colours: (V, 3) per-vertex colours in [0, 1] (e.g. `colours.part_colours`), or None.

        Returns:
            (height, width, 3) uint8 RGB image, top row first.
        """
        views = ("front", "side") if self.view == "both" else (self.view,)
        return self.render_panels([[Panel(vertices, view, colours)] for view in views])

    def render_panels(
        self, columns: Sequence[Sequence[Panel]], used_width: int | None = None
    ) -> np.ndarray:
        """Several meshes in a grid of panels: `columns[i][j]` is drawn in column i, row j.

        Every column has the same number of rows; panels share the image equally.

        Args:
            columns: the panels, column by column.
            used_width: pixels from the left that the panels share (default: the whole width);
                the rest stays background, e.g. for a colour bar.

        Returns:
            (height, width, 3) uint8 RGB image, top row first (a new array each call).
        """
        width, height = self.size
        used_width = width if used_width is None else int(used_width)
        num_columns, num_rows = len(columns), len(columns[0])
        if num_columns == 0 or any(len(column) != num_rows for column in columns) or num_rows == 0:
            raise ValueError("render_panels needs a non-empty grid with equal rows per column")
        ctx = self.ctx
        self.fbo.use()
        ctx.enable(ctx.DEPTH_TEST)
        ctx.clear(*BACKGROUND, 1.0)
        edges_x = np.linspace(0, used_width, num_columns + 1).round().astype(int)
        edges_y = np.linspace(0, height, num_rows + 1).round().astype(int)
        cells = [
            (i, j, panel) for i, column in enumerate(columns) for j, panel in enumerate(column)
        ]
        # Panels of the same mesh one after the other: each mesh's normals are computed once.
        first_seen: dict[int, int] = {}
        for n, (_, _, panel) in enumerate(cells):
            first_seen.setdefault(id(panel.vertices), n)
        cells.sort(key=lambda cell: first_seen[id(cell[2].vertices)])
        uploaded = None
        for i, j, panel in cells:
            if panel.vertices is not uploaded:
                self._upload(panel.vertices)
                uploaded = panel.vertices
            self._set_colours(panel.colours)
            x0, x1 = edges_x[i], edges_x[i + 1]
            # The image's top row is the framebuffer's row 0 (see the projection).
            y0, y1 = edges_y[j], edges_y[j + 1]
            ctx.viewport = (x0, y0, x1 - x0, y1 - y0)
            camera = self._camera(panel.view, (x1 - x0) / (y1 - y0))
            self.program["view_projection"].write(camera.view_projection.T.tobytes())
            self.program["eye"].value = tuple(camera.eye)
            self.program["right"].value = tuple(camera.right)
            self.program["up"].value = tuple(camera.up)
            self.vao.render()
        ctx.viewport = (0, 0, width, height)
        if self.resolved is not self.fbo:
            ctx.copy_framebuffer(self.resolved, self.fbo)
        image = np.empty((height, width, 3), dtype=np.uint8)
        self.resolved.read_into(image, components=3, alignment=1)
        return image

    def _upload(self, vertices: np.ndarray) -> None:
        vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        if vertices.shape != (self.num_vertices, 3):
            raise ValueError(f"vertices must be ({self.num_vertices}, 3), got {vertices.shape}")
        self.positions.write(vertices)
        self.normals.write(vertex_normals(vertices, self.faces))

    def _set_colours(self, colours: np.ndarray | None) -> None:
        self.program["vertex_colours"].value = colours is not None
        self.program["base_colour"].value = FACE_COLOUR
        if colours is not None and colours is not self._colours_bound:
            colours = np.ascontiguousarray(colours, dtype=np.float32)
            if colours.shape != (self.num_vertices, 3):
                raise ValueError(f"colours must be ({self.num_vertices}, 3), got {colours.shape}")
            self.colours.write(colours)
            self._colours_bound = colours

    def close(self) -> None:
        """Release the OpenGL context (safe to call twice)."""
        if self.ctx is not None:
            self.ctx.release()
            self.ctx = None

    def __enter__(self) -> MeshRenderer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

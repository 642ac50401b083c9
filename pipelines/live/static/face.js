// The face: a three.js scene with lit, shaded meshes whose vertices move every frame.
import * as THREE from "three";
import { OrbitControls } from "/static/three/OrbitControls.js";

export const MESH_MAGIC = "MTMS";

// The template of protocol.pack_mesh: "MTMS", uint32 V, uint32 F, V*3 float32, F*3 uint32.
export async function fetchMesh(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  const buffer = await response.arrayBuffer();
  const magic = new TextDecoder().decode(new Uint8Array(buffer, 0, 4));
  if (magic !== MESH_MAGIC) throw new Error(`${url}: not a mesh`);
  const view = new DataView(buffer);
  const vertices = view.getUint32(4, true);
  const faces = view.getUint32(8, true);
  const positions = new Float32Array(buffer.slice(12, 12 + vertices * 12));
  const indices = new Uint32Array(buffer.slice(12 + vertices * 12, 12 + vertices * 12 + faces * 12));
  return { positions, indices, vertices };
}

// Whether WebGL runs on the CPU (no GPU, or a browser that blocks it): SwiftShader, llvmpipe.
function softwareRenderer(gl) {
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  const name = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
  return /swiftshader|llvmpipe|softpipe|software/i.test(name);
}

export class Stage {
  // options.softwareScale: the pixel ratio on a software renderer, where drawing costs CPU time
  // in proportion to the pixels (the live page keeps up with 30 frames a second at 0.5 where it
  // fell behind at 0.7 and 1 on 2 cores). ?scale=R sets the ratio everywhere.
  constructor(canvas, options = {}) {
    this.canvas = canvas;
    const params = new URLSearchParams(location.search);
    // ?aa=0 turns anti-aliasing off (a software GPU draws about twice as many frames without it).
    const antialias = params.get("aa") !== "0";
    this.renderer = new THREE.WebGLRenderer({ canvas, antialias, preserveDrawingBuffer: true });
    this.software = softwareRenderer(this.renderer.getContext());
    const scale = Number(params.get("scale"));
    let ratio = Math.min(2, window.devicePixelRatio || 1);
    if (scale > 0) ratio = Math.min(2, scale);
    else if (this.software && options.softwareScale) ratio = options.softwareScale;
    this.pixelRatio = ratio;
    this.renderer.setPixelRatio(ratio);
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x20242a);
    this.camera = new THREE.PerspectiveCamera(30, 1, 0.01, 1e6);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x404040, 1.2));
    const key = new THREE.DirectionalLight(0xffffff, 2.2);
    key.position.set(0.5, 0.6, 1.0);
    this.scene.add(key);
    const rim = new THREE.DirectionalLight(0xaaccff, 0.8);
    rim.position.set(-0.8, 0.2, -0.6);
    this.scene.add(rim);
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.enableDamping = false;
    this.faces = [];
    this.resize();
    window.addEventListener("resize", () => this.resize());
  }

  resize() {
    const width = this.canvas.clientWidth || 640;
    const height = this.canvas.clientHeight || 480;
    this.renderer.setSize(width, height, false);
    this.camera.aspect = width / height;
    this.camera.updateProjectionMatrix();
  }

  // Adds a face; faces are laid out side by side along x. `colours`: per-vertex colours that
  // setColours changes (the heat map); `base`: fixed per-vertex sRGB colours in [0, 1] (V*3).
  addFace(mesh, colours = false, base = null) {
    const geometry = new THREE.BufferGeometry();
    const position = new THREE.BufferAttribute(new Float32Array(mesh.positions), 3);
    position.setUsage(THREE.DynamicDrawUsage);
    geometry.setAttribute("position", position);
    geometry.setIndex(new THREE.BufferAttribute(mesh.indices, 1));
    const painted = colours || base !== null;
    if (colours) {
      const colour = new THREE.BufferAttribute(new Float32Array(mesh.vertices * 3).fill(0.8), 3);
      colour.setUsage(THREE.DynamicDrawUsage);
      geometry.setAttribute("color", colour);
    } else if (base !== null) {
      // sRGB as the video paints them -> the linear values vertex colours hold
      geometry.setAttribute("color", new THREE.BufferAttribute(base.map(linear), 3));
    }
    geometry.computeVertexNormals();
    geometry.computeBoundingBox();
    const material = new THREE.MeshPhongMaterial({
      color: painted ? 0xffffff : 0xd9b8a3,
      specular: 0x222222,
      shininess: 20,
      vertexColors: painted,
      side: THREE.DoubleSide,
    });
    const object = new THREE.Mesh(geometry, material);
    object.frustumCulled = false;
    const face = { object, template: mesh.positions, vertices: mesh.vertices, geometry };
    this.faces.push(face);
    this.scene.add(object);
    this.layout();
    return face;
  }

  layout() {
    const box = this.faces[0].geometry.boundingBox;
    const size = new THREE.Vector3();
    box.getSize(size);
    const gap = size.x * 1.15;
    const centre = new THREE.Vector3();
    box.getCenter(centre);
    this.faces.forEach((face, i) => {
      face.object.position.set((i - (this.faces.length - 1) / 2) * gap - centre.x, -centre.y, -centre.z);
    });
    const width = gap * this.faces.length;
    const height = size.y * 1.1;
    const fov = (this.camera.fov * Math.PI) / 180;
    const distance = Math.max(height / 2 / Math.tan(fov / 2), width / 2 / Math.tan(fov / 2) / this.camera.aspect);
    this.camera.position.set(0, 0, distance * 1.15 + size.z / 2);
    this.camera.near = distance / 100;
    this.camera.far = distance * 100;
    this.camera.updateProjectionMatrix();
    this.controls.target.set(0, 0, 0);
    this.controls.update();
  }

  // offsets: Float32Array of V*3 (a view into a frame) or null for the template.
  setOffsets(face, offsets) {
    const position = face.geometry.attributes.position;
    const array = position.array;
    const template = face.template;
    if (offsets === null) array.set(template);
    else for (let i = 0; i < array.length; i++) array[i] = template[i] + offsets[i];
    position.needsUpdate = true;
    face.geometry.computeVertexNormals();
  }

  setColours(face, values, max) {
    const colour = face.geometry.attributes.color;
    for (let v = 0; v < face.vertices; v++) {
      // The colour bar's sRGB colours, as the linear values vertex colours hold.
      const [r, g, b] = heat(values[v] / max).map(linear);
      colour.array[3 * v] = r;
      colour.array[3 * v + 1] = g;
      colour.array[3 * v + 2] = b;
    }
    colour.needsUpdate = true;
  }

  render() {
    this.controls.update();
    this.renderer.render(this.scene, this.camera);
  }
}

// A perceptual heat map (0 -> dark blue, 1 -> yellow), piecewise linear through viridis-like stops.
const STOPS = [
  [0.267, 0.005, 0.329],
  [0.231, 0.322, 0.545],
  [0.129, 0.569, 0.549],
  [0.369, 0.788, 0.384],
  [0.993, 0.906, 0.144],
];

export function heat(x) {
  const t = Math.min(1, Math.max(0, Number.isFinite(x) ? x : 0)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t));
  const f = t - i;
  return STOPS[i].map((c, k) => c + (STOPS[i + 1][k] - c) * f);
}

function linear(c) {
  return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
}

export function percentile(values, p) {
  if (values.length === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

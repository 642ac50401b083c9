// three.js r187 in Node: GLTFLoader.parse the GLB, play its first animation with an AnimationMixer,
// and write the morphed positions of its first mesh at the given frames (no renderer: base
// positions plus the relative morph targets times morphTargetInfluences, as the GPU does).
//   node three_positions.mjs FILE.glb FPS OUT.f32 FRAME [FRAME ...]
// OUT.f32: float32 (frames, V, 3); stdout: one JSON line (vertices, targets, influences used).
import { readFile, writeFile } from "node:fs/promises";
import { AnimationMixer, LoopOnce } from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

const [path, fpsText, out, ...frameTexts] = process.argv.slice(2);
const fps = Number(fpsText);
const data = await readFile(path);
const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
const gltf = await new Promise((resolve, reject) =>
  new GLTFLoader().parse(buffer, "", resolve, reject),
);
let mesh = null;
gltf.scene.traverse((object) => {
  if (!mesh && object.isMesh) mesh = object;
});
const mixer = new AnimationMixer(gltf.scene);
const action = mixer.clipAction(gltf.animations[0]);
action.setLoop(LoopOnce); // the last frame is the clip's end, not its start again
action.clampWhenFinished = true;
action.play();
const base = mesh.geometry.attributes.position;
const targets = mesh.geometry.morphAttributes.position || [];
const relative = mesh.geometry.morphTargetsRelative;
const count = base.count;
const result = new Float32Array(frameTexts.length * count * 3);
frameTexts.forEach((text, index) => {
  mixer.setTime(Number(text) / fps);
  mesh.updateMatrixWorld(true);
  const influences = mesh.morphTargetInfluences;
  for (let v = 0; v < count; v++) {
    for (let axis = 0; axis < 3; axis++) {
      const start = base.getComponent(v, axis);
      let value = start;
      for (let k = 0; k < targets.length; k++) {
        const w = influences[k];
        if (w === 0) continue;
        const t = targets[k].getComponent(v, axis);
        value += relative ? w * t : w * (t - start);
      }
      result[(index * count + v) * 3 + axis] = value;
    }
  }
});
await writeFile(out, Buffer.from(result.buffer));
process.stdout.write(JSON.stringify({ vertices: count, targets: targets.length }));

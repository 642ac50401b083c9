// meshtalk view: the takes side by side, driven by the speech's audio clock.
import { Stage, fetchMesh, heat } from "/static/face.js";

const state = { ready: false, errors: [], draws: 0, last: null, takes: [], playing: false };
window.meshtalk = state;
window.addEventListener("error", (event) => state.errors.push(String(event.message)));

const $ = (id) => document.getElementById(id);
const audio = $("speech");
let clockStart = null; // wall-clock fallback when there is no speech
let pausedAt = 0;

function clock() {
  if (audio.src) return audio.currentTime;
  if (clockStart === null) return pausedAt;
  return (performance.now() - clockStart) / 1000;
}

async function main() {
  const listing = await (await fetch("/view.json")).json();
  const stage = new Stage($("face"));
  const compare = listing.compare;
  let distances = null; // one per compared pair: [take a, take b, distance per vertex]
  if (compare) {
    distances = compare.pairs.map(([a, b]) => [a, b, new Float32Array(listing.takes[a].vertices)]);
    drawColourBar(compare.max_mm);
  }
  for (const take of listing.takes) {
    const mesh = await fetchMesh(take.mesh);
    // The clip as morph targets (K x V x 3) and their weights per frame (T x K): the GLB's basis.
    const targets = new Float32Array(await (await fetch(take.targets)).arrayBuffer());
    const weights = new Float32Array(await (await fetch(take.weights)).arrayBuffer());
    const offsets = new Float32Array(take.vertices * 3);
    // The parts' colours (skin, mouth, teeth, eyes) as in the mp4; the heat map replaces them.
    let base = null;
    if (take.colours && !compare) {
      base = new Float32Array(await (await fetch(take.colours)).arrayBuffer());
    }
    const face = stage.addFace(mesh, Boolean(compare), base);
    state.takes.push({ ...take, face, targets, weights, offsets, shown: -1 });
  }
  $("names").textContent = listing.takes.map((t) => t.name).join("  |  ");
  const first = listing.takes[0];
  const duration = Math.max(...listing.takes.map((t) => t.duration_s));
  $("scrub").max = String(duration);
  if (first.audio) {
    // From memory (a blob), so that the scrub bar can seek anywhere in it.
    const speech = await (await fetch(first.audio)).blob();
    audio.src = URL.createObjectURL(speech);
  }

  $("play").onclick = () => (isPlaying() ? pause() : play());
  $("scrub").oninput = () => seek(Number($("scrub").value));
  audio.onended = () => { $("play").textContent = "Play"; };

  function draw() {
    const t = clock();
    let frameShown = -1;
    let changed = false;
    for (const take of state.takes) {
      const frame = Math.max(0, Math.min(take.frames - 1, Math.floor(t * take.fps + 1e-6)));
      if (frame !== take.shown) {
        stage.setOffsets(take.face, pose(take, frame));
        take.shown = frame;
        changed = true;
      }
      if (frameShown < 0) frameShown = frame;
    }
    if (distances && changed) {
      // Each vertex's distance between a pair's faces as drawn (both within the basis's error).
      for (const [first, second, values] of distances) {
        const a = state.takes[first].face.geometry.attributes.position.array;
        const b = state.takes[second].face.geometry.attributes.position.array;
        for (let v = 0; v < values.length; v++) {
          const dx = a[3 * v] - b[3 * v], dy = a[3 * v + 1] - b[3 * v + 1], dz = a[3 * v + 2] - b[3 * v + 2];
          values[v] = Math.sqrt(dx * dx + dy * dy + dz * dz);
        }
        stage.setColours(state.takes[first].face, values, compare.max_mm);
        stage.setColours(state.takes[second].face, values, compare.max_mm);
      }
    }
    stage.render();
    state.draws += 1;
    state.last = { t, frame: frameShown, wall: performance.now() / 1000 };
    if (document.activeElement !== $("scrub")) $("scrub").value = String(t);
    $("time").textContent = `${t.toFixed(2)} s / ${duration.toFixed(2)} s  frame ${frameShown}`;
    requestAnimationFrame(draw);
  }
  state.ready = true;
  requestAnimationFrame(draw);
  play(); // autoplay where the browser allows it; otherwise the button starts it
}

// A frame's offsets from the template: the sum of the morph targets times the frame's weights.
function pose(take, frame) {
  const offsets = take.offsets;
  const count = take.target_count;
  const size = offsets.length;
  offsets.fill(0);
  for (let k = 0; k < count; k++) {
    const w = take.weights[frame * count + k];
    if (w === 0) continue;
    const target = take.targets.subarray(k * size, (k + 1) * size);
    for (let i = 0; i < size; i++) offsets[i] += w * target[i];
  }
  return offsets;
}

function isPlaying() {
  return audio.src ? !audio.paused : clockStart !== null;
}

async function play() {
  if (audio.src) {
    try {
      await audio.play();
    } catch (error) {
      $("error").textContent = "press Play to start (the browser blocked autoplay)";
      return;
    }
  } else if (clockStart === null) {
    clockStart = performance.now() - pausedAt * 1000;
  }
  state.playing = true;
  $("error").textContent = "";
  $("play").textContent = "Pause";
}

function pause() {
  if (audio.src) audio.pause();
  else if (clockStart !== null) {
    pausedAt = clock();
    clockStart = null;
  }
  state.playing = false;
  $("play").textContent = "Play";
}

function seek(t) {
  if (audio.src) audio.currentTime = t;
  else if (clockStart === null) pausedAt = t;
  else clockStart = performance.now() - t * 1000;
}

function drawColourBar(max) {
  const canvas = $("bar-canvas");
  const context = canvas.getContext("2d");
  for (let y = 0; y < canvas.height; y++) {
    const [r, g, b] = heat(1 - y / (canvas.height - 1));
    context.fillStyle = `rgb(${r * 255},${g * 255},${b * 255})`;
    context.fillRect(0, y, canvas.width, 1);
  }
  $("bar-max").textContent = `${max.toPrecision(3)} mm`;
  $("colorbar").style.display = "block";
}

state.seek = seek;
state.play = play;
state.pause = pause;
state.clock = clock;
// Positions of vertices as drawn now (for tests and scripts): [[x, y, z], ...] of take `take`.
state.probe = (indices, take = 0) => {
  const array = state.takes[take].face.geometry.attributes.position.array;
  return indices.map((i) => [array[3 * i], array[3 * i + 1], array[3 * i + 2]]);
};

main().catch((error) => {
  state.errors.push(String(error));
  $("error").textContent = String(error);
  console.error(error);
});

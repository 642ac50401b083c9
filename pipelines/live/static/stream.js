// meshtalk stream: frames from the server as they come, drawn in order; the microphone to it.
import { Stage, fetchMesh, percentile } from "/static/face.js";

const HEADER = 40; // protocol.FRAME_HEADER
const MAX_BACKLOG = 3; // 100 ms at 30 fps: beyond it, latency would grow
const SOFTWARE_SCALE = 0.5; // pixel ratio without a GPU: live frames before sharp ones
const params = new URLSearchParams(location.search);
const watch = (params.get("watch") || "").split(",").filter(Boolean).map(Number);
const state = {
  ready: false, errors: [], received: 0, drawn: 0, skipped: 0, log: [], offset: null,
  micStarted: false, micChunks: 0, setup: null,
};
window.meshtalk = state;
window.addEventListener("error", (event) => state.errors.push(String(event.message)));
const $ = (id) => document.getElementById(id);

let stage = null;
let face = null;
const queue = [];
const serverMs = [];
const drawnMs = [];
const pings = [];
let socket = null;
let dirty = true;

function parseFrame(buffer) {
  const view = new DataView(buffer);
  const magic = String.fromCharCode(view.getUint8(0), view.getUint8(1), view.getUint8(2), view.getUint8(3));
  if (magic !== "MTFR") throw new Error("not a frame message");
  return {
    index: view.getUint32(4, true),
    kind: view.getUint32(8, true),
    count: view.getUint32(12, true),
    time: view.getFloat64(16, true),
    arrived: view.getFloat64(24, true),
    sent: view.getFloat64(32, true),
    values: new Float32Array(buffer, HEADER, view.getUint32(12, true)),
  };
}

function ping() {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "ping", t: performance.now() / 1000 }));
  }
}

function onPong(message) {
  const now = performance.now() / 1000;
  pings.push({ rtt: now - message.t, offset: message.server - (message.t + now) / 2 });
  if (pings.length > 20) pings.shift();
  const best = pings.reduce((a, b) => (b.rtt < a.rtt ? b : a));
  state.offset = best.offset; // server clock = page clock + offset
}

async function onSetup(setup) {
  state.setup = setup;
  const mesh = await fetchMesh(setup.mesh);
  stage = new Stage($("face"), { softwareScale: SOFTWARE_SCALE });
  face = stage.addFace(mesh);
  stage.controls.addEventListener("change", () => { dirty = true; });
  state.software = stage.software;
  state.pixelRatio = stage.pixelRatio;
  state.ready = true;
  const drawing = stage.software && stage.pixelRatio < 1 ? `, software renderer: drawn at ${stage.pixelRatio}x resolution (?scale=1 for full)` : "";
  $("status").textContent = `${setup.vertices} vertices, ${setup.fps.toFixed(1)} fps, look-ahead ${(1000 * setup.lookahead_s).toFixed(0)} ms${drawing}`;
  if (setup.input === "page") {
    $("mic").onclick = startMicrophone;
    if (params.get("mic") === "1") startMicrophone();
  } else {
    $("mic").disabled = true;
    $("mic").textContent = "server input";
  }
  requestAnimationFrame(draw);
}

function draw() {
  // Frames are drawn in order, one per display refresh (up to 60 a second, so a backlog after
  // a burst drains); beyond MAX_BACKLOG waiting frames the oldest are skipped.
  if (queue.length > MAX_BACKLOG) {
    const skip = queue.length - 2;
    queue.splice(0, skip);
    state.skipped += skip;
  }
  const frame = queue.shift();
  if (frame) {
    stage.setOffsets(face, frame.values);
    stage.render();
    const drawnAt = performance.now() / 1000;
    state.drawn += 1;
    const server = 1000 * (frame.sent - frame.arrived);
    let latency = NaN;
    if (state.offset !== null) {
      latency = 1000 * (drawnAt + state.offset - frame.arrived);
      drawnMs.push(latency);
      socket.send(JSON.stringify({ type: "drawn", frame: frame.index, latency_ms: latency }));
    }
    serverMs.push(server);
    const array = face.geometry.attributes.position.array;
    // [frame, its audio time, server latency (ms), latency to drawn (ms), received and drawn
    // (page clock, s), then the y of each watched vertex]
    const entry = [frame.index, frame.time, server, latency, frame.receivedAt, drawnAt];
    for (const v of watch) entry.push(array[3 * v + 1]);
    if (state.log.length < 200000) state.log.push(entry);
    if (serverMs.length > 2000) { serverMs.shift(); drawnMs.shift(); }
  } else if (stage && dirty) {
    stage.render(); // turned or zoomed by the user; otherwise nothing new to draw
  }
  dirty = false;
  // After a drawn frame only: between frames the count stays put, and the text would be set
  // (laid out, painted, composited) on every display refresh.
  if (frame && state.drawn % 15 === 1) showStats();
  requestAnimationFrame(draw);
}

function showStats() {
  const p = (values, q) => (values.length ? percentile(values, q).toFixed(0) : "-");
  $("stats").textContent =
    `frames received ${state.received}, drawn ${state.drawn}, skipped ${state.skipped}\n` +
    `latency from the audio to the frame sent: p50 ${p(serverMs, 50)} ms, p95 ${p(serverMs, 95)} ms\n` +
    `latency from the audio to the frame drawn: p50 ${p(drawnMs, 50)} ms, p95 ${p(drawnMs, 95)} ms`;
}

async function startMicrophone() {
  if (state.micStarted) return;
  state.micStarted = true;
  $("mic").disabled = true;
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const context = new AudioContext({ sampleRate: 16000 });
    await context.audioWorklet.addModule("/static/worklet.js");
    const source = context.createMediaStreamSource(media);
    const node = new AudioWorkletNode(context, "int16-chunker");
    node.port.onmessage = (event) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(event.data);
      state.micChunks += 1;
    };
    const mute = context.createGain();
    mute.gain.value = 0;
    source.connect(node);
    node.connect(mute);
    mute.connect(context.destination);
    await context.resume();
    state.micRate = context.sampleRate;
    $("mic").textContent = "listening";
  } catch (error) {
    state.errors.push(String(error));
    $("error").textContent = `microphone: ${error}`;
  }
}

function connect() {
  socket = new WebSocket(`ws://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "setup") onSetup(message).catch(fail);
      else if (message.type === "pong") onPong(message);
      return;
    }
    const frame = parseFrame(event.data);
    if (frame.kind !== 0) return; // ARKit weights (--rig): for other programs
    state.received += 1;
    frame.receivedAt = performance.now() / 1000;
    queue.push(frame);
  };
  socket.onopen = () => {
    for (let i = 0; i < 8; i++) setTimeout(ping, 100 * i);
    setInterval(ping, 2000);
  };
  socket.onclose = () => { $("status").textContent = "the server closed the stream"; };
}

function fail(error) {
  state.errors.push(String(error));
  $("error").textContent = String(error);
  console.error(error);
}

connect();

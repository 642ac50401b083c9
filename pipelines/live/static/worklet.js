// AudioWorklet: the microphone's samples (the context runs at 16 kHz) as Int16 chunks of 128
// (one render quantum, 8 ms: the coarser the chunk, the later a frame waiting for its last sample).
class Int16Chunker extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = new Int16Array(128);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const s = Math.max(-1, Math.min(1, channel[i]));
        this.chunk[this.filled++] = s < 0 ? s * 32768 : s * 32767;
        if (this.filled === this.chunk.length) {
          this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);
          this.chunk = new Int16Array(128);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("int16-chunker", Int16Chunker);

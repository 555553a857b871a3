// AudioWorklet: the microphone resampled to 16 kHz mono s16le, posted to the page in 100 ms packets.
// A windowed-sinc low-pass (Blackman window, cutoff 0.45 x the lower rate) evaluated at each output instant,
// so any capture rate works (48 kHz, 44.1 kHz, 8 kHz ...) without aliasing.
"use strict";

const TARGET_RATE = 16000;
const TAPS_EACH_SIDE = 16; // in samples of the lower rate
const PACKET = TARGET_RATE / 10;

class Pcm16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.fc = (0.45 * Math.min(sampleRate, TARGET_RATE)) / sampleRate; // cutoff, cycles per input sample
    this.half = Math.ceil(TAPS_EACH_SIDE * Math.max(1, this.step)); // filter half-width, input samples
    this.input = new Float32Array(this.half); // leading zeros: history for the first output sample
    this.pos = this.half; // where the next output sample falls in this.input
    this.out = new Int16Array(PACKET);
    this.n = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.push(new Float32Array(this.half + 1)); // zeros: the look-ahead the last samples need
        this.post();
        this.port.postMessage("flushed");
      }
    };
  }

  weight(d) {
    const r = d / this.half;
    if (r <= -1 || r >= 1) return 0;
    const x = 2 * this.fc * d;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    return sinc * (0.42 + 0.5 * Math.cos(Math.PI * r) + 0.08 * Math.cos(2 * Math.PI * r));
  }

  push(x) {
    const merged = new Float32Array(this.input.length + x.length);
    merged.set(this.input);
    merged.set(x, this.input.length);
    this.input = merged;
    while (this.pos + this.half < this.input.length) {
      const c = Math.floor(this.pos);
      let acc = 0;
      let norm = 0;
      for (let k = c - this.half + 1; k <= c + this.half; k++) {
        const w = this.weight(this.pos - k);
        acc += w * this.input[k];
        norm += w;
      }
      const y = Math.round((acc / norm) * 32768);
      this.out[this.n++] = Math.max(-32768, Math.min(32767, y));
      if (this.n === PACKET) this.post();
      this.pos += this.step;
    }
    const drop = Math.floor(this.pos) - this.half; // input no later output sample reaches back to
    if (drop > 0) {
      this.input = this.input.slice(drop);
      this.pos -= drop;
    }
  }

  post() {
    if (this.n === 0) return;
    const packet = this.out.slice(0, this.n).buffer;
    this.port.postMessage(packet, [packet]);
    this.n = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      let x = channels[0];
      if (channels.length > 1) {
        x = new Float32Array(x.length);
        for (const ch of channels) for (let i = 0; i < x.length; i++) x[i] += ch[i] / channels.length;
      }
      this.push(x);
    }
    return true;
  }
}

registerProcessor("pcm16k", Pcm16k);

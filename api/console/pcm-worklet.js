// AudioWorklet processor for live recognition: the microphone at the context's rate (44.1 or 48 kHz
// usually) to 8 kHz 16-bit mono PCM, little-endian, posted to the page in 100 ms pieces.
//
// Downsampling: a windowed-sinc low-pass (cut-off 3.6 kHz, 63 taps, Blackman window) at the input
// rate, then the filtered signal is read at 8 kHz with linear interpolation, so any input rate
// works and nothing above the new Nyquist frequency folds back. Channels are averaged.
// Messages from the page: "flush" posts what is buffered, then {flushed: true}.

const OUT_RATE = 8000;
const PIECE = 800; // samples of 100 ms at 8 kHz
const TAPS = 63;
const CUTOFF = 3600;

function lowPass(rate) {
  const taps = new Float32Array(TAPS);
  const fc = Math.min(CUTOFF, rate / 2) / rate;
  const mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const window = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (TAPS - 1));
    taps[i] = sinc * window;
    sum += taps[i];
  }
  for (let i = 0; i < TAPS; i++) taps[i] /= sum;
  return taps;
}

class PcmDownsampler extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.taps = sampleRate === OUT_RATE ? null : lowPass(sampleRate);
    this.history = new Float32Array(TAPS); // the last TAPS input samples, a ring
    this.head = 0;
    this.previous = 0; // the last filtered sample
    this.position = 0; // where the next output sample falls, in input samples from the current one
    this.out = new Int16Array(PIECE);
    this.filled = 0;
    this.level = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post();
        this.port.postMessage({ flushed: true });
      }
    };
  }

  filtered(sample) {
    if (!this.taps) return sample;
    this.history[this.head] = sample;
    this.head = (this.head + 1) % TAPS;
    let acc = 0;
    let j = this.head;
    for (let i = 0; i < TAPS; i++) {
      acc += this.taps[i] * this.history[j];
      j = j + 1 === TAPS ? 0 : j + 1;
    }
    return acc;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.out[this.filled++] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
    this.level = Math.max(this.level * 0.999, Math.abs(v));
    if (this.filled === PIECE) this.post();
  }

  post() {
    if (!this.filled) return;
    const piece = this.out.slice(0, this.filled);
    this.port.postMessage({ pcm: piece.buffer, level: this.level }, [piece.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || !input.length) return true;
    const channels = input.length;
    const frames = input[0].length;
    for (let n = 0; n < frames; n++) {
      let x = 0;
      for (let c = 0; c < channels; c++) x += input[c][n];
      const current = this.filtered(x / channels);
      // output samples that fall between the previous and the current filtered input sample
      while (this.position <= 1) {
        this.emit(this.previous + (current - this.previous) * this.position);
        this.position += this.step;
      }
      this.position -= 1;
      this.previous = current;
    }
    return true;
  }
}

registerProcessor("pcm-downsampler", PcmDownsampler);

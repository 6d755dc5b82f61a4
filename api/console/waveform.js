// A waveform on a <canvas>, drawn from the server's peaks (GET /v1/jobs/{id}/audio/peaks: min/max
// per column, computed once on the server, so the browser never decodes the whole recording) or,
// where those are missing, from an AudioBuffer (decodeAudioData of the recording): one lane per channel (agent above, client below for split stereo), a min/max bar per pixel
// column. The played part and the playhead are two positioned elements over the canvas, moved as
// the audio plays, so the canvas is drawn only when its size changes.

import { h } from "./ui.js";

const COLORS = ["#2f6f9f", "#8a5a2b", "#5b6b7b", "#5b6b7b"];

/** Decode the recording's bytes (any rate: decoded at 8 kHz, the API's playback rate). */
export async function decode(arrayBuffer) {
  const Offline = window.OfflineAudioContext || window.webkitOfflineAudioContext;
  const context = new Offline({ numberOfChannels: 1, length: 1, sampleRate: 8000 });
  return context.decodeAudioData(arrayBuffer);
}

function peaks(data, columns) {
  const out = new Float32Array(columns * 2);
  const per = data.length / columns;
  for (let c = 0; c < columns; c++) {
    const start = Math.floor(c * per);
    const end = Math.max(start + 1, Math.floor((c + 1) * per));
    let lo = 0;
    let hi = 0;
    for (let i = start; i < end && i < data.length; i++) {
      const v = data[i];
      if (v < lo) lo = v;
      else if (v > hi) hi = v;
    }
    out[2 * c] = lo;
    out[2 * c + 1] = hi;
  }
  return out;
}

/** Groups of `fine` (min, max) pairs reduced to `columns` pairs. */
function regroup(fine, columns) {
  const n = fine.length / 2;
  const out = new Float32Array(columns * 2);
  for (let c = 0; c < columns; c++) {
    const start = Math.floor((c * n) / columns);
    const end = Math.max(start + 1, Math.floor(((c + 1) * n) / columns));
    let lo = 0;
    let hi = 0;
    for (let i = start; i < end && i < n; i++) {
      if (fine[2 * i] < lo) lo = fine[2 * i];
      if (fine[2 * i + 1] > hi) hi = fine[2 * i + 1];
    }
    out[2 * c] = lo;
    out[2 * c + 1] = hi;
  }
  return out;
}

/** A waveform source from the server's peaks {channels, duration, peaks: [[min, max, ...], ...]}. */
export function fromPeaks(body) {
  const lanes = body.peaks.map((lane) => Float32Array.from(lane));
  return {
    numberOfChannels: lanes.length,
    duration: body.duration,
    loudest: Math.max(0, ...lanes.map((lane) => lane.reduce((m, v) => Math.max(m, Math.abs(v)), 0))),
    lane: (c, columns) => regroup(lanes[c], columns),
  };
}

/** A waveform source from a decoded AudioBuffer. */
export function fromBuffer(buffer) {
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c++) channels.push(buffer.getChannelData(c));
  let loudest = 0;
  for (const data of channels) {
    for (let i = 0; i < data.length; i++) {
      const v = Math.abs(data[i]);
      if (v > loudest) loudest = v;
    }
  }
  return { numberOfChannels: channels.length, duration: buffer.duration, loudest, lane: (c, columns) => peaks(channels[c], columns) };
}

/**
 * The waveform element for `source` (fromPeaks or fromBuffer); `labels` name the lanes.
 * onSeek(seconds) when clicked. Returns {element, update(seconds), destroy()}.
 */
export function waveform(source, labels, onSeek) {
  const buffer = source;
  const canvas = h("canvas", { class: "waveform-canvas", "aria-hidden": "true" });
  const played = h("div", { class: "waveform-played" });
  const head = h("div", { class: "waveform-head" });
  const laneLabels = h(
    "div",
    { class: "waveform-labels", "aria-hidden": "true" },
    labels.map((label) => h("div", { class: "waveform-lane" }, h("span", {}, label))),
  );
  const element = h(
    "div",
    {
      class: "waveform",
      role: "img",
      "aria-label": `Waveform of the recording, ${buffer.numberOfChannels} channel${buffer.numberOfChannels > 1 ? "s" : ""}, ${buffer.duration.toFixed(1)} seconds`,
    },
    canvas,
    played,
    head,
    laneLabels,
  );
  // Scaled to the loudest sample of all channels (their levels stay comparable): quiet telephone
  // audio still shows its shape.
  const peak = source.loudest;
  const gain = peak > 0 ? 1 / peak : 1;
  let drawnWidth = 0;

  function draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.floor(element.clientWidth * ratio));
    const height = Math.max(1, Math.floor(element.clientHeight * ratio));
    if (width === drawnWidth && canvas.height === height) return;
    drawnWidth = width;
    canvas.width = width;
    canvas.height = height;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, width, height);
    const lanes = source.numberOfChannels;
    const laneHeight = height / lanes;
    const columns = Math.max(1, Math.floor(width / ratio / 2)); // a bar every 2 CSS pixels
    const barWidth = Math.max(1, (width / columns) * 0.7);
    for (let lane = 0; lane < lanes; lane++) {
      const p = source.lane(lane, columns);
      const mid = laneHeight * lane + laneHeight / 2;
      const scale = laneHeight * 0.45 * gain;
      g.fillStyle = COLORS[lane % COLORS.length];
      for (let c = 0; c < columns; c++) {
        const top = mid - Math.max(p[2 * c + 1] * scale, 0.5 * ratio);
        const bottom = mid - Math.min(p[2 * c] * scale, -0.5 * ratio);
        g.fillRect((c * width) / columns, top, barWidth, Math.max(1, bottom - top));
      }
      if (lane > 0) {
        g.fillStyle = "#d5dbe1";
        g.fillRect(0, laneHeight * lane, width, Math.max(1, ratio));
      }
    }
  }

  const observer = new ResizeObserver(() => draw());
  observer.observe(element);
  element.addEventListener("click", (event) => {
    const box = element.getBoundingClientRect();
    const fraction = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
    onSeek(fraction * buffer.duration);
  });

  return {
    element,
    update(seconds) {
      const pct = buffer.duration ? Math.min(100, (seconds / buffer.duration) * 100) : 0;
      played.style.width = `${pct}%`;
      head.style.left = `${pct}%`;
    },
    destroy() {
      observer.disconnect();
    },
  };
}

// Live recognition from the microphone over the platform's WebSocket, /v1/stream:
// getUserMedia -> AudioContext -> AudioWorklet (pcm-worklet.js: 8 kHz 16-bit mono PCM, little-endian)
// -> binary frames. Browsers cannot set headers on a WebSocket, so the key goes in the first
// message, the config {"api_key", "sample_rate", "encoding", "channels"}. The server sends
// {"type": "partial"} for the open phrase, {"type": "phrase"} for each closed one and, after our
// {"type": "end", "store"} (store: keep the session as a job, as the checkbox says at Stop),
// {"type": "final", "phrases"[, "job_id"]}.

import { ApiProblem, getKey } from "../api.js";
import { clear, clock, errorBox, h, titled } from "../ui.js";
import { textOptions } from "./textopts.js";
import { t } from "../i18n.js";

const CLOSE_WAIT_MS = 30_000;

function streamUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/stream`;
}

function micProblem(error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError") return new ApiProblem(0, "microphone_denied", "");
  if (name === "NotFoundError" || name === "OverconstrainedError") return new ApiProblem(0, "microphone_missing", "");
  return new ApiProblem(0, "microphone_denied", error && error.message ? error.message : "");
}

export function render(root, _params, ctx) {
  const keep = h("input", { type: "checkbox", id: "live-keep" });
  const text = textOptions("live");
  const start = h("button", { type: "button", class: "primary", id: "live-start" }, "Start");
  const stop = h("button", { type: "button", class: "danger", id: "live-stop", disabled: true }, "Stop");
  const status = h("p", { class: "live-status", id: "live-status", role: "status" }, "Ready.");
  const level = h("meter", { id: "live-level", min: 0, max: 1, low: 0.05, high: 0.9, optimum: 0.3, value: 0, "aria-label": "Microphone level" });
  const elapsed = h("span", { class: "elapsed", "aria-hidden": "true" }, "0:00");
  const problems = h("div", { class: "live-problems" });
  const phraseList = h("ol", { class: "live-phrases", id: "live-phrases", "aria-live": "polite", "aria-label": "Recognized phrases" });
  const partial = h("p", { class: "partial", id: "live-partial", "aria-hidden": "true" });
  const outcome = h("div", { class: "live-outcome", "aria-live": "polite" });

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Live")),
    h(
      "section",
      { class: "card live-controls" },
      h("p", { class: "muted" }, "Speak into your microphone: phrases appear as they are recognized. The audio goes to this server only, at 8 kHz."),
      h("div", { class: "inline" }, start, stop, h("label", { class: "check", for: "live-keep" }, keep, " Keep the session as a job when I stop")),
      h("div", { class: "inline meter-row" }, h("span", { class: "muted" }, "Level"), level, elapsed),
      text.element,
      status,
      problems,
    ),
    h("section", { class: "card live-transcript", "aria-labelledby": "live-title" }, h("h2", { id: "live-title" }, "Transcript"), phraseList, partial, outcome),
  );
  titled(root, "Live");

  let session = null;

  function addPhrase(phrase) {
    phraseList.append(
      h("li", { class: "live-phrase" }, h("span", { class: "time" }, clock(phrase.start_time)), h("span", { class: "phrase-text", lang: "ru" }, phrase.display ?? phrase.text)),
    );
  }

  function fail(problem) {
    clear(problems);
    problems.append(errorBox(problem, { compact: true }));
    status.textContent = t("Stopped.");
  }

  function setRunning(running) {
    start.disabled = running;
    stop.disabled = !running;
  }

  async function begin() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
      fail(new ApiProblem(0, "unknown_browser_feature", "live recognition needs microphone access and AudioWorklet (a current browser, over https or on localhost)"));
      return;
    }
    clear(problems);
    clear(phraseList);
    clear(outcome);
    partial.textContent = t("");
    setRunning(true);
    status.textContent = t("Asking for the microphone…");
    const s = { ws: null, media: null, context: null, node: null, ended: false, finalSeen: false, errorSeen: false, started: 0, timer: 0, flushed: null };
    session = s;
    // the audio context is made and started now, within the click: browsers (Firefox) keep a context
    // made later, after the awaits below, suspended for want of a user gesture
    const Context = window.AudioContext || window.webkitAudioContext;
    s.context = new Context();
    s.context.resume().catch(() => {});
    try {
      s.media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (error) {
      teardown(s);
      fail(micProblem(error));
      return;
    }
    status.textContent = t("Connecting…");
    try {
      await connect(s);
      await startAudio(s);
    } catch (error) {
      teardown(s);
      if (!s.errorSeen) fail(error instanceof ApiProblem ? error : new ApiProblem(0, "connection_lost", ""));
      return;
    }
    if (session !== s || s.ended) return; // it failed or was stopped meanwhile: nothing to start
    s.started = performance.now();
    s.timer = setInterval(() => {
      elapsed.textContent = t(clock((performance.now() - s.started) / 1000, 0));
    }, 500);
    status.textContent = t("Listening… speak now.");
  }

  function connect(s) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(streamUrl());
      s.ws = ws;
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        ws.send(JSON.stringify({ api_key: getKey(), sample_rate: 8000, encoding: "pcm_s16le", channels: 1, ...text.config() }));
        resolve();
      };
      ws.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          return;
        }
        if (message.type === "partial") {
          partial.textContent = t(message.text ? `${message.text}…` : "");
        } else if (message.type === "phrase") {
          addPhrase(message);
          partial.textContent = t("");
        } else if (message.type === "final") {
          s.finalSeen = true;
          clear(phraseList);
          for (const phrase of message.phrases) addPhrase(phrase);
          partial.textContent = t("");
          const n = message.phrases.length;
          outcome.append(
            h("p", { class: "notice" }, `Session ended: ${n} phrase${n === 1 ? "" : "s"}.`, message.job_id ? " It was kept as a job: " : "", message.job_id ? h("a", { href: `#/jobs/${message.job_id}`, id: "live-job-link" }, "open the saved job") : null, message.job_id ? "." : ""),
          );
        } else if (message.type === "error") {
          s.errorSeen = true;
          fail(new ApiProblem(0, message.code, message.message));
        }
      };
      ws.onerror = () => {};
      ws.onclose = () => {
        if (!s.ws) return;
        reject(new ApiProblem(0, "connection_lost", ""));
        const unexpected = !s.finalSeen && !s.errorSeen && !s.ended;
        teardown(s);
        if (unexpected) fail(new ApiProblem(0, "connection_lost", ""));
        else if (s.finalSeen) status.textContent = t("Stopped.");
        if (s.onclosed) s.onclosed();
      };
    });
  }

  async function startAudio(s) {
    await s.context.audioWorklet.addModule("/console/pcm-worklet.js");
    const source = s.context.createMediaStreamSource(s.media);
    s.node = new AudioWorkletNode(s.context, "pcm-downsampler", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    s.node.port.onmessage = ({ data }) => {
      if (data.pcm && s.ws && s.ws.readyState === WebSocket.OPEN && !s.ended) s.ws.send(data.pcm);
      if (typeof data.level === "number") level.value = data.level;
      if (data.flushed && s.flushed) s.flushed();
    };
    source.connect(s.node);
    s.node.connect(s.context.destination); // pulls the graph; the processor writes silence
    if (s.context.state === "suspended") await s.context.resume();
  }

  /** Release the microphone and the audio graph; close the socket if still open. */
  function teardown(s) {
    clearInterval(s.timer);
    if (s.media) s.media.getTracks().forEach((t) => t.stop());
    if (s.context && s.context.state !== "closed") s.context.close().catch(() => {});
    const ws = s.ws;
    s.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
    level.value = 0;
    if (session === s) session = null;
    setRunning(false);
  }

  async function end() {
    const s = session;
    if (!s || s.ended) return;
    stop.disabled = true;
    status.textContent = t("Finishing…");
    // the last buffered audio first, then the end message; then wait for the final answer
    if (s.node) {
      await Promise.race([new Promise((resolve) => { s.flushed = resolve; s.node.port.postMessage("flush"); }), new Promise((r) => setTimeout(r, 1000))]);
    }
    s.ended = true;
    if (s.media) s.media.getTracks().forEach((t) => t.stop());
    if (!s.ws || s.ws.readyState !== WebSocket.OPEN) {
      teardown(s);
      return;
    }
    const closed = new Promise((resolve) => { s.onclosed = resolve; });
    s.ws.send(JSON.stringify({ type: "end", store: keep.checked })); // kept or not: decided at the end
    const timeout = new Promise((resolve) => setTimeout(() => resolve("timeout"), CLOSE_WAIT_MS));
    if ((await Promise.race([closed, timeout])) === "timeout") {
      teardown(s);
      fail(new ApiProblem(0, "connection_lost", "no final answer from the server"));
    }
  }

  start.addEventListener("click", () => {
    begin().catch((error) => fail(error));
  });
  stop.addEventListener("click", () => {
    end().catch((error) => fail(error));
  });

  return () => {
    if (session) teardown(session);
  };
}

// One job: its status (polled every second while it runs), then its transcript as a dialogue
// (agent left, client right for split stereo; one column for mono) beside the audio player and its
// waveform. Clicking a phrase or a word seeks; the phrase being played is highlighted; search
// within the transcript; download as TXT, SRT, VTT or JSON.
//
// Calls: GET /v1/jobs/{id}, GET /v1/jobs/{id}/transcript (json, txt, srt, vtt), GET
// /v1/jobs/{id}/audio (16-bit PCM WAV at 8 kHz, fetched with the key and played from a blob URL),
// POST /v1/jobs/{id}/cancel, DELETE /v1/jobs/{id}. The job's metadata and its conversation analytics
// (talk share bar, figures per side, flags; silences and overtalk marked on the waveform's lanes)
// come from GET /v1/jobs/{id}. #/jobs/<id>?t=<seconds> (a search hit) opens the call at that moment
// and plays from there.

import { describe, download, request } from "../api.js";
import { badge, channelsLabel, clear, clock, confirmDialog, errorBox, h, isOpen, jobName, metadataPairs, poller, progressBar, span, titled, when } from "../ui.js";
import { t } from "../i18n.js";
import { decode, fromBuffer, fromPeaks, waveform } from "../waveform.js";
import { analyticsCard, markWaveform, stretches } from "../analytics.js";

const SPEAKERS = ["Agent", "Client"];
const DOWNLOADS = [
  ["txt", "TXT"],
  ["srt", "SRT"],
  ["vtt", "VTT"],
  ["json", "JSON"],
];

/** Lower case, ё as е: what search compares. Keeps the length, so offsets stay valid. */
function fold(text) {
  return text.toLowerCase().replaceAll("ё", "е");
}

/** Text nodes for text[from, to) with <mark>s where `hits` (sorted [start, end) pairs) overlap. */
function marked(text, from, to, hits) {
  const nodes = [];
  let pos = from;
  for (const [a, b] of hits) {
    if (b <= pos || a >= to) continue;
    const s = Math.max(a, pos);
    const e = Math.min(b, to);
    if (s > pos) nodes.push(text.slice(pos, s));
    nodes.push(h("mark", {}, text.slice(s, e)));
    pos = e;
  }
  if (pos < to) nodes.push(text.slice(pos, to));
  return nodes;
}

function hitsOf(text, needle) {
  if (!needle) return [];
  const hay = fold(text);
  const out = [];
  let at = hay.indexOf(needle);
  while (at !== -1) {
    out.push([at, at + needle.length]);
    at = hay.indexOf(needle, at + needle.length);
  }
  return out;
}

/** The moment asked for in the address (#/jobs/<id>?t=12.3), or null. */
function startAt() {
  const hash = location.hash || "";
  const at = hash.indexOf("?");
  const t = Number(new URLSearchParams(at === -1 ? "" : hash.slice(at + 1)).get("t"));
  return at !== -1 && Number.isFinite(t) && t >= 0 ? t : null;
}

export function render(root, params, ctx) {
  const id = params.id;
  const from = startAt();
  const disposers = [];
  const heading = h("h1", {}, "Job");
  const headActions = h("div", { class: "head-actions" });
  const meta = h("dl", { class: "meta" });
  const statusArea = h("div", { class: "status-area", "aria-live": "polite" });
  const content = h("div", { class: "transcript-content" });
  root.append(
    h("p", { class: "back" }, h("a", { href: "#/jobs" }, "← All jobs")),
    h("div", { class: "page-head" }, heading, headActions),
    meta,
    statusArea,
    content,
  );
  titled(root, "Job");

  let job = null;
  let shownTranscript = false;

  function drawHead() {
    heading.textContent = t(jobName(job));
    document.title = `${t(jobName(job))} · tone-platform`;
    clear(meta);
    const rows = [
      ["Status", badge(job.status)],
      ["Duration", span(job.duration)],
      ["Channels", channelsLabel(job)],
      ["Created", when(job.created_at)],
      job.finished_at ? ["Finished", when(job.finished_at)] : null,
      job.processing_seconds ? ["Processing", span(job.processing_seconds)] : null,
      job.kind === "stream" ? ["Source", "Live session"] : job.audio_url ? ["Source", job.audio_url] : null,
    ].filter(Boolean);
    for (const [k, v] of rows) meta.append(h("div", {}, h("dt", {}, k), h("dd", {}, v)));
    const pairs = metadataPairs(job.metadata);
    if (pairs.length) {
      const list = h("dl", { class: "metadata", id: "job-metadata" });
      for (const [k, v] of pairs) list.append(h("div", { class: "metadata", dataset: { key: k } }, h("dt", {}, k), h("dd", { lang: "ru" }, v)));
      meta.append(h("div", { class: "meta-wide" }, h("dt", {}, "Metadata"), h("dd", {}, list)));
    }
    clear(headActions);
    if (isOpen(job.status)) {
      headActions.append(h("button", { type: "button", class: "secondary", onclick: cancel }, "Cancel job"));
    }
    headActions.append(h("button", { type: "button", class: "danger", id: "delete-job", onclick: remove }, "Delete"));
  }

  function drawStatus() {
    clear(statusArea);
    if (isOpen(job.status)) {
      statusArea.append(
        h(
          "div",
          { class: "card waiting" },
          h("p", {}, job.status === "queued" ? "Waiting for a worker…" : "Transcribing…"),
          progressBar(job.progress, "Transcription progress"),
        ),
      );
    } else if (job.status === "failed") {
      statusArea.append(errorBox({ code: job.error ? job.error.code : "error", serverMessage: job.error ? job.error.message : "" }));
    } else if (job.status === "cancelled") {
      statusArea.append(h("p", { class: "notice" }, "This job was cancelled; it has no transcript."));
    }
  }

  async function cancel() {
    try {
      job = await request(`/v1/jobs/${id}/cancel`, { method: "POST" });
      drawHead();
      drawStatus();
    } catch (error) {
      ctx.showBanner(error);
    }
  }

  async function remove() {
    if (!(await confirmDialog(`Delete “${jobName(job)}”? Its recording and transcript are removed for good.`))) return;
    try {
      await request(`/v1/jobs/${id}`, { method: "DELETE" });
      ctx.go("/jobs");
      ctx.showBanner(`Deleted “${jobName(job)}”.`, "info");
    } catch (error) {
      ctx.showBanner(error);
    }
  }

  const polls = poller(
    async () => {
      job = await request(`/v1/jobs/${id}`);
      drawHead();
      drawStatus();
      if (job.status === "completed" && !shownTranscript) {
        shownTranscript = true;
        await showTranscript(job);
      }
      return isOpen(job.status) ? undefined : false;
    },
    1000,
    (error) => {
      if (!job) {
        heading.textContent = t(error.code === "not_found" ? "Job not found" : "Job");
        clear(statusArea);
        statusArea.append(errorBox(error));
      } else {
        ctx.showBanner(error);
      }
    },
  );
  polls.now();
  disposers.push(() => polls.stop());

  async function showTranscript(job) {
    const doc = await request(`/v1/jobs/${id}/transcript?format=json`);
    const split = doc.channels === 2 || (job.options && job.options.channels === "split" && doc.phrases.some((p) => p.channel === 1));
    const phrases = [...doc.phrases].sort((a, b) => a.start_time - b.start_time || a.channel - b.channel);
    clear(content);

    // -- the player: audio element, waveform (filled in when the audio arrives) --
    const audio = h("audio", { controls: true, preload: "auto", id: "player", class: "player-audio" });
    const waveHolder = h("div", { class: "waveform-holder" }, h("div", { class: "waveform-loading" }, "Loading the recording…"));
    const player = h("section", { class: "card player", "aria-label": "Recording" }, audio, waveHolder);

    // -- toolbar: search, follow, downloads --
    const search = h("input", { type: "search", id: "transcript-search", placeholder: "Search the transcript", autocomplete: "off" });
    const count = h("span", { class: "search-count", id: "search-count", "aria-live": "polite" });
    const prevHit = h("button", { type: "button", class: "secondary small", "aria-label": "Previous match", disabled: true }, "↑");
    const nextHit = h("button", { type: "button", class: "secondary small", "aria-label": "Next match", disabled: true }, "↓");
    const follow = h("input", { type: "checkbox", id: "follow", checked: true });
    // the written form (numbers as digits, masks) by default; the toggle shows the words as spoken
    const spoken = h("input", { type: "checkbox", id: "spoken-words" });
    const spokenLabel = h("label", { class: "check", for: "spoken-words" }, spoken, " Spoken words");
    let raw = false;
    const shownText = (phrase) => (raw || phrase.display === undefined ? phrase.text : phrase.display);
    const shownWords = (phrase) => (raw || !phrase.display_words ? phrase.words : phrase.display_words) || [];
    const followLabel = h("label", { class: "check", for: "follow" }, follow, " Follow playback");
    const downloads = h(
      "div",
      { class: "downloads", role: "group", "aria-label": "Download the transcript" },
      h("span", { class: "muted" }, "Download"),
      DOWNLOADS.map(([fmt, label]) =>
        h(
          "button",
          {
            type: "button",
            class: "secondary small",
            dataset: { format: fmt },
            "aria-label": `Download as ${label}`,
            onclick: async () => {
              const stem = (job.filename || `job-${job.id}`).replace(/\.[^.]+$/, "") || `job-${job.id}`;
              try {
                await download(`/v1/jobs/${id}/transcript?format=${fmt}${raw ? "&text=raw" : ""}`, `${stem}.${fmt}`);
              } catch (error) {
                ctx.showBanner(error);
              }
            },
          },
          label,
        ),
      ),
    );
    const toolbar = h(
      "div",
      { class: "toolbar" },
      h("div", { class: "search" }, h("label", { for: "transcript-search", class: "sr-only" }, "Search the transcript"), search, prevHit, nextHit, count),
      followLabel,
      spokenLabel,
      downloads,
    );

    // -- the dialogue --
    const list = h("ol", { class: `dialogue ${split ? "split" : "mono"}`, id: "dialogue", "aria-label": "Transcript" });
    const items = phrases.map((phrase, index) => {
      const speaker = split ? SPEAKERS[phrase.channel] || `Channel ${phrase.channel + 1}` : null;
      const text = h("p", { class: "phrase-text", lang: "ru" });
      const time = h(
        "button",
        { type: "button", class: "time", dataset: { seek: String(phrase.start_time) }, "aria-label": `Play from ${clock(phrase.start_time)}${speaker ? `, ${speaker}` : ""}` },
        clock(phrase.start_time),
      );
      const li = h(
        "li",
        { class: `phrase ch${phrase.channel}`, dataset: { index: String(index), start: String(phrase.start_time), end: String(phrase.end_time), channel: String(phrase.channel) } },
        h(
          "div",
          { class: "bubble", dataset: { seek: String(phrase.start_time) } },
          h("div", { class: "phrase-meta" }, speaker ? h("span", { class: "speaker" }, speaker) : null, time, h("span", { class: "until" }, `– ${clock(phrase.end_time)}`)),
          text,
        ),
      );
      return { phrase, li, text, words: [] };
    });

    function drawText(item, needle) {
      const { phrase, text } = item;
      clear(text);
      item.words = [];
      const shown = shownText(phrase);
      const hits = hitsOf(shown, needle);
      const words = shownWords(phrase);
      if (words.length && words.map((w) => w.text).join(" ") === shown) {
        let offset = 0;
        words.forEach((word, i) => {
          if (i) text.append(...marked(shown, offset - 1, offset, hits));
          const el = h("span", { class: "word", dataset: { seek: String(word.start), start: String(word.start), end: String(word.end) } }, ...marked(shown, offset, offset + word.text.length, hits));
          item.words.push({ word, el });
          text.append(el);
          offset += word.text.length + 1;
        });
      } else {
        text.append(...marked(shown, 0, shown.length, hits));
      }
      item.li.classList.toggle("has-hit", hits.length > 0);
      return hits.length;
    }

    let hitIndex = -1;
    function runSearch() {
      const needle = fold(search.value.trim());
      let total = 0;
      for (const item of items) total += drawText(item, needle);
      list.classList.toggle("searching", Boolean(needle));
      hitIndex = -1;
      prevHit.disabled = nextHit.disabled = total === 0;
      count.textContent = t(needle ? (total ? `${total} match${total === 1 ? "" : "es"}` : "No matches") : "");
    }
    function goHit(step) {
      const marks = [...list.querySelectorAll("mark")];
      if (!marks.length) return;
      marks.forEach((m) => m.classList.remove("current"));
      hitIndex = (hitIndex + step + marks.length) % marks.length;
      const mark = marks[hitIndex];
      mark.classList.add("current");
      mark.scrollIntoView({ block: "center", behavior: "smooth" });
      count.textContent = t(`${hitIndex + 1} of ${marks.length}`);
    }
    search.addEventListener("input", runSearch);
    spoken.addEventListener("change", () => {
      raw = spoken.checked;
      runSearch();
    });
    search.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        goHit(e.shiftKey ? -1 : 1);
      }
    });
    prevHit.addEventListener("click", () => goHit(-1));
    nextHit.addEventListener("click", () => goHit(1));

    for (const item of items) {
      drawText(item, "");
      list.append(item.li);
    }

    const body = h("section", { class: "card transcript", "aria-label": "Transcript" }, toolbar);
    if (split) body.append(h("div", { class: "dialogue-head", "aria-hidden": "true" }, h("span", {}, "Agent"), h("span", {}, "Client")));
    if (!phrases.length) body.append(h("p", { class: "empty" }, "No speech was recognized in this recording."));
    else body.append(list);
    content.append(player);
    if (job.analytics) content.append(analyticsCard(job.analytics, job.flags || []));
    content.append(body);
    const marks = stretches(phrases, doc.duration, split);
    let target = null;
    if (from !== null) {
      target = items.find((it) => it.phrase.start_time <= from + 0.001 && from < it.phrase.end_time) || items.find((it) => it.phrase.start_time >= from);
      if (target) {
        target.li.classList.add("from-search");
        target.li.scrollIntoView({ block: "center" });
      }
    }

    // -- playback: seeking and highlighting --
    let hasAudio = false;
    function seek(seconds) {
      if (!hasAudio) return;
      audio.currentTime = seconds;
      const playing = audio.play();
      if (playing) playing.catch(() => {}); // autoplay refused: the seek stands
      highlight();
    }
    list.addEventListener("click", (event) => {
      const target = event.target.closest("[data-seek]");
      if (target && list.contains(target)) seek(Number(target.dataset.seek));
    });

    let active = [];
    let activeWord = null;
    function markActive(now) {
      const same = now.length === active.length && now.every((x, i) => x === active[i]);
      if (same) return;
      for (const item of active) {
        item.li.classList.remove("active");
        item.li.removeAttribute("aria-current");
      }
      for (const item of now) {
        item.li.classList.add("active");
        item.li.setAttribute("aria-current", "true");
      }
      if (!same && now.length && follow.checked && !audio.paused) now[0].li.scrollIntoView({ block: "nearest", behavior: "smooth" });
      active = now;
    }
    function highlight() {
      const t = audio.currentTime;
      const now = items.filter((it) => it.phrase.start_time <= t && t < it.phrase.end_time);
      markActive(now);
      let word = null;
      for (const item of now) {
        for (const w of item.words) if (w.word.start <= t && t < w.word.end) word = w.el;
      }
      if (word !== activeWord) {
        if (activeWord) activeWord.classList.remove("active-word");
        if (word) word.classList.add("active-word");
        activeWord = word;
      }
      if (wave) wave.update(t);
    }
    let frame = 0;
    const loop = () => {
      highlight();
      frame = audio.paused ? 0 : requestAnimationFrame(loop);
    };
    audio.addEventListener("play", () => {
      if (!frame) frame = requestAnimationFrame(loop);
    });
    audio.addEventListener("timeupdate", highlight);
    audio.addEventListener("seeked", highlight);
    disposers.push(() => {
      cancelAnimationFrame(frame);
      audio.pause();
    });

    // -- the recording itself --
    let wave = null;
    try {
      // a compressed copy the server made once (Ogg Opus, ~1/6 of a WAV), and its peaks for the
      // waveform, so the recording is neither re-decoded nor downloaded as WAV on every view
      const response = await request(`/v1/jobs/${id}/audio?format=opus`, { raw: true });
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      disposers.push(() => URL.revokeObjectURL(url));
      audio.src = url;
      hasAudio = true;
      list.classList.add("seekable");
      if (from !== null) {
        // a search hit: play from the phrase's start (or the moment asked for)
        const at = target ? target.phrase.start_time : from;
        audio.addEventListener("loadedmetadata", () => seek(at), { once: true });
      }
      clear(waveHolder);
      try {
        let source;
        try {
          source = fromPeaks(await request(`/v1/jobs/${id}/audio/peaks?columns=2000`));
        } catch {
          source = fromBuffer(await decode(await blob.arrayBuffer()));
        }
        const labels = source.numberOfChannels === 2 && split ? SPEAKERS : [];
        wave = waveform(source, labels, seek);
        disposers.push(() => wave.destroy());
        if (doc.duration > 0) markWaveform(wave.element, doc.duration, marks);
        waveHolder.append(wave.element);
      } catch {
        waveHolder.append(h("p", { class: "muted" }, "The waveform could not be drawn in this browser; the recording plays above."));
      }
    } catch (error) {
      player.remove();
      followLabel.remove();
      const note = error.code === "audio_not_available"
        ? h("p", { class: "notice" }, job.kind === "stream" ? "This live session kept only its transcript: there is no recording to play." : describe(error).title)
        : errorBox(error, { compact: true });
      content.prepend(note);
    }
  }

  return () => {
    for (const dispose of disposers.reverse()) {
      try {
        dispose();
      } catch (error) {
        console.error(error);
      }
    }
  };
}

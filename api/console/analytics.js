// Conversation analytics in the console: the measures of one call (the job's `analytics`, computed by
// the server when the transcript was stored), the silences and overtalk marked over the waveform,
// and a batch's aggregates (GET /v1/batches/{id}/analytics) with a table per agent.

import { clock, h, span } from "./ui.js";
import { num as decimal, t } from "./i18n.js";

const SIDES = [
  ["0", "Agent"],
  ["1", "Client"],
];

// the kinds of rules, as a flag names them
const FLAG_KINDS = {
  phrase_contains: "phrase contains",
  missing_in_first: "missing in first",
  silence_over: "silence over",
  overtalk_share_over: "overtalk share over",
};

function merge(intervals) {
  const sorted = intervals.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const out = [];
  for (const [a, b] of sorted) {
    if (out.length && a <= out[out.length - 1][1]) out[out.length - 1][1] = Math.max(out[out.length - 1][1], b);
    else out.push([a, b]);
  }
  return out;
}

function speech(phrases) {
  return merge(
    phrases.flatMap((p) => (p.words && p.words.length ? p.words.map((w) => [w.start, w.end]) : [[p.start_time, p.end_time]])),
  );
}

/** The stretches where no one speaks and where both sides speak, as the server defines them. */
export function stretches(phrases, duration, split) {
  const all = speech(phrases);
  const silences = [];
  let cursor = 0;
  for (const [a, b] of all) {
    if (a > cursor) silences.push([cursor, a]);
    cursor = Math.max(cursor, b);
  }
  if (duration > cursor) silences.push([cursor, duration]);
  const overtalk = [];
  if (split) {
    const a = speech(phrases.filter((p) => p.channel !== 1));
    const b = speech(phrases.filter((p) => p.channel === 1));
    let i = 0;
    let j = 0;
    while (i < a.length && j < b.length) {
      const s = Math.max(a[i][0], b[j][0]);
      const e = Math.min(a[i][1], b[j][1]);
      if (e > s) overtalk.push([s, e]);
      if (a[i][1] < b[j][1]) i++;
      else j++;
    }
  }
  return { silences, overtalk };
}

/** Marks over the waveform element: silences (longer than `minSilence`) and overtalk. */
export function markWaveform(element, duration, { silences, overtalk }, minSilence = 1.0) {
  const layer = h("div", { class: "waveform-marks", "aria-hidden": "true" });
  const add = (cls, [a, b], title) => {
    const mark = h("div", { class: `waveform-mark ${cls}`, title });
    mark.style.left = `${(100 * a) / duration}%`;
    mark.style.width = `${Math.max(0.2, (100 * (b - a)) / duration)}%`;
    layer.append(mark);
  };
  for (const s of silences) if (s[1] - s[0] >= minSilence) add("silence", s, `Silence ${clock(s[0])}–${clock(s[1])}`);
  for (const o of overtalk) add("overtalk", o, `Overtalk ${clock(o[0])}–${clock(o[1])}`);
  element.append(layer);
  return layer;
}

function pct(x) {
  return x === null || x === undefined ? "–" : `${Math.round(x * 100)} %`;
}

/** A count as is, a rate with one decimal in the language's locale ("17,5" in Russian), and its unit. */
function num(x, unit = "") {
  if (x === null || x === undefined) return "–";
  const value = Number.isInteger(x) ? String(x) : decimal(x, 1);
  return unit ? `${value} ${t(unit)}` : value;
}

function sec(x) {
  return x === null || x === undefined ? "–" : span(x);
}

/** The card of one call's measures: the talk share bar per side, then every figure. */
export function analyticsCard(a, flags = []) {
  const card = h("section", { class: "card analytics", id: "analytics", "aria-label": "Conversation analytics" }, h("h2", {}, "Conversation"));
  const stereo = a.channels === 2;
  if (stereo && a.talk_share && a.talk_share["0"] !== null) {
    const bar = h("div", { class: "share-bar", role: "img", "aria-label": `Talk share: agent ${pct(a.talk_share["0"])}, client ${pct(a.talk_share["1"])}` });
    for (const [c, label] of SIDES) {
      const part = h("div", { class: `share share-${c}`, dataset: { share: String(a.talk_share[c]) } }, `${t(label)} ${pct(a.talk_share[c])}`);
      part.style.flexGrow = String(Math.max(0.0001, a.talk_share[c]));
      bar.append(part);
    }
    card.append(bar);
  }
  const rows = [
    ["Speech", sec(a.speech_time)],
    ["Silence", sec(a.silence_time)],
    ["Longest silence", sec(a.longest_silence)],
  ];
  if (stereo) rows.push(["Overtalk", sec(a.overtalk_time)]);
  card.append(h("dl", { class: "meta analytics-overall" }, rows.map(([k, v]) => h("div", { dataset: { measure: k } }, h("dt", {}, k), h("dd", {}, v)))));
  if (stereo) {
    const measures = [
      ["Talk time", (c) => sec(a.talk_time[c])],
      ["Interruptions", (c) => num(a.interruptions[c])],
      ["Reply latency (median)", (c) => sec(a.reply_latency[c])],
      ["Speech rate", (c) => num(a.speech_rate[c], "words/min")],
      ["Longest monologue", (c) => sec(a.longest_monologue[c])],
    ];
    card.append(
      h(
        "table",
        { class: "table analytics-table" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Measure"), SIDES.map(([, label]) => h("th", { scope: "col" }, label)))),
        h("tbody", {}, measures.map(([name, f]) => h("tr", { dataset: { measure: name } }, h("th", { scope: "row" }, name), SIDES.map(([c]) => h("td", { class: "num" }, f(c)))))),
      ),
    );
  } else {
    card.append(h("p", { class: "muted" }, `Speech rate ${num(a.speech_rate ? a.speech_rate["0"] : null, "words/min")} · a mono recording has no per-side measures.`));
  }
  if (flags.length) {
    card.append(
      h("h3", {}, "Flags"),
      h("ul", { class: "flags", id: "flags" }, flags.map((f) => h("li", { class: "flag", dataset: { rule: f.rule_id } }, h("strong", {}, f.name), " (", FLAG_KINDS[f.kind] || f.kind.replaceAll("_", " "), ")"))),
    );
  }
  return card;
}

const BATCH_MEASURES = [
  ["talk_share_agent", "Agent talk share", pct],
  ["talk_time_agent", "Agent talk time", sec],
  ["talk_time_client", "Client talk time", sec],
  ["silence_time", "Silence", sec],
  ["longest_silence", "Longest silence", sec],
  ["overtalk_time", "Overtalk", sec],
  ["interruptions_agent", "Agent interruptions", num],
  ["interruptions_client", "Client interruptions", num],
  ["reply_latency_agent", "Agent reply latency", sec],
  ["speech_rate_agent", "Agent speech rate (words/min)", num],
];

// a total means something for times and counts, not for shares, rates or latencies
const SUMMABLE = /^(talk_time|silence_time|overtalk_time|interruptions|speech_time|words)/;

/** A batch's aggregates: per measure the mean, median, p90 and sum; a table per value of group_by. */
export function batchAnalyticsCard(body) {
  const card = h("section", { class: "card analytics", id: "batch-analytics", "aria-label": "Conversation analytics" }, h("h2", {}, "Conversation analytics"));
  if (!body.calls) {
    card.append(h("p", { class: "muted" }, "No call has been measured yet."));
    return card;
  }
  card.append(
    h("p", { class: "muted" }, `${body.calls} call${body.calls === 1 ? "" : "s"} measured.`),
    h(
      "table",
      { class: "table batch-measures" },
      h("thead", {}, h("tr", {}, ["Measure", "Mean", "Median", "p90", "Total"].map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        BATCH_MEASURES.filter(([k]) => body.measures[k] && body.measures[k].count).map(([k, label, f]) =>
          h("tr", { dataset: { measure: k } }, h("th", { scope: "row" }, label), h("td", { class: "num" }, f(body.measures[k].mean)), h("td", { class: "num" }, f(body.measures[k].p50)), h("td", { class: "num" }, f(body.measures[k].p90)), h("td", { class: "num" }, SUMMABLE.test(k) ? f(body.measures[k].sum) : "")),
        ),
      ),
    ),
  );
  if (body.group_by && body.groups.length) {
    const cols = [
      ["talk_share_agent", "Agent share", pct],
      ["overtalk_time", "Overtalk", sec],
      ["interruptions_agent", "Agent interruptions", num],
      ["longest_silence", "Longest silence", sec],
      ["speech_rate_agent", "Words/min", num],
    ];
    card.append(
      h("h3", {}, `Per ${body.group_by} (means)`),
      h(
        "table",
        { class: "table per-group", id: "per-group" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, body.group_by), h("th", { scope: "col" }, "Calls"), cols.map(([, label]) => h("th", { scope: "col" }, label)))),
        h(
          "tbody",
          {},
          body.groups.map((g) =>
            h("tr", { dataset: { group: g.value } }, h("th", { scope: "row" }, g.value || "(none)"), h("td", { class: "num" }, String(g.calls)), cols.map(([k, , f]) => h("td", { class: "num" }, f(g.measures[k] ? g.measures[k].mean : null)))),
          ),
        ),
      ),
    );
  }
  return card;
}

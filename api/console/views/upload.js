// Upload recordings (drag and drop or the file picker, several at once) or give a URL: POST /v1/jobs.
// Each one is listed with its upload progress, then its job's status and progress, polled every
// second (GET /v1/jobs/{id}) until it ends; a completed one links to its transcript.

import { ApiProblem, request, upload } from "../api.js";
import { textOptions } from "./textopts.js";
import { badge, bytes, clear, errorBox, h, isOpen, jobName, keepFocus, poller, progressBar, titled } from "../ui.js";

// The uploads of this tab, kept across visits (an upload goes on while another page is shown).
const items = [];
let nextId = 1;

export function render(root, _params, ctx) {
  const fileInput = h("input", {
    id: "upload-files",
    type: "file",
    multiple: true,
    accept: "audio/*,video/*,.wav,.flac,.mp3,.ogg,.opus,.m4a,.aac,.amr,.wma,.gsm,.webm,.mkv,.mp4",
    class: "sr-only-file",
  });
  const channels = h(
    "select",
    { id: "upload-channels" },
    h("option", { value: "split" }, "Split stereo: agent left, client right"),
    h("option", { value: "mix" }, "Mix to one channel"),
  );
  const decoder = h(
    "select",
    { id: "upload-decoder" },
    h("option", { value: "auto" }, "Automatic"),
    h("option", { value: "greedy" }, "Greedy (fastest)"),
    h("option", { value: "beam" }, "Beam search"),
  );
  const text = textOptions("upload");
  const drop = h(
    "div",
    { class: "dropzone", id: "dropzone" },
    h("p", { class: "dropzone-title" }, "Drop recordings here"),
    h("p", { class: "muted" }, "WAV, FLAC, MP3, Ogg/Opus, M4A, AMR, WMA… several at once."),
    fileInput,
    h("label", { for: "upload-files", class: "button primary file-button" }, "Choose files…"),
  );
  const urlInput = h("input", { id: "upload-url", type: "url", placeholder: "https://example.com/calls/1234.wav", required: true });
  const urlForm = h(
    "form",
    { class: "url-form", "aria-label": "Transcribe from a URL" },
    h("label", { for: "upload-url" }, "Or transcribe a recording from a URL"),
    h("div", { class: "inline" }, urlInput, h("button", { type: "submit", class: "secondary" }, "Transcribe URL")),
    h("p", { class: "hint" }, "The server downloads it; the URL must be reachable from the server."),
  );
  const list = h("ul", { class: "upload-list", id: "upload-list", "aria-live": "polite" });

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Upload")),
    h(
      "section",
      { class: "card" },
      h(
        "div",
        { class: "options" },
        h("div", { class: "field" }, h("label", { for: "upload-channels" }, "Channels"), channels),
        h("div", { class: "field" }, h("label", { for: "upload-decoder" }, "Decoder"), decoder),
      ),
      text.element,
      drop,
      urlForm,
    ),
    h("section", { "aria-labelledby": "uploads-title" }, h("h2", { id: "uploads-title" }, "This session's uploads"), list),
  );
  titled(root, "Upload");

  const draw = () => {
    const restore = keepFocus(list);
    clear(list);
    if (!items.length) list.append(h("li", { class: "empty" }, "Nothing uploaded yet in this session."));
    for (const item of items) list.append(itemView(item));
    restore();
  };

  function options() {
    return { channels: channels.value, decoder: decoder.value, ...text.values() };
  }

  function addFiles(files) {
    for (const file of files) {
      const item = { key: nextId++, name: file.name, size: file.size, phase: "uploading", sent: 0, job: null, error: null };
      items.unshift(item);
      const form = new FormData();
      form.append("file", file, file.name);
      for (const [k, v] of Object.entries(options())) form.append(k, v);
      const { promise } = upload("/v1/jobs", form, (fraction) => {
        item.sent = fraction;
        redraw();
      });
      promise
        .then((job) => {
          item.job = job;
          item.phase = "job";
          polls.now();
        })
        .catch((error) => {
          item.error = error;
          item.phase = "error";
        })
        .finally(redraw);
    }
    draw();
  }

  async function addUrl(url) {
    const item = { key: nextId++, name: url, size: null, phase: "uploading", sent: 1, job: null, error: null };
    items.unshift(item);
    draw();
    try {
      item.job = await request("/v1/jobs", { method: "POST", body: { audio_url: url, ...options() } });
      item.phase = "job";
      polls.now();
    } catch (error) {
      item.error = error;
      item.phase = "error";
    }
    redraw();
  }

  // Redraw at most once per animation frame (progress events come fast).
  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (list.isConnected) draw();
    });
  }

  fileInput.addEventListener("change", () => {
    addFiles([...fileInput.files]);
    fileInput.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.remove("dragging");
    });
  }
  drop.addEventListener("drop", (e) => {
    const files = [...(e.dataTransfer ? e.dataTransfer.files : [])];
    if (files.length) addFiles(files);
  });
  urlForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const url = urlInput.value.trim();
    if (!/^https?:\/\//i.test(url)) {
      ctx.showBanner(new ApiProblem(422, "invalid_request", "give an http:// or https:// address"));
      urlInput.focus();
      return;
    }
    urlInput.value = "";
    addUrl(url);
  });

  const polls = poller(
    async () => {
      // every open upload's job in ONE list request (?id=a&id=b…), not one request per job
      const open = items.filter((i) => i.job && isOpen(i.job.status));
      for (let start = 0; start < open.length; start += 100) {
        const some = open.slice(start, start + 100);
        const ids = some.map((i) => `id=${encodeURIComponent(i.job.id)}`).join("&");
        const page = await request(`/v1/jobs?limit=100&${ids}`);
        const byId = new Map(page.data.map((job) => [job.id, job]));
        for (const item of some) {
          const job = byId.get(item.job.id);
          if (job) item.job = job;
          else {
            item.error = new ApiProblem(404, "not_found", "the job is gone (deleted?)");
            item.phase = "error";
          }
        }
      }
      redraw();
      return items.some((i) => i.phase === "uploading" || (i.job && isOpen(i.job.status))) ? undefined : false;
    },
    1000,
    (error) => ctx.showBanner(error),
  );
  draw();
  polls.now();
  return () => polls.stop();
}

function itemView(item) {
  const li = h("li", { class: `upload-item phase-${item.phase}`, dataset: { key: String(item.key) } });
  const name = item.job ? jobName(item.job) : item.name;
  li.append(h("div", { class: "upload-name" }, name, item.size !== null ? h("span", { class: "sub" }, ` · ${bytes(item.size)}`) : null));
  if (item.phase === "uploading") {
    li.append(h("div", { class: "upload-state" }, h("span", { class: "badge badge-queued" }, "Uploading"), progressBar(item.sent, `Upload of ${name}`)));
  } else if (item.phase === "error") {
    li.append(errorBox(item.error, { compact: true }));
  } else if (item.job) {
    const job = item.job;
    const state = h("div", { class: "upload-state" }, badge(job.status));
    if (isOpen(job.status)) state.append(progressBar(job.progress, `Progress of ${name}`));
    if (job.status === "completed") state.append(h("a", { href: `#/jobs/${job.id}`, class: "button small primary", dataset: { focusKey: `job-${item.key}` } }, "Open transcript"));
    else state.append(h("a", { href: `#/jobs/${job.id}`, class: "link small", dataset: { focusKey: `job-${item.key}` } }, "Details"));
    li.append(state);
    if (job.status === "failed" && job.error) li.append(errorBox({ code: job.error.code, serverMessage: job.error.message }, { compact: true }));
  }
  return li;
}

// The public HTTP API, as the console calls it: the key from session storage in a header (never in a
// URL), every error turned into an ApiProblem with words a person understands (see describe()).

const KEY_STORE = "tone-platform.api-key";

export function getKey() {
  return sessionStorage.getItem(KEY_STORE);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_STORE);
}

export function authHeaders() {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An error of the API ({"error": {"code", "message"}}), of the network, or of the browser. */
export class ApiProblem extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.serverMessage = message || "";
    this.retryAfter = retryAfter;
  }
}

// Listeners told when the key is refused (the app signs out and shows the sign-in page).
const unauthorizedListeners = new Set();
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

async function problemOf(response) {
  let code = `http_${response.status}`;
  let message = response.statusText;
  try {
    const body = await response.json();
    if (body && body.error && body.error.code) {
      code = body.error.code;
      message = body.error.message;
    }
  } catch {
    // not our JSON shape (a proxy's page, say): keep the status
  }
  const retry = Number(response.headers.get("Retry-After")) || null;
  return new ApiProblem(response.status, code, message, retry);
}

function networkProblem(error) {
  if (error && error.name === "AbortError") return error;
  return new ApiProblem(0, "network", "the server could not be reached");
}

/**
 * Call the API. Answers the parsed JSON (or null for 204); with `raw: true` the Response itself.
 * Throws ApiProblem. A 401 also tells the unauthorized listeners unless `quiet401` is set.
 */
export async function request(path, { method = "GET", body, headers = {}, raw = false, signal, quiet401 = false } = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers }, signal, cache: "no-store" };
  if (body !== undefined) {
    if (body instanceof FormData || body instanceof Blob) {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw networkProblem(error);
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (problem.status === 401 && !quiet401) unauthorizedListeners.forEach((l) => l(problem));
    throw problem;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** Query string of the defined, non-empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * POST a form with upload progress (fetch cannot report it): onProgress(fraction) while sending.
 * Resolves with the JSON answer; rejects with ApiProblem. Returns {promise, abort}.
 */
export function upload(path, form, onProgress) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = "text";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
        return;
      }
      const error = body && body.error ? body.error : { code: `http_${xhr.status}`, message: xhr.statusText };
      const problem = new ApiProblem(xhr.status, error.code, error.message);
      if (xhr.status === 401) unauthorizedListeners.forEach((l) => l(problem));
      reject(problem);
    };
    // The server may refuse a too-large body before reading it and close the connection: the
    // browser then sees no answer at all.
    xhr.onerror = () => reject(new ApiProblem(0, "upload_interrupted", "the upload was interrupted"));
    xhr.onabort = () => reject(new ApiProblem(0, "aborted", "the upload was cancelled"));
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}

/** Fetch with the key, then save through a blob URL and <a download> (the key never goes in a URL). */
export async function download(path, filename) {
  const response = await request(path, { raw: true });
  const blob = await response.blob();
  saveBlob(blob, filename);
}

export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function megabytes(bytes) {
  const mb = bytes / 1_000_000;
  return mb >= 10 ? `${Math.round(mb)} MB` : `${mb.toFixed(1)} MB`;
}

const FORMATS_HINT = "WAV (PCM, µ-law, A-law, GSM), FLAC, MP3, Ogg Vorbis or Opus, M4A/AAC, AMR or WMA";

/**
 * Words for a problem: {title, detail}. `detail` is the server's own message where it helps; the
 * code is kept for support. Never a stack trace.
 */
export function describe(problem) {
  const code = problem && problem.code ? problem.code : "error";
  const message = problem && problem.serverMessage !== undefined ? problem.serverMessage : String(problem && problem.message || "");
  const limit = /limit of (\d+) bytes/.exec(message);
  const table = {
    key_missing: "Enter your API key.",
    unauthorized: "This API key was not accepted. Check that it is complete and not revoked, then sign in again.",
    forbidden: "This API key may not do that.",
    file_too_large: limit
      ? `The file is too large: this server accepts uploads up to ${megabytes(Number(limit[1]))}.`
      : "The file is too large for this server.",
    upload_interrupted:
      "The upload was interrupted before the server answered. The file may be larger than the server accepts, or the connection dropped.",
    aborted: "The upload was cancelled.",
    body_too_large: "The request is too large for this server.",
    audio_too_long: "The recording is too long for this server.",
    unsupported_format: `Unsupported format: this file is not audio the platform can read. Try ${FORMATS_HINT}.`,
    unsupported_media_type: "The server did not accept the request's format.",
    corrupt_audio: "The file looks like audio but is damaged or truncated, so it cannot be transcribed.",
    empty_audio: "The file holds no audio.",
    download_failed: "The recording could not be downloaded from that URL.",
    url_not_allowed: "That URL points to a private or local address, which the server does not fetch.",
    rate_limited: "Too many requests with this key just now. Wait a moment; the console will try again.",
    not_found: "Not found. It may have been deleted, or it belongs to another account.",
    audio_not_available: "The recording of this job is not stored, so it cannot be played (a live session keeps only its transcript).",
    not_ready: "The transcript is not ready yet.",
    already_final: "The job has already ended.",
    invalid_request: "The request was not accepted.",
    invalid_cursor: "That page no longer exists; start from the first page.",
    invalid_json: "The request was not valid JSON.",
    idempotency_conflict: "A request with the same Idempotency-Key but a different body was already made.",
    internal_error: "Something went wrong on the server. Try again; if it keeps happening, tell your administrator.",
    unavailable: "The service is not available right now. Try again in a moment.",
    network: "The server could not be reached. Check your connection and that the platform is running.",
    worker_lost: "The transcription was interrupted several times (its worker stopped) and was given up.",
    model_not_found: "The server has no speech model installed, so it cannot transcribe. Tell your administrator.",
    model_error: "The speech model failed on this recording. Tell your administrator.",
    cancelled: "The job was cancelled.",
    timeout: "The transcription took too long and was stopped.",
    too_many_entries: "The archive holds more files than this server accepts in one batch.",
    archive_too_large: "The archive, or a file inside it, is larger than this server accepts.",
    archive_bomb: "The archive unpacks to far more than its size; it was refused as unsafe.",
    unsafe_path: "The archive contains a file path that points outside the archive; it was refused as unsafe.",
    unsupported_archive: "That is not a ZIP or tar archive.",
    method_not_allowed: "This server does not offer that call (it may be an older version).",
    unknown_browser_feature: "This browser lacks a feature the console needs.",
    microphone_denied: "The browser did not allow access to the microphone. Allow it in the site settings and try again.",
    microphone_missing: "No microphone was found.",
    idle_timeout: "The live session was closed because no audio arrived for a while.",
    session_expired: "The live session expired.",
    invalid_config: "The live session's settings were not accepted.",
    invalid_message: "The server did not understand a message of the live session.",
    connection_lost: "The connection to the server was lost during the live session.",
    empty_query: "Type a word to search for (words like «и», «на» alone are not searched).",
    query_needs_a_word: "Add a word to find: a search of only -excluded words finds nothing.",
    query_too_long: "The search is too long.",
  };
  let title = table[code];
  if (!title) {
    if (problem && problem.status >= 500) title = table.internal_error;
    else title = "The request failed.";
  }
  // The server's message explains details (which field, which limit) in plain words; keep it when
  // it adds something and holds nothing that looks like a trace.
  let detail = message && !/Traceback|\n\s+at /.test(message) && !title.includes(message) ? message.trim() : "";
  if (detail) {
    detail = detail[0].toUpperCase() + detail.slice(1);
    if (!/[.!?…]$/.test(detail)) detail += ".";
  }
  return { title, detail, code };
}

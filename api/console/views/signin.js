// Sign in with an API key: checked with GET /v1/jobs?limit=1, then kept in this tab's session
// storage (gone when the tab closes) and sent as a header with every call.

import { ApiProblem, clearKey, request, setKey } from "../api.js";
import { clear, errorBox, h, titled } from "../ui.js";
import { t } from "../i18n.js";

export function render(root, params, ctx) {
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "tone_…",
    "aria-describedby": "api-key-help",
  });
  const status = h("div", { class: "form-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", novalidate: true },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Transcribe recordings, watch jobs and batches, and try live recognition."),
    params.note ? h("p", { class: "notice" }, params.note) : null,
    h("label", { for: "api-key" }, "API key"),
    input,
    h(
      "p",
      { id: "api-key-help", class: "hint" },
      "Your administrator creates keys with ",
      h("code", {}, "tone-platform keys create --tenant NAME"),
      ". The key stays in this browser tab only and is sent as a header, never in a link.",
    ),
    status,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    clear(status);
    if (!key) {
      status.append(errorBox(new ApiProblem(0, "key_missing", ""), { compact: true }));
      input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = t("Checking…");
    setKey(key);
    try {
      await request("/v1/jobs?limit=1", { quiet401: true });
    } catch (error) {
      clearKey();
      status.append(errorBox(error, { compact: true }));
      input.setAttribute("aria-invalid", "true");
      input.focus();
      input.select();
      return;
    } finally {
      submit.disabled = false;
      submit.textContent = t("Sign in");
    }
    ctx.route();
  });
  root.append(h("div", { class: "signin-wrap" }, form));
  titled(root, "Sign in");
  input.focus();
  return null;
}

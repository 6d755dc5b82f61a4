// The written-form options of a job, batch or live session (README: Readable Russian): numbers as
// digits (normalize), hot words (vocabulary), and what to mask (redact). Used by the upload, batch
// and live pages; values() gives form fields, config() the JSON of a live session's config.

import { h } from "../ui.js";

export const REDACT_KINDS = [
  ["card", "cards"],
  ["phone", "phones"],
  ["passport", "passports"],
  ["inn", "INN"],
  ["snils", "SNILS"],
  ["email", "e-mail"],
  ["profanity", "profanity"],
];

export function textOptions(prefix) {
  const normalize = h("input", { type: "checkbox", id: `${prefix}-normalize`, checked: true });
  const vocabulary = h("input", { type: "text", id: `${prefix}-vocabulary`, placeholder: "Тинькофф, ипотека", autocomplete: "off" });
  const redact = REDACT_KINDS.map(([kind, label]) => {
    const box = h("input", { type: "checkbox", id: `${prefix}-redact-${kind}`, value: kind });
    return { kind, box, label: h("label", { class: "check", for: box.id }, box, " ", label) };
  });
  const element = h(
    "div",
    { class: "options text-options" },
    h("div", { class: "field" }, h("label", { class: "check", for: normalize.id }, normalize, " Numbers as digits")),
    h("div", { class: "field" }, h("label", { for: vocabulary.id }, "Vocabulary (comma-separated)"), vocabulary),
    h("fieldset", { class: "field redact" }, h("legend", {}, "Mask"), redact.map((r) => r.label)),
  );
  const words = () =>
    vocabulary.value
      .split(",")
      .map((w) => w.trim())
      .filter(Boolean);
  const kinds = () => redact.filter((r) => r.box.checked).map((r) => r.kind);
  return {
    element,
    values() {
      const out = { normalize: normalize.checked ? "true" : "false" };
      if (words().length) out.vocabulary = words().join(",");
      if (kinds().length) out.redact = kinds().join(",");
      return out;
    },
    config() {
      const out = { normalize: normalize.checked };
      if (words().length) out.vocabulary = words();
      if (kinds().length) out.redact = kinds();
      return out;
    },
  };
}

// The console's shell: sign-in gate, hash router (#/jobs, #/jobs/<id>, #/upload, #/live, #/batches,
// #/batches/<id>), the global error banner. Each view is a module exporting render(root, params,
// ctx) that returns a cleanup function (stop polls, release the microphone, revoke blob URLs).

import { clearKey, describe, getKey, onUnauthorized, request } from "./api.js";
import { clear, h } from "./ui.js";
import { lang, setLang, t } from "./i18n.js";
import * as signin from "./views/signin.js";
import * as jobs from "./views/jobs.js";
import * as transcript from "./views/transcript.js";
import * as uploadView from "./views/upload.js";
import * as live from "./views/live.js";
import * as batches from "./views/batches.js";
import * as searchView from "./views/search.js";

const ROUTES = [
  [/^\/jobs$/, jobs, "jobs"],
  [/^\/jobs\/([0-9a-fA-F-]{8,})$/, transcript, "jobs"],
  [/^\/upload$/, uploadView, "upload"],
  [/^\/live$/, live, "live"],
  [/^\/batches$/, batches, "batches", "list"],
  [/^\/batches\/([0-9a-fA-F-]{8,})$/, batches, "batches", "detail"],
  [/^\/search$/, searchView, "search"],
];

// the page's fixed texts in the chosen language, and the switch to the other one
document.documentElement.lang = lang();
for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.textContent);
for (const el of document.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.getAttribute("aria-label")));
const langButton = document.getElementById("lang");
langButton.textContent = lang() === "ru" ? "English" : "Русский";
langButton.lang = lang() === "ru" ? "en" : "ru";
langButton.addEventListener("click", () => {
  setLang(lang() === "ru" ? "en" : "ru");
  location.reload();
});

const main = document.getElementById("main");
const banner = document.getElementById("banner");
const nav = document.getElementById("nav");
const signOut = document.getElementById("signout");
let cleanup = null;
let signInNote = null;
// true when the server takes calls without a key (TONE_AUTH_DISABLED=1): no sign-in then
let authOff = false;

/** The global banner: a sentence for people, dismissible; never a stack trace. */
export function showBanner(problem, kind = "error") {
  const { title, detail } = typeof problem === "string" ? { title: problem, detail: "" } : describe(problem);
  clear(banner);
  banner.className = `banner banner-${kind}`;
  banner.append(
    h("p", {}, h("strong", {}, title), detail ? ` ${detail}` : ""),
    h("button", { type: "button", class: "banner-close", "aria-label": "Dismiss", onclick: hideBanner }, "×"),
  );
  banner.hidden = false;
}

export function hideBanner() {
  banner.hidden = true;
  clear(banner);
}

function currentPath() {
  const hash = location.hash || "";
  return hash.startsWith("#/") ? hash.slice(1).split("?")[0] : "/jobs";
}

function route() {
  if (!location.hash.startsWith("#/") && location.hash) return; // in-page anchors (skip link)
  if (cleanup) {
    try {
      cleanup();
    } catch (error) {
      console.error(error);
    }
    cleanup = null;
  }
  hideBanner();
  clear(main);
  const signedIn = getKey() !== null || authOff;
  nav.hidden = !signedIn;
  signOut.hidden = !signedIn || authOff;
  const authNote = document.getElementById("auth-off");
  if (authNote) authNote.hidden = !authOff;
  if (!signedIn) {
    cleanup = signin.render(main, { note: signInNote }, ctx);
    signInNote = null;
    return;
  }
  const path = currentPath();
  for (const [pattern, view, section, mode] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const link of nav.querySelectorAll("a")) {
      if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    try {
      cleanup = view.render(main, { id: match[1], mode }, ctx) || null;
    } catch (error) {
      console.error(error);
      showBanner("This page could not be shown. Reload the page; if it keeps happening, tell your administrator.");
    }
    return;
  }
  main.append(
    h("h1", {}, "Page not found"),
    h("p", {}, "There is no such page in the console. ", h("a", { href: "#/jobs" }, "Go to the jobs.")),
  );
}

function go(path) {
  if (location.hash === `#${path}`) route();
  else location.hash = path;
}

const ctx = { go, showBanner, hideBanner, route };

onUnauthorized(() => {
  clearKey();
  signInNote = "This API key was not accepted (it may have been revoked). Sign in again.";
  route();
});

signOut.addEventListener("click", () => {
  clearKey();
  go("/jobs");
});

window.addEventListener("hashchange", route);
// Anything unexpected becomes a sentence in the banner, never a blank page.
window.addEventListener("error", (event) => {
  console.error(event.error || event.message);
  showBanner("Something went wrong in the console. Reload the page; your jobs are safe on the server.");
});
window.addEventListener("unhandledrejection", (event) => {
  console.error(event.reason);
  const reason = event.reason;
  if (reason && reason.code) showBanner(reason);
  else showBanner("Something went wrong in the console. Reload the page; your jobs are safe on the server.");
});

/** Does the server answer without a key? Then it runs with TONE_AUTH_DISABLED: skip the sign-in. */
async function probeAuth() {
  if (getKey() !== null) return;
  try {
    await request("/v1/jobs?limit=1", { quiet401: true });
    authOff = true;
  } catch {
    authOff = false;
  }
}

probeAuth().finally(route);

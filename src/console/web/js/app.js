// The console page: who is signed in, the navigation, and one view at a time (chosen by the
// URL's #fragment, so the browser's back button and bookmarks work).
import { api, setCsrf } from "./api.js";
import { flash } from "./dom.js";
import * as dashboard from "./dashboard.js";
import * as outbox from "./outbox.js";
import * as playground from "./playground.js";
import * as history from "./history.js";
import * as timeline from "./timeline.js";
import * as audit from "./audit.js";

const views = { dashboard, outbox, timeline, playground, history, audit };
const main = document.getElementById("main");
let session = null;
let stop = null;

async function route() {
  if (stop) stop();
  stop = null;
  // `#view/arg/arg`: the view, then what it shows (e.g. `#timeline/acme/A100001`).
  const [name, ...args] = (window.location.hash || "#dashboard").slice(1).split("/").map(decodeURIComponent);
  const view = views[name] ? name : "dashboard";
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.id === `nav-${view}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.getElementById("flash").hidden = true;
  try {
    stop = (await views[view].render(main, session, args)) || null;
  } catch (e) {
    flash(e.message, true);
  }
}

async function start() {
  session = await api("GET", "session");
  setCsrf(session.csrf);
  document.getElementById("who").textContent = `${session.user} (${session.roles.join(", ")})`;
  for (const a of document.querySelectorAll("[data-role]")) {
    a.hidden = !session.roles.includes(a.dataset.role);
  }
  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await api("POST", "logout", {});
    } finally {
      window.location.assign("/console/login");
    }
  });
  window.addEventListener("hashchange", route);
  await route();
}

start().catch((e) => flash(e.message, true));

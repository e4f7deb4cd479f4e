// The operations dashboard: the outbox, the order feed, QUBS and the mappings at a glance,
// with the last hour's charts. Refreshed every few seconds while shown.
import { api } from "./api.js";
import { ago, el, flash, show, table } from "./dom.js";
import { chart } from "./charts.js";

const REFRESH_MS = 5000;

function card(label, value, cls) {
  return el("div", { class: "card" }, el("div", { class: `n ${cls || ""}` }, value), el("div", { class: "label" }, label));
}

function destinations(feed, session) {
  const operator = session.roles.includes("operator");
  return table(
    ["Destination", "Target", "Queued", "Delivered", "Dead", "Oldest queued", "Last ACK", "Last error", ""],
    feed.destinations,
    (d) => [
      d.name,
      `${d.kind} ${d.target}`,
      String(d.pending),
      String(d.delivered),
      el("span", { class: d.dead ? "bad" : "" }, String(d.dead)),
      d.oldestPendingSecs === null ? "—" : `${d.oldestPendingSecs} s`,
      d.lastAckCode ? `${d.lastAckCode} ${ago(d.lastAckAt)}` : "—",
      d.lastError ? `${d.lastError} (${ago(d.lastErrorAt)})` : "—",
      operator && d.dead
        ? el("button", {
            type: "button",
            "data-destination": d.name,
            onclick: async () => {
              try {
                const r = await api("POST", `feed/${encodeURIComponent(d.name)}/retry`, {});
                flash(`${r.requeued} dead letter(s) of ${d.name} queued again.`);
              } catch (e) {
                flash(e.message, true);
              }
            },
          }, "Retry dead letters")
        : "",
    ],
    "No feed destinations.",
  );
}

async function draw(main, session) {
  const [o, live] = await Promise.all([api("GET", "overview"), api("GET", "live")]);
  const domains = Object.entries(o.qubs.domains);
  show(
    main,
    el("h1", {}, "Dashboard"),
    el(
      "div",
      { class: "cards" },
      card("results waiting for QUBS", String(o.outbox.pending)),
      card("dead letters (results)", String(o.outbox.dead), o.outbox.dead ? "bad" : "ok"),
      card("oldest waiting result", `${o.outbox.oldestPendingSecs} s`),
      card("QUBS", o.qubs.ready ? "ready" : "not ready", o.qubs.ready ? "ok" : "bad"),
      card(`mapping set${o.mappings.reloadError ? " (newest files fail)" : ""}`, o.mappings.version, o.mappings.reloadError ? "warn small" : "small"),
    ),
    el("h2", {}, "Last hour"),
    el(
      "div",
      { class: "charts" },
      chart("results in", live.points, "resultsIn", "/s"),
      chart("results to QUBS", live.points, "resultsOut", "/s"),
      chart("feed ORM out", live.points, "feedOut", "/s"),
      chart("outbox depth", live.points, "outboxDepth", ""),
      chart("feed queue depth", live.points, "feedDepth", ""),
    ),
    el("h2", {}, "QUBS domains"),
    table(
      ["Domain", "State", "Checked", "Pending orders", "Time zones", "Problem"],
      domains,
      ([name, h]) => [
        name,
        el("span", { class: h.ready ? "ok" : "bad" }, h.ready ? "ready" : "not ready"),
        ago(h.checked_at),
        h.pending === null ? "—" : String(h.pending),
        h.time_zones,
        [h.error || "", ...(h.warnings || [])].filter(Boolean).join("; ") || "—",
      ],
      "Not checked yet.",
    ),
    el("h2", {}, "Order feed"),
    o.feed.enabled
      ? [
          destinations(o.feed, session),
          el("h2", {}, "Watched domains"),
          table(
            ["Domain", "Polls", "Last poll", "Tracked orders", "Last error"],
            o.feed.watches,
            (w) => [w.domain, String(w.polls), ago(w.lastPollAt), String(w.trackedOrders), w.lastError || "—"],
          ),
        ]
      : el("p", { class: "help" }, "The order feed is off (feed.enabled = false)."),
  );
}

export async function render(main, session) {
  await draw(main, session);
  const timer = setInterval(() => draw(main, session).catch((e) => flash(e.message, true)), REFRESH_MS);
  return () => clearInterval(timer);
}

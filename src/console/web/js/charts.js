// Small line charts (SVG) of the last hour's points from /console/api/live.
import { el } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/** One chart of `key` over `points`, titled with the latest value. */
export function chart(title, points, key, unit) {
  const values = points.map((p) => p[key]);
  const max = Math.max(1e-9, ...values);
  const w = 300;
  const h = 70;
  const picture = svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": title });
  picture.append(svg("line", { class: "axis", x1: 0, y1: h - 1, x2: w, y2: h - 1 }));
  if (values.length > 1) {
    const step = w / (values.length - 1);
    const coords = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 6)).toFixed(1)}`);
    picture.append(svg("polyline", { points: coords.join(" ") }));
  }
  const last = values.length ? values[values.length - 1] : 0;
  const shown = Number.isInteger(last) ? last : last.toFixed(2);
  return el(
    "div",
    { class: "card chart" },
    el("div", { class: "label" }, `${title} — now ${shown} ${unit}, peak ${+max.toFixed(2)}`),
    picture,
  );
}

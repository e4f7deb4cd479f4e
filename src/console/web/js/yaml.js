// YAML highlighting for the playground's editor: a <pre> under a transparent <textarea>,
// painted with spans (text nodes only, never markup) for comments, keys, strings, list
// dashes and anchors/aliases. Line by line, like the mapping files are written.
import { el } from "./dom.js";

const KEY = /^(\s*)(- )?([^\s#'"][^:#]*?|"[^"]*"|'[^']*')(:)(\s|$)/;
const TOKEN = /("(?:[^"\\]|\\.)*"|'[^']*')|(\s#.*$)|([&*][\w-]+)|(\{|\}|\[|\])/g;

function line(text) {
  const parts = [];
  let rest = text;
  if (/^\s*#/.test(rest)) return [el("span", { class: "y-comment" }, rest)];
  const key = KEY.exec(rest);
  if (key) {
    parts.push(key[1]);
    if (key[2]) parts.push(el("span", { class: "y-dash" }, key[2]));
    parts.push(el("span", { class: "y-key" }, key[3]), key[4]);
    rest = rest.slice(key[0].length - key[5].length);
  } else {
    const dash = /^(\s*)(- )/.exec(rest);
    if (dash) {
      parts.push(dash[1], el("span", { class: "y-dash" }, dash[2]));
      rest = rest.slice(dash[0].length);
    }
  }
  let at = 0;
  for (const m of rest.matchAll(TOKEN)) {
    parts.push(rest.slice(at, m.index));
    const cls = m[1] ? "y-string" : m[2] ? "y-comment" : m[3] ? "y-anchor" : "y-punct";
    parts.push(el("span", { class: cls }, m[0]));
    at = m.index + m[0].length;
  }
  parts.push(rest.slice(at));
  return parts;
}

/** Wraps `textarea` in a highlighted editor; returns the wrapper and `paint()`. */
export function editor(textarea) {
  const under = el("pre", { class: "yaml-under", "aria-hidden": "true" });
  const wrap = el("div", { class: "editor" }, under, textarea);
  const paint = () => {
    const lines = textarea.value.split("\n");
    under.replaceChildren(...lines.flatMap((l) => [...line(l), "\n"]));
    under.scrollTop = textarea.scrollTop;
    under.scrollLeft = textarea.scrollLeft;
  };
  textarea.addEventListener("input", paint);
  textarea.addEventListener("scroll", () => {
    under.scrollTop = textarea.scrollTop;
    under.scrollLeft = textarea.scrollLeft;
  });
  return { wrap, paint };
}

"use strict";
// The page of `charlstm inspect --html`: the data is the JSON in <script id="data"> (see
// charlstm/inspection/html.py for its fields); the big arrays are base64 typed arrays.
const D = JSON.parse(document.getElementById("data").textContent);

function decode(b64, Type) {
  const bin = atob(b64), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}
const Index = D.indexType === "u2" ? Uint16Array : Int32Array;
const N = D.tokens.length, K = D.k, SCORED = Math.max(1, N - 1);
const bits = decode(D.bits, Float32Array);
const rank = decode(D.rank, Index);
const topIds = decode(D.topIds, Index);
const topProbs = decode(D.topProbs, Uint16Array);
const otherBits = D.against ? decode(D.against.bits, Float32Array) : null;

const cellCache = {};
function cellValues(key) {  // activations / scale, the scale, the |value| of full colour
  if (!cellCache[key]) {
    const c = D.cells[key], q = decode(c.data, Int8Array), v = new Float32Array(q.length);
    for (let i = 0; i < q.length; i++) v[i] = q[i] / 127;
    cellCache[key] = {scale: c.scale, range: c.range, v: v};
  }
  return cellCache[key];
}

// -- small helpers ------------------------------------------------------------------------------
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const kid of kids) e.append(kid);
  return e;
}
function fmt(x, d) { return Number.isFinite(x) ? x.toFixed(d) : "-"; }
function signed(x, d) { return (x >= 0 ? "+" : "\u2212") + fmt(Math.abs(x), d); }
function pct(p) {
  if (p >= 0.995) return "100%";
  return (100 * p).toFixed(p >= 0.1 ? 0 : 1) + "%";
}
function visible(s) {
  return {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "": "(byte)"}[s] ?? s;
}
function cellLabel(key) {
  const [kind, layer, unit] = key.split("/");
  return kind + " " + layer + ":" + unit;
}
function shortPath(p) { return p.split(/[\\/]/).slice(-2).join("/"); }
function stat(label, value) {
  return el("div", {class: "stat"}, el("span", {class: "muted", text: label}),
    el("b", {text: value}));
}

// -- colour scales: piecewise-linear between stops [value, [r, g, b]] ---------------------------
function ramp(stops) {
  return function (x) {
    if (!Number.isFinite(x)) return null;
    if (x <= stops[0][0]) return stops[0][1];
    for (let i = 1; i < stops.length; i++) {
      const [x1, c1] = stops[i];
      if (x <= x1) {
        const [x0, c0] = stops[i - 1], t = (x - x0) / (x1 - x0);
        return c0.map((c, j) => Math.round(c + t * (c1[j] - c)));
      }
    }
    return stops[stops.length - 1][1];
  };
}
const SURPRISE = ramp([[0, [255, 255, 255]], [1, [255, 244, 189]], [2, [255, 214, 112]],
  [4, [247, 141, 90]], [6, [214, 47, 47]], [9, [110, 8, 20]]]);
const DIVERGE = ramp([[-1, [33, 102, 172]], [-0.5, [146, 197, 222]], [0, [247, 247, 247]],
  [0.5, [244, 165, 130]], [1, [178, 24, 43]]]);
const COMPARE = ramp([[-4, [27, 120, 55]], [-1.5, [166, 219, 160]], [0, [247, 247, 247]],
  [1.5, [194, 165, 207]], [4, [118, 42, 131]]]);
function css(c) { return c ? "rgb(" + c.join(",") + ")" : ""; }
function ink(c) { return c && 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] < 135 ? "#fff" : ""; }

function legend(scale, lo, hi, ticks, caption) {
  const parts = [];
  for (let i = 0; i <= 20; i++) parts.push(css(scale(lo + (hi - lo) * i / 20)));
  const bar = el("div", {class: "bar", style: "background:linear-gradient(90deg," + parts + ")"});
  document.getElementById("legend").replaceChildren(
    el("span", {class: "scale"}, bar,
      el("div", {class: "ticks"}, ...ticks.map(t => el("span", {text: t})))),
    el("span", {text: caption}));
}

// -- the text: one span per character, recoloured by each view ---------------------------------
const textBox = document.getElementById("text");
const spans = new Array(N);
(function build() {
  const frag = document.createDocumentFragment();
  for (let i = 0; i < N; i++) {
    const t = D.tokens[i], s = document.createElement("span");
    if (t === "\n") {
      s.textContent = "\u21b5\n";
      s.className = "nl";
    } else s.textContent = t;
    s.dataset.i = i;
    spans[i] = s;
    frag.append(s);
  }
  spans[0].classList.add("first");
  textBox.append(frag);
})();
function paint(valueAt, scale) {
  for (let i = 0; i < N; i++) {
    const c = scale(valueAt(i));
    spans[i].style.backgroundColor = css(c);
    spans[i].style.color = ink(c);
  }
}
function flash(start, end) {
  for (const s of textBox.querySelectorAll(".hl")) s.classList.remove("hl");
  for (let i = start; i < end; i++) spans[i].classList.add("hl");
  spans[start].scrollIntoView({block: "center", behavior: "smooth"});
}
function snippet(start, end) {
  return D.tokens.slice(start, end).map(t => (t === "\n" ? "\u21b5" : t)).join("");
}

// -- hover details ------------------------------------------------------------------------------
const tip = document.getElementById("tip");
let view = "surprisal", cell = D.defaultCell;

function details(i) {
  const rows = [el("div", {}, el("span", {class: "ch", text: visible(D.tokens[i])}),
    el("span", {class: "muted", text: "  character " + i.toLocaleString()}))];
  if (i === 0) {
    rows.push(el("div", {text: "the first character is not predicted (no context yet)"}));
  } else {
    const b = bits[i];
    rows.push(el("div", {}, el("b", {text: fmt(b, 2) + " bits"}),
      el("span", {text: "  p = " + pct(Math.pow(2, -b)) + ", rank " + rank[i] + " of " +
        D.symbols.length})));
    if (view === "compare") {
      const o = otherBits[i];
      rows.push(el("div", {text: "the other: " + fmt(o, 2) + " bits (\u0394 " +
        signed(b - o, 2) + ")"}));
    }
    const table = el("table", {});
    for (let j = 0; j < K; j++) {
      const id = topIds[i * K + j], q = topProbs[i * K + j] / 65535;
      const width = Math.max(2, Math.round(130 * q));
      table.append(el("tr", {class: rank[i] === j + 1 ? "hit" : ""},
        el("td", {class: "sym", text: visible(D.symbols[id])}),
        el("td", {}, el("div", {class: "pbar", style: "width:" + width + "px"})),
        el("td", {class: "p", text: pct(q)})));
    }
    rows.push(el("div", {class: "muted", text: "the model's top " + K + " guesses here:"}),
      table);
  }
  if (view === "neurons") {
    const c = cellValues(cell);
    rows.push(el("div", {text: cellLabel(cell) + " = " + fmt(c.v[i] * c.scale, 3)}));
  }
  return rows;
}
function showTip(i, x, y) {
  tip.replaceChildren(...details(i));
  tip.style.display = "block";
  const w = tip.offsetWidth, h = tip.offsetHeight;
  let left = x + 14, top = y + 16;
  if (left + w > innerWidth - 8) left = x - w - 14;
  if (top + h > innerHeight - 8) top = y - h - 12;
  tip.style.left = Math.max(4, left) + "px";
  tip.style.top = Math.max(4, top) + "px";
}
textBox.addEventListener("mousemove", e => {
  const i = e.target.dataset ? e.target.dataset.i : undefined;
  if (i === undefined) tip.style.display = "none";
  else showTip(+i, e.clientX, e.clientY);
});
textBox.addEventListener("mouseleave", () => { tip.style.display = "none"; });

// -- the views ----------------------------------------------------------------------------------
const panel = document.getElementById("panel");

function showSurprisal() {
  legend(SURPRISE, 0, 9, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9+"],
    "bits of surprise per character (\u2212log\u2082 p); hover a character for the model's " +
    "top " + K + " guesses");
  paint(i => bits[i], SURPRISE);
  let first = 0, top = 0;
  for (let i = 1; i < N; i++) {
    if (rank[i] === 1) first++;
    if (rank[i] <= K) top++;
  }
  const list = el("div", {class: "spans"});
  for (const s of D.spans) {
    list.append(el("div", {title: "show it in the text", onclick: () => flash(s.start, s.end)},
      el("b", {text: fmt(s.bits, 1).padStart(5) + " bits  "}), snippet(s.start, s.end)));
  }
  panel.replaceChildren(
    el("h2", {text: "This text"}),
    el("div", {class: "big", text: fmt(D.bpc, 3) + " bits/char"}),
    el("div", {class: "muted", text: D.chars.toLocaleString() + " characters scored; " +
      fmt(D.loss, 4) + " nats/char, as charlstm eval --batch-size 1 reports"}),
    el("h2", {text: "The model's guesses"}),
    stat("first guess right", pct(first / SCORED)),
    stat("in the top " + K, pct(top / SCORED)),
    el("h2", {text: "Most surprising spans"}), list);
}

function cellButtons(list) {
  return el("div", {class: "cells"}, ...list.map(b => el("button", {
    class: b.cell === cell ? "on" : "", title: "colour the text by this cell",
    onclick: () => { location.hash = "#neurons/" + b.cell; },
  }, cellLabel(b.cell) + (b.r === undefined ? "" : "  r " + signed(b.r, 2)))));
}

function showNeurons() {
  const c = cellValues(cell), [kind, layer, unit] = cell.split("/");
  const what = kind === "c" ? "cell state c" : "output h";
  const clipped = c.range < c.scale ? "\u2264 " : "", more = c.range < c.scale ? "\u2265 " : "";
  legend(DIVERGE, -1, 1, [clipped + fmt(-c.range, 2), "0", more + "+" + fmt(c.range, 2)],
    cellLabel(cell) + ": its " + what + " after each character (blue negative, red positive)");
  const gain = c.scale / c.range;
  paint(i => c.v[i] * gain, DIVERGE);
  let tracked = null;
  for (const p of D.probes) {
    for (const b of p.best) {
      if (b.cell === cell && (!tracked || Math.abs(b.r) > Math.abs(tracked.r))) {
        tracked = {probe: p, r: b.r};
      }
    }
  }
  const parts = [
    el("div", {class: "cellhead", text: cellLabel(cell)}),
    el("div", {class: "muted", text: what + " of unit " + unit + " in layer " + layer}),
  ];
  if (tracked) {
    parts.push(el("div", {text: "tracks " + tracked.probe.name.replace(/_/g, " ") + ": r = " +
      signed(tracked.r, 3)}));
  }
  if (D.neurons.length) {
    parts.push(el("h2", {text: "Cells you asked for"}),
      cellButtons(D.neurons.map(key => ({cell: key}))));
  }
  parts.push(el("h2", {text: "Cells that track the text"}),
    el("div", {class: "muted", text: "each property's best cells by |Pearson r| over this text"}));
  const present = D.probes.filter(p => p.best.length);
  const absent = D.probes.filter(p => !p.best.length);  // properties this text lacks: last
  for (const p of present.concat(absent)) {
    const box = el("div", {class: "probe" + (p.best.length ? "" : " absent")},
      el("div", {}, el("span", {class: "name", text: p.name.replace(/_/g, " ")}),
        el("span", {class: "muted", text: "  " + p.description})));
    if (p.best.length) {
      box.append(el("div", {class: "muted", text: p.support.toLocaleString() +
        " characters non-zero"}), cellButtons(p.best));
    } else box.append(el("div", {class: "muted", text: "not in this text"}));
    parts.push(box);
  }
  panel.replaceChildren(...parts);
}

function showCompare() {
  legend(COMPARE, -4, 4, ["\u22124", "\u22122", "0", "+2", "+4"],
    "bits of this checkpoint minus the other's: green where this one predicts better, " +
    "purple where the other does");
  paint(i => bits[i] - otherBits[i], COMPARE);
  let better = 0, worse = 0;
  for (let i = 1; i < N; i++) {
    const d = bits[i] - otherBits[i];
    if (d < -0.01) better++;
    else if (d > 0.01) worse++;
  }
  panel.replaceChildren(
    el("h2", {text: "This checkpoint"}), el("div", {class: "muted", text: shortPath(D.checkpoint)}),
    el("div", {class: "big", text: fmt(D.bpc, 3) + " bits/char"}),
    el("h2", {text: "The other"}),
    el("div", {class: "muted", text: shortPath(D.against.checkpoint)}),
    el("div", {class: "big", text: fmt(D.against.bpc, 3) + " bits/char"}),
    el("h2", {text: "Character by character"}),
    stat("this one better", pct(better / SCORED)),
    stat("the other better", pct(worse / SCORED)),
    stat("difference", signed(D.bpc - D.against.bpc, 3) + " bits/char"));
}

const VIEWS = {surprisal: showSurprisal, neurons: showNeurons, compare: showCompare};
function route() {  // #surprisal, #neurons, #neurons/c/1/42, #compare
  const parts = location.hash.replace(/^#/, "").split("/");
  let name = VIEWS[parts[0]] ? parts[0] : "surprisal";
  if (name === "compare" && !D.against) name = "surprisal";
  const key = parts.slice(1).join("/");
  if (name === "neurons" && D.cells[key]) cell = key;
  view = name;
  for (const a of document.querySelectorAll("#tabs a")) {
    a.classList.toggle("active", a.dataset.view === name);
  }
  tip.style.display = "none";
  VIEWS[name]();
  document.body.dataset.view = name;
  document.body.dataset.ready = "1";  // for tests and screenshots: the view is drawn
}

(function init() {
  const excerpt = D.excerpt ? " (its first " + N.toLocaleString() + " characters)" : "";
  document.getElementById("meta").append(
    el("b", {text: shortPath(D.checkpoint)}), " \u00b7 " + D.model + " \u00b7 " +
    D.source.split(/[\\/]/).pop() +
    excerpt + " \u00b7 ", el("b", {text: fmt(D.bpc, 3) + " bits/char"}),
    D.skipped ? " \u00b7 " + D.skipped + " unknown characters skipped" : "");
  if (!D.against) {
    const tab = document.querySelector('#tabs a[data-view="compare"]');
    tab.classList.add("disabled");
    tab.title = "run charlstm inspect with --against OTHER.pt";
  }
  window.addEventListener("hashchange", route);
  route();
})();

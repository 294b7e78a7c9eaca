/* charlstm in the browser: samples from a CharLSTM exported by `charlstm export --format web`.

   Plain JavaScript, no dependencies, no network: the model description and vocabulary are
   inline in index.html (#charlstm-model); the weights come from weights.safetensors when the
   page is served over http(s), or from weights.js (the same bytes as base64) when it is opened
   from disk, where browsers refuse fetch() of file:// URLs.

   One LSTM layer, as PyTorch computes it (PyTorch's gate order i, f, g, o):
       gates = (W_ih x + b_ih) + (W_hh h + b_hh)
       c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
       h' = sigmoid(o) * tanh(c')
   Dot products accumulate in float64 (JavaScript numbers) and every value PyTorch stores as a
   float32 tensor (the two projections, the gates, the activations, c', h', the logits) is
   rounded to float32 at the same point, so the greedy (argmax) choice equals PyTorch's fp32 one
   except at near-exact ties. */
"use strict";

(function () {
  const f32 = Math.fround;

  // -- weights ---------------------------------------------------------------------------------

  function parseSafetensors(buffer) {
    const view = new DataView(buffer);
    const headerLen = Number(view.getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, headerLen)));
    const base = 8 + headerLen;
    const tensors = {};
    for (const [name, info] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      if (info.dtype !== "F32") throw new Error(`tensor ${name} is ${info.dtype}, expected F32`);
      const [begin, end] = info.data_offsets;
      // safetensors is little-endian, like every browser's Float32Array in practice
      tensors[name] = { shape: info.shape, data: new Float32Array(buffer, base + begin, (end - begin) / 4) };
    }
    return tensors;
  }

  function base64ToBuffer(b64) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(b64).buffer;
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes.buffer;
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const el = document.createElement("script");
      el.src = src;
      el.onload = resolve;
      el.onerror = () => reject(new Error(`${src} is missing: keep it beside index.html`));
      document.head.appendChild(el);
    });
  }

  async function loadWeights(meta) {
    let failed = "";
    if (location.protocol === "http:" || location.protocol === "https:") {
      const response = await fetch(meta.weights);
      if (response.ok) return response.arrayBuffer();
      failed = `${meta.weights}: HTTP ${response.status}; `; // then try the base64 copy
    }
    // file://: a <script> may load from disk where fetch() may not
    await loadScript(meta.weights_js).catch((e) => {
      throw new Error(`cannot load the weights (${failed}${e.message})`);
    });
    const buffer = base64ToBuffer(window.CHARLSTM_WEIGHTS_B64);
    delete window.CHARLSTM_WEIGHTS_B64;
    return buffer;
  }

  // -- the model --------------------------------------------------------------------------------

  function dot(w, offset, x, n) {
    // four running sums keep the CPU's pipelines busy; float64 makes their order immaterial
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
    for (; j + 3 < n; j += 4) {
      s0 += w[offset + j] * x[j];
      s1 += w[offset + j + 1] * x[j + 1];
      s2 += w[offset + j + 2] * x[j + 2];
      s3 += w[offset + j + 3] * x[j + 3];
    }
    for (; j < n; j++) s0 += w[offset + j] * x[j];
    return s0 + s1 + (s2 + s3);
  }

  const sigmoid = (v) => f32(1 / (1 + Math.exp(-v)));

  class CharLSTM {
    constructor(meta, tensors) {
      const need = (name, shape) => {
        const t = tensors[name];
        if (!t || t.shape.join() !== shape.join())
          throw new Error(`weights: ${name} should have shape [${shape}], got ${t ? `[${t.shape}]` : "nothing"}`);
        return t.data;
      };
      const V = (this.V = meta.vocab_size);
      const E = (this.E = meta.embed_size);
      const H = (this.H = meta.hidden_size);
      this.L = meta.num_layers;
      this.embedding = need("embedding.weight", [V, E]);
      this.layers = [];
      for (let k = 0; k < this.L; k++) {
        const inSize = k === 0 ? E : H;
        this.layers.push({
          inSize,
          wih: need(`lstm.weight_ih_l${k}`, [4 * H, inSize]),
          whh: need(`lstm.weight_hh_l${k}`, [4 * H, H]),
          bih: need(`lstm.bias_ih_l${k}`, [4 * H]),
          bhh: need(`lstm.bias_hh_l${k}`, [4 * H]),
        });
      }
      this.headW = need("head.weight", [V, H]);
      this.headB = need("head.bias", [V]);
      this.gates = new Float32Array(4 * H);
    }

    zeroState() {
      const make = () => Array.from({ length: this.L }, () => new Float32Array(this.H));
      return { h: make(), c: make() };
    }

    /** Feed one token: advances `state` and writes the next token's logits into `logits`. */
    step(token, state, logits) {
      const { E, H, gates } = this;
      let x = this.embedding.subarray(token * E, (token + 1) * E);
      for (let k = 0; k < this.L; k++) {
        const { inSize, wih, whh, bih, bhh } = this.layers[k];
        const h = state.h[k];
        const c = state.c[k];
        for (let r = 0; r < 4 * H; r++) {
          const fromInput = f32(dot(wih, r * inSize, x, inSize) + bih[r]);
          const fromState = f32(dot(whh, r * H, h, H) + bhh[r]);
          gates[r] = fromInput + fromState; // Float32Array: stored rounded
        }
        for (let j = 0; j < H; j++) {
          const i = sigmoid(gates[j]);
          const f = sigmoid(gates[H + j]);
          const g = f32(Math.tanh(gates[2 * H + j]));
          const o = sigmoid(gates[3 * H + j]);
          c[j] = f32(f * c[j]) + f32(i * g);
          h[j] = o * f32(Math.tanh(c[j]));
        }
        x = h;
      }
      for (let v = 0; v < this.V; v++) logits[v] = dot(this.headW, v * H, x, H) + this.headB[v];
    }
  }

  // -- vocabulary ---------------------------------------------------------------------------------

  class Vocab {
    constructor(meta) {
      this.level = meta.level;
      this.normalizeForm = { nfc: "NFC", nfkc: "NFKC" }[meta.normalize] || null;
      this.lowercase = meta.lowercase;
      this.startId = meta.start_id;
      if (this.level === "char") {
        this.codepoints = meta.codepoints;
        this.ids = new Map(this.codepoints.map((cp, id) => [cp, id]));
      }
    }

    normalize(text) {
      if (this.normalizeForm) text = text.normalize(this.normalizeForm);
      return this.lowercase ? text.toLowerCase() : text;
    }

    /** The prime's ids, or an error naming the characters the vocabulary lacks. */
    encode(text) {
      if (this.level === "byte") return Array.from(new TextEncoder().encode(text));
      const ids = [];
      const unknown = [];
      let position = 0;
      for (const ch of text) {
        const id = this.ids.get(ch.codePointAt(0));
        if (id === undefined) unknown.push(`'${ch}' at ${position}`);
        else ids.push(id);
        position++;
      }
      if (unknown.length) {
        const more = unknown.length > 5 ? ` and ${unknown.length - 5} more` : "";
        throw new UserError(`the prime text has ${unknown.length} character(s) the vocabulary ` +
          `lacks: ${unknown.slice(0, 5).join(", ")}${more}; remove them from the prime`);
      }
      return ids;
    }

    /** A function ids -> text for text produced piece by piece (holds back partial UTF-8). */
    streamDecoder() {
      if (this.level === "char") return (ids) => ids.map((id) => String.fromCodePoint(this.codepoints[id])).join("");
      const decoder = new TextDecoder("utf-8"); // invalid bytes become U+FFFD, as in Python
      return (ids) => decoder.decode(new Uint8Array(ids), { stream: true });
    }
  }

  class UserError extends Error {}

  // -- sampling -----------------------------------------------------------------------------------

  /** A small seeded PRNG (mulberry32): reproducible samples for a seed, in this page. */
  function seededRandom(seed) {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function argmax(values) {
    let best = 0;
    for (let v = 1; v < values.length; v++) if (values[v] > values[best]) best = v; // first max
    return best;
  }

  /** The next id: argmax at temperature 0, else a draw after temperature, top-k and top-p
      (the same filters, in the same order, as `charlstm sample`). */
  function pick(logits, { temperature, topK, topP }, random) {
    if (temperature === 0) return argmax(logits);
    const V = logits.length;
    const z = new Float64Array(V);
    for (let v = 0; v < V; v++) z[v] = logits[v] / temperature;
    if (topK > 0 && topK < V) {
      const kth = Float64Array.from(z).sort().reverse()[topK - 1];
      for (let v = 0; v < V; v++) if (z[v] < kth) z[v] = -Infinity;
    }
    let max = -Infinity;
    for (let v = 0; v < V; v++) max = Math.max(max, z[v]);
    const p = new Float64Array(V);
    let total = 0;
    for (let v = 0; v < V; v++) total += p[v] = Math.exp(z[v] - max);
    if (topP < 1) {
      // drop a symbol when the mass before it already reaches top_p (the top one always stays)
      const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a] || a - b);
      let before = 0;
      let kept = 0;
      for (const v of order) {
        const mass = p[v] / total;
        if (before >= topP) p[v] = 0;
        else kept += p[v];
        before += mass;
      }
      total = kept;
    }
    let u = random() * total;
    for (let v = 0; v < V; v++) {
      if (p[v] === 0) continue;
      u -= p[v];
      if (u < 0) return v;
    }
    return argmax(p); // u landed on the rounding error at the very end
  }

  // -- options ------------------------------------------------------------------------------------

  const DEFAULTS = { prime: "", length: 500, temperature: 1, top_k: 0, top_p: 1, seed: "" };

  function parseOptions(given) {
    const raw = { ...DEFAULTS, ...given };
    const number = (name, value, ok, message) => {
      const x = Number(value);
      if (String(value).trim() === "" || !Number.isFinite(x) || !ok(x))
        throw new UserError(`${name} ${message}, got ${JSON.stringify(String(value))}`);
      return x;
    };
    const opts = {
      prime: raw.prime || "",
      length: number("length", raw.length, (x) => Number.isInteger(x) && x >= 0, "must be a whole number >= 0"),
      temperature: number("temperature", raw.temperature, (x) => x >= 0, "must be >= 0 (0 is greedy)"),
      topK: number("top_k", raw.top_k, (x) => Number.isInteger(x) && x >= 0, "must be a whole number >= 0 (0 disables it)"),
      topP: number("top_p", raw.top_p, (x) => x > 0 && x <= 1, "must be in (0, 1] (1 disables it)"),
      seed: null,
    };
    const seed = String(raw.seed ?? "").trim();
    if (seed !== "") {
      if (!/^-?\d+$/.test(seed)) throw new UserError(`seed must be a whole number, got ${JSON.stringify(seed)}`);
      opts.seed = Number(BigInt.asUintN(32, BigInt(seed)));
    }
    return opts;
  }

  // -- generation ---------------------------------------------------------------------------------

  const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

  /** Generate `length` characters after the prime, calling onText(piece) as text appears and
      onProgress({...}) after each slice, yielding to the browser every few milliseconds so
      the page stays live. Resolves to {text, chars, seconds} (seconds: the generation, after
      the prime). `shouldStop()` ends it early. */
  async function generate(model, vocab, opts, onText, shouldStop = () => false, onProgress = () => {}) {
    const decode = vocab.streamDecoder();
    let text = "";
    const emit = (ids) => {
      const piece = decode(ids);
      if (piece) {
        text += piece;
        onText(piece);
      }
    };
    const primeText = vocab.normalize(opts.prime);
    let ids = primeText ? vocab.encode(primeText) : [];
    if (ids.length) emit(ids);
    else ids = [vocab.startId]; // no prime: a newline as context, not printed
    const random = seededRandom(opts.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]);
    const state = model.zeroState();
    const logits = new Float32Array(model.V);
    let fed = 0;
    while (fed < ids.length) {
      if (shouldStop()) return { text, chars: 0, seconds: 0 };
      const sliceEnd = performance.now() + 30;
      while (fed < ids.length && performance.now() < sliceEnd) model.step(ids[fed++], state, logits);
      if (fed < ids.length) {
        onProgress({ primeDone: fed, primeTotal: ids.length });
        await nextTask();
      }
    }
    const start = performance.now();
    let done = 0;
    while (done < opts.length && !shouldStop()) {
      const sliceEnd = performance.now() + 30;
      const pieceIds = [];
      while (done < opts.length && performance.now() < sliceEnd) {
        const id = pick(logits, opts, random);
        pieceIds.push(id);
        done++;
        if (done < opts.length) model.step(id, state, logits);
      }
      emit(pieceIds);
      onProgress({ chars: done, seconds: (performance.now() - start) / 1000 });
      await nextTask();
    }
    return { text, chars: done, seconds: (performance.now() - start) / 1000 };
  }

  // -- the page -----------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const meta = JSON.parse($("charlstm-model").textContent);
  const vocab = new Vocab(meta);
  const query = new URLSearchParams(location.search);
  const fields = ["prime", "length", "temperature", "top_k", "top_p", "seed"];
  for (const name of fields) if (query.has(name)) $(name).value = query.get(name);
  const autostart = query.get("autostart") === "1";
  let model = null;
  let stopRequested = false;

  const status = (message) => ($("status").textContent = message);
  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    if (autostart) document.title = "error";
  }

  async function run() {
    $("error").hidden = true;
    let opts;
    try {
      opts = parseOptions(Object.fromEntries(fields.map((name) => [name, $(name).value])));
    } catch (e) {
      if (e instanceof UserError) return showError(e.message);
      throw e;
    }
    const output = $("output");
    output.textContent = "";
    stopRequested = false;
    $("generate").disabled = true;
    $("stop").disabled = false;
    try {
      const rateOf = (chars, seconds) => (seconds > 0 ? Math.round(chars / seconds) : 0);
      const progress = (p) =>
        status(p.primeTotal
          ? `reading the prime: ${p.primeDone.toLocaleString("en")} of ${p.primeTotal.toLocaleString("en")} characters`
          : `${p.chars.toLocaleString("en")} characters, ${rateOf(p.chars, p.seconds).toLocaleString("en")} chars/s`);
      const result = await generate(model, vocab, opts, (piece) => output.append(piece), () => stopRequested, progress);
      const rate = rateOf(result.chars, result.seconds);
      status(`${result.chars} characters in ${result.seconds.toFixed(2)} s (${rate.toLocaleString("en")} chars/s)`);
      output.dataset.charsPerS = String(rate);
      if (autostart) document.title = "done";
    } catch (e) {
      if (e instanceof UserError) showError(e.message);
      else throw e;
    } finally {
      $("generate").disabled = false;
      $("stop").disabled = true;
    }
  }

  async function main() {
    const sizes = Object.entries(meta.tensors).map(([name, shape]) =>
      name === "head.weight" && meta.tie_weights ? 0 : shape.reduce((a, b) => a * b, 1));
    const params = sizes.reduce((a, b) => a + b, 0);
    $("about").textContent = `${meta.num_layers} × LSTM(${meta.hidden_size}), embed ${meta.embed_size}, ` +
      `${meta.vocab_size} ${meta.level === "byte" ? "byte values" : "characters"}, ` +
      `${(params / 1e6).toFixed(2)} M parameters; runs in this page, offline.`;
    status("loading weights…");
    const tensors = parseSafetensors(await loadWeights(meta));
    model = new CharLSTM(meta, tensors);
    status("ready");
    $("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      run();
    });
    $("stop").addEventListener("click", () => (stopRequested = true));
    $("generate").disabled = false;
    window.charlstm = { model, vocab, generate: (options, onText) => generate(model, vocab, parseOptions(options), onText) };
    if (autostart) await run();
  }

  main().catch((e) => {
    status("failed");
    showError(String(e && e.message ? e.message : e));
    console.error(e);
  });
})();

// WebGL scatter map for the drl explorer: a Streamlit v1 custom component on regl-scatterplot.
//
// Talks to Streamlit with the raw v1 postMessage protocol (no React, no streamlit-component-lib):
//   iframe -> Streamlit  streamlit:componentReady {apiVersion: 1}
//                        streamlit:setFrameHeight {height}
//                        streamlit:setComponentValue {value, dataType: "json"}
//   Streamlit -> iframe  streamlit:render {args, dfs, disabled, theme}
// Bytes arguments (Python `bytes`) arrive in `args` as Uint8Array views.
//
// Arguments (see explorer/scatter.py, which encodes them):
//   meta      JSON: n, token, height, mode ("categorical" | "continuous" | "none"), categories,
//             palette, vmin, vmax, title, point_size, images ({files, index, chunk} or null)
//   xy        bytes: float32 x[0..n) then y[0..n), already scaled to [-1, 1]
//   codes     bytes: uint8 colour code per point (category, or continuous value in 0..254, 255 = missing)
//   selected  bytes: uint32 point indices Python holds as selected (the component shows them)
// Value sent back: {selection: base64 of uint32 indices, n, seq: a unique event id}.
import createScatterplot from "regl-scatterplot";

const send = (type, data) =>
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const tooltip = $("tooltip");
const status = $("status");

let plot = null;
let token = null;
let meta = null;
let drawing = null;
let seq = 0;
// Event ids are unique across reloads of this frame, so Python can tell a new selection from one
// it has already seen.
const session = Math.random().toString(36).slice(2, 10);
let current = new Uint32Array(0); // the selection the plot shows
let hovered = -1;
let mouse = [0, 0];
const chunks = new Map(); // chunk number -> Promise of [[file, caption(, offset, length)], ...]
// Image files that hold many thumbnails (a run's shards, a few MB each), fetched once and kept
// for the next hovers: file URL -> Promise of a Blob, the most recently used last.
const packs = new Map();
const MAX_PACKS = 12;
let hoverUrl = null; // object URL of the image shown, revoked when the next one replaces it

// The timings the browser test reads (and a person sees in the status line).
window.__drlScatter = {
  ready: false,
  n: 0,
  drawMs: null,
  renders: 0,
  selection: -1,
  // Where point i is drawn, in the iframe's CSS pixels (for tests that hover a given point).
  screenPosition: (i) => plot?.getScreenPosition(i),
};

const copyView = (u8, Type) => {
  // Protobuf bytes may sit at any offset of a larger buffer: copy to an aligned one.
  const out = new Uint8Array(u8.byteLength);
  out.set(u8);
  return new Type(out.buffer);
};

const toBase64 = (u32) => {
  const bytes = new Uint8Array(u32.buffer, u32.byteOffset, u32.byteLength);
  let s = "";
  const step = 0x8000;
  for (let i = 0; i < bytes.length; i += step) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + step));
  }
  return btoa(s);
};

const sameIndices = (a, b) => {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
};

const sortedIndices = (points) => Uint32Array.from(points).sort();

function sendSelection(points) {
  current = sortedIndices(points);
  seq += 1;
  window.__drlScatter.selection = current.length;
  send("streamlit:setComponentValue", {
    value: { selection: toBase64(current), n: current.length, seq: `${session}:${seq}` },
    dataType: "json",
  });
  showStatus();
}

function showStatus() {
  const n = window.__drlScatter.n;
  const ms = window.__drlScatter.drawMs;
  const parts = [`${n.toLocaleString("en-US")} points`];
  if (ms !== null) parts.push(`drawn in ${Math.round(ms)} ms`);
  if (current.length) parts.push(`${current.length.toLocaleString("en-US")} selected`);
  status.textContent = parts.join(" · ");
}

function legend() {
  const box = $("legend");
  box.replaceChildren();
  if (!meta || meta.mode === "none") return;
  const title = document.createElement("div");
  title.className = "legend-title";
  title.textContent = meta.title || "";
  box.appendChild(title);
  if (meta.mode === "categorical") {
    meta.categories.forEach((name, i) => {
      const row = document.createElement("div");
      row.className = "legend-row";
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = meta.palette[i];
      row.appendChild(sw);
      row.appendChild(document.createTextNode(name));
      box.appendChild(row);
    });
  } else {
    const bar = document.createElement("div");
    bar.className = "colourbar";
    const stops = meta.palette.slice(0, 255).filter((_, i) => i % 16 === 0 || i === 254);
    bar.style.background = `linear-gradient(to right, ${stops.join(",")})`;
    box.appendChild(bar);
    const ends = document.createElement("div");
    ends.className = "legend-ends";
    ends.innerHTML = `<span>${fmt(meta.vmin)}</span><span>${fmt(meta.vmax)}</span>`;
    box.appendChild(ends);
  }
}

const fmt = (v) =>
  v === null || v === undefined || Number.isNaN(v)
    ? "–"
    : Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0)
      ? v.toExponential(2)
      : v.toFixed(2);

function colourText(i) {
  if (!meta || meta.mode === "none" || !window.__drlCodes) return "";
  const code = window.__drlCodes[i];
  if (meta.mode === "categorical") return meta.categories[code] ?? "";
  if (code === 255) return `${meta.title}: missing`;
  const v = meta.vmin + (code / 254) * (meta.vmax - meta.vmin);
  return `${meta.title} ≈ ${fmt(v)}`;
}

function chunk(k) {
  if (!chunks.has(k)) {
    const url = `${meta.images.index}${k}.json`;
    chunks.set(
      k,
      fetch(url).then((r) => {
        if (!r.ok) throw new Error(`${url}: ${r.status}`);
        return r.json();
      }),
    );
  }
  return chunks.get(k);
}

function pack(url) {
  let blob = packs.get(url);
  if (blob) {
    packs.delete(url); // re-insert: most recently used last
  } else {
    blob = fetch(url).then((r) => {
      if (!r.ok) throw new Error(`${url}: ${r.status}`);
      return r.blob();
    });
    blob.catch(() => packs.delete(url));
  }
  packs.set(url, blob);
  while (packs.size > MAX_PACKS) packs.delete(packs.keys().next().value);
  return blob;
}

// The src of row's image: the file itself, or an object URL of its byte range in a pack.
async function imageSrc(row) {
  const [file, , offset, length] = row;
  const url = `${meta.images.files}${encodeURIComponent(file)}`;
  if (offset === undefined || offset === null || offset < 0) return url;
  const blob = await pack(url);
  return URL.createObjectURL(blob.slice(offset, offset + length, "image/jpeg"));
}

function placeTooltip() {
  const pad = 14;
  const w = tooltip.offsetWidth;
  const h = tooltip.offsetHeight;
  let x = mouse[0] + pad;
  let y = mouse[1] + pad;
  if (x + w > window.innerWidth) x = Math.max(0, mouse[0] - pad - w);
  if (y + h > window.innerHeight) y = Math.max(0, mouse[1] - pad - h);
  tooltip.style.transform = `translate(${x}px, ${y}px)`;
}

function showHover(i) {
  hovered = i;
  const img = $("tooltip-img");
  const caption = $("tooltip-caption");
  const value = $("tooltip-value");
  value.textContent = colourText(i);
  caption.textContent = `#${i}`;
  img.style.display = "none";
  img.removeAttribute("src");
  tooltip.style.display = "block";
  placeTooltip();
  if (meta?.images) {
    const size = meta.images.chunk;
    chunk(Math.floor(i / size))
      .then(async (rows) => {
        if (hovered !== i) return;
        const row = rows[i % size] || [];
        const [file, text] = row;
        if (text) caption.textContent = text;
        placeTooltip();
        if (file && meta.images.files) {
          const src = await imageSrc(row);
          if (hovered !== i) {
            if (src.startsWith("blob:")) URL.revokeObjectURL(src);
            return;
          }
          img.onload = () => {
            if (hovered === i) {
              img.style.display = "block";
              placeTooltip();
            }
          };
          if (hoverUrl) URL.revokeObjectURL(hoverUrl);
          hoverUrl = src.startsWith("blob:") ? src : null;
          img.src = src;
        }
      })
      .catch((err) => {
        caption.textContent = `#${i} (no image: ${err.message})`;
      });
  }
}

function hideHover() {
  hovered = -1;
  tooltip.style.display = "none";
}

function setMode(mode) {
  plot?.set({ mouseMode: mode });
  $("pan").classList.toggle("active", mode === "panZoom");
  $("lasso").classList.toggle("active", mode === "lasso");
}

let lastHeight = 0;
function sendHeight() {
  const h = Math.ceil(document.body.scrollHeight);
  if (h !== lastHeight) {
    lastHeight = h;
    send("streamlit:setFrameHeight", { height: h });
  }
}

// Streamlit shows the iframe only once it is ready and sizes it on setFrameHeight, so the first
// render can find a frame of width or height 0 (regl-scatterplot sizes its offscreen canvas to
// the window): ask for the height, then wait (a few frames at most) for a real size.
async function frameWidth(height) {
  $("plot").style.height = `${height}px`;
  sendHeight();
  for (let k = 0; k < 300 && (window.innerWidth === 0 || window.innerHeight === 0); k++) {
    await new Promise((r) => requestAnimationFrame(r));
  }
  return Math.max(1, document.body.clientWidth);
}

function ensurePlot(width, height) {
  $("plot").style.height = `${height}px`;
  if (plot) {
    plot.set({ width, height });
    return;
  }
  plot = createScatterplot({
    canvas,
    width,
    height,
    pointSize: 3,
    backgroundColor: "#ffffff",
    pointColorActive: "#e8710a",
    pointColorHover: "#000000",
    lassoColor: "#e8710a",
    lassoMinDelay: 10,
    lassoMinDist: 2,
    opacityInactiveScale: 0.6,
    // Lasso with the toolbar's "Lasso" mode, or shift-drag in pan mode.
    actionKeyMap: { lasso: "shift", merge: "meta", remove: "alt" },
  });
  plot.subscribe("pointOver", showHover);
  plot.subscribe("pointOut", hideHover);
  // regl-scatterplot also reads a lasso that ends where it began (within lassoMinDist) as a
  // click, and selects the point under the cursor right after the lasso's selection: keep the
  // lasso's selection then.
  let lassoAt = Number.NEGATIVE_INFINITY;
  plot.subscribe("lassoEnd", () => {
    lassoAt = performance.now();
  });
  plot.subscribe("select", ({ points }) => {
    if (points.length === 1 && current.length > 1 && performance.now() - lassoAt < 400) {
      plot.select(Array.from(current), { preventEvent: true });
      return;
    }
    sendSelection(points);
  });
  plot.subscribe("deselect", () => {
    if (current.length) sendSelection([]);
  });
  canvas.addEventListener("mousemove", (ev) => {
    mouse = [ev.clientX, ev.clientY];
    if (tooltip.style.display === "block") placeTooltip();
  });
  canvas.addEventListener("mouseleave", hideHover);
  new ResizeObserver(() => {
    const w = document.body.clientWidth;
    if (w > 0) plot.set({ width: w });
  }).observe(document.body);
  new ResizeObserver(sendHeight).observe(document.body);
  $("pan").onclick = () => setMode("panZoom");
  $("lasso").onclick = () => setMode("lasso");
  $("reset").onclick = () => plot.reset();
  $("clear").onclick = () => plot.deselect();
  setMode("panZoom");
}

function applySelection(selected) {
  if (sameIndices(selected, current)) return;
  current = selected;
  window.__drlScatter.selection = current.length;
  if (selected.length) plot.select(Array.from(selected), { preventEvent: true });
  else plot.deselect({ preventEvent: true });
  showStatus();
}

async function render(args) {
  window.__drlScatter.renders += 1;
  meta = args.meta;
  const height = meta.height;
  ensurePlot(plot ? document.body.clientWidth : await frameWidth(height), height);
  sendHeight();
  // No `selected` argument: the browser keeps whatever the user selected.
  const controlled = args.selected !== undefined && args.selected !== null;
  const selected = controlled ? copyView(args.selected, Uint32Array) : current;
  if (meta.token !== token) {
    // New points (or new colours): decode the typed arrays and draw once.
    token = meta.token;
    chunks.clear();
    packs.clear();
    const t0 = performance.now();
    const xy = copyView(args.xy, Float32Array);
    const n = meta.n;
    const x = xy.subarray(0, n);
    const y = xy.subarray(n, 2 * n);
    const codes = args.codes ? copyView(args.codes, Uint8Array) : new Uint8Array(n);
    window.__drlCodes = codes;
    const points = { x, y, z: Float32Array.from(codes) };
    const size = meta.point_size ?? (n > 200000 ? 1.5 : n > 20000 ? 2.5 : 4);
    plot.set({
      pointSize: size,
      colorBy: meta.mode === "none" ? null : "valueA",
      pointColor: meta.mode === "none" ? "#4c78a8" : meta.palette,
      opacity: n > 200000 ? 0.6 : 0.85,
      // With a selection, the other points fade; dense maps need them much fainter to show it.
      opacityInactiveMax: n > 200000 ? 0.05 : n > 20000 ? 0.15 : 0.3,
    });
    window.__drlScatter.ready = false;
    // New points: a selection Python holds is shown again; the browser's own is kept when the
    // number of points is the same (a new colouring) and dropped (and reported) otherwise.
    const kept = controlled || meta.n === window.__drlScatter.n;
    if (!kept && current.length) sendSelection([]);
    current = controlled ? selected : kept ? current : new Uint32Array(0);
    if (drawing) await drawing.catch(() => {});
    drawing = plot.draw(points, {
      zDataType: "categorical",
      select: current.length ? Array.from(current) : undefined,
    });
    await drawing;
    // Wait for the frame that shows the points to be painted.
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    window.__drlScatter.drawMs = performance.now() - t0;
    window.__drlScatter.n = n;
    window.__drlScatter.ready = true;
    window.__drlScatter.selection = current.length;
    legend();
    showStatus();
  } else if (controlled) {
    applySelection(selected);
  }
}

window.addEventListener("message", (ev) => {
  if (ev.data?.type === "streamlit:render") {
    render(ev.data.args).catch((err) => {
      status.textContent = `Could not draw the map: ${err.message}`;
      console.error(err);
    });
  }
});

send("streamlit:componentReady", { apiVersion: 1 });

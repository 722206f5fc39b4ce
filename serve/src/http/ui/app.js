// The page: load a CT series (DICOM files, a folder, .npy slices), denoise every slice
// through /v1/denoise, show input and output side by side, evaluate against a
// full-dose reference through /v1/evaluate, download the derived series.

import { ApiError, BUSY_RETRIES, denoise, describe, evaluate, getToken, listModels, setToken } from "./api.js";
import { DICOMDIR_CLASS, NotDicomError, decodeHu, parseDicom, slicePosition } from "./dicom.js";
import { encodeNpy, isNpy, parseNpy } from "./npy.js";
import { PRESETS, Viewer } from "./viewer.js";
import { zipStore } from "./zip.js";

const $ = (id) => document.getElementById(id);
const CONCURRENCY = 2;

const state = {
  models: [],
  model: "",
  strength: 1,
  series: [],
  current: null,
  slice: 0,
  queue: [],
  running: 0,
  paused: false,
  batch: { done: 0, total: 0, started: 0 },
  busyNote: "",
  nextId: 1,
};

const key = () => `${state.model}|${state.strength}`;

// ---------------------------------------------------------------- status and errors

function setStatus(text) {
  $("status-text").textContent = text;
}

function addError(file, text) {
  const li = document.createElement("li");
  const b = document.createElement("b");
  b.textContent = file;
  li.append(b, document.createTextNode(`: ${text}`));
  $("errors").append(li);
  $("errors-box").hidden = false;
}

function clearErrors() {
  $("errors").replaceChildren();
  $("errors-box").hidden = true;
}

// ---------------------------------------------------------------- token

function askToken(message) {
  state.paused = true;
  $("token-form").hidden = false;
  $("token-message").textContent = message;
  $("token").focus();
}

async function submitToken(ev) {
  ev.preventDefault();
  setToken($("token").value.trim());
  $("token-message").textContent = "Checking…";
  try {
    await loadModels();
    $("token-form").hidden = true;
    $("token").value = "";
    $("forget-token").hidden = !getToken();
    state.paused = false;
    pump();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) askToken(describe(e));
    else $("token-message").textContent = describe(e);
  }
}

// ---------------------------------------------------------------- models

async function loadModels() {
  const r = await listModels();
  state.models = r.models || [];
  const sel = $("model");
  const keep = state.model;
  sel.replaceChildren(
    ...state.models.map((m) => {
      const o = document.createElement("option");
      o.value = m.name;
      o.textContent = `${m.name} ${m.version} (${m.method}, ${m.arch}, ${m.device})`;
      return o;
    }),
  );
  const names = state.models.map((m) => m.name);
  state.model = names.includes(keep) ? keep : names.includes("default") ? "default" : names[0] || "";
  sel.value = state.model;
  if (typeof r.strength === "number" && !state.strengthSet) {
    state.strength = r.strength;
    $("strength").value = String(r.strength);
  }
  $("strength-value").textContent = Number(state.strength).toFixed(2);
  $("server-info").textContent = state.models.length
    ? `${state.models.length} model${state.models.length > 1 ? "s" : ""} on ${r.device}`
    : "The server has no model loaded.";
  if (!state.models.length) setStatus("The server has no model: add one to its models folder and reload it.");
}

// ---------------------------------------------------------------- reading files

const naturalCompare = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" }).compare;

// Reads dropped or picked files into slices, grouped into series. fromFolder: files
// found in a folder that are neither DICOM nor .npy are skipped (README, DICOMDIR, ...)
// rather than sent.
async function readFiles(files, fromFolder) {
  const groups = new Map();
  const add = (gkey, label, kind, slice) => {
    if (!groups.has(gkey)) groups.set(gkey, { label, kind, slices: [] });
    groups.get(gkey).slices.push(slice);
  };
  let skipped = 0;
  for (const f of files) {
    const name = f.webkitRelativePath || f.relPath || f.name;
    const buffer = await f.arrayBuffer();
    if (isNpy(buffer)) {
      let arr;
      try {
        arr = parseNpy(buffer);
      } catch (e) {
        // The server's words for it: send it as it is.
        add("npy", "NumPy slices", "npy", blankSlice(name, "npy", new Uint8Array(buffer)));
        continue;
      }
      if (arr.shape.length === 3) {
        const [n, h, w] = arr.shape;
        for (let i = 0; i < n; i++) {
          const hu = arr.data.slice(i * h * w, (i + 1) * h * w);
          const s = blankSlice(`${name} [${i}]`, "npy", encodeNpy([h, w], hu));
          s.input = { width: w, height: h, hu };
          s.order = i;
          add(`npy:${name}`, `${name} (${n} slices)`, "npy", s);
        }
      } else {
        const s = blankSlice(name, "npy", new Uint8Array(buffer));
        if (arr.shape.length === 2) s.input = { width: arr.shape[1], height: arr.shape[0], hu: arr.data };
        add("npy", "NumPy slices", "npy", s);
      }
      continue;
    }
    let info = null;
    try {
      info = await parseDicom(buffer);
    } catch (e) {
      if (!(e instanceof NotDicomError)) throw e;
      if (fromFolder) {
        skipped++;
        continue;
      }
    }
    if (info && info.MediaStorageSOPClassUID === DICOMDIR_CLASS) {
      skipped++;
      continue;
    }
    const s = blankSlice(name, "dicom", new Uint8Array(buffer));
    s.info = info;
    if (info) {
      try {
        const img = decodeHu(info);
        if (img) {
          s.input = img;
          s.inputSource = "page";
        }
      } catch {
        // Left to the server.
      }
      info.bytes = null; // the parsed copy is not needed any more
    }
    const series = info && info.SeriesInstanceUID;
    const label = info
      ? `${info.SeriesDescription || "CT series"}${info.SeriesNumber != null ? ` #${info.SeriesNumber}` : ""}`
      : "Other files";
    add(series ? `dicom:${series}` : info ? "dicom:" : "other", label, "dicom", s);
  }
  const out = [];
  for (const g of groups.values()) {
    g.slices.sort(compareSlices);
    out.push({
      id: state.nextId++,
      label: `${g.label} (${g.slices.length} slice${g.slices.length > 1 ? "s" : ""})`,
      kind: g.kind,
      slices: g.slices,
      reference: null,
    });
  }
  return { series: out, skipped };
}

function blankSlice(name, kind, body) {
  return {
    name,
    kind,
    body,
    info: null,
    input: null,
    inputSource: null,
    output: null,
    derived: null,
    outKey: null,
    errKey: null,
    error: null,
    noiseIn: null,
    noiseOut: null,
    ms: null,
    evals: new Map(),
    queued: new Set(),
    order: null,
  };
}

function compareSlices(a, b) {
  if (a.order != null && b.order != null) return a.order - b.order;
  const pa = a.info && slicePosition(a.info);
  const pb = b.info && slicePosition(b.info);
  if (pa != null && pb != null && pa !== pb) return pa - pb;
  const ia = a.info && a.info.InstanceNumber;
  const ib = b.info && b.info.InstanceNumber;
  if (typeof ia === "number" && typeof ib === "number" && ia !== ib) return ia - ib;
  return naturalCompare(a.name, b.name);
}

async function openFiles(files, fromFolder) {
  if (!files.length) return;
  setStatus(`Reading ${files.length} file${files.length > 1 ? "s" : ""}…`);
  const { series, skipped } = await readFiles(files, fromFolder);
  if (skipped) addError(`${skipped} file${skipped > 1 ? "s" : ""}`, "skipped: not DICOM images or .npy arrays (DICOMDIR, notes, ...)");
  if (!series.length) {
    setStatus("Nothing to denoise in what was opened.");
    return;
  }
  state.series.push(...series);
  refreshSeriesList();
  selectSeries(series[0]);
  for (const s of series.slice(1)) ensure(s);
}

// Files from a drop: folders walked (webkitGetAsEntry), each file with its path.
async function droppedFiles(dt) {
  const entries = [...dt.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return { files: [...dt.files], folder: false };
  const files = [];
  let folder = false;
  const walk = async (entry, path) => {
    if (entry.isFile) {
      const f = await new Promise((res, rej) => entry.file(res, rej));
      f.relPath = path + f.name;
      files.push(f);
    } else if (entry.isDirectory) {
      folder = true;
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, `${path}${entry.name}/`);
      }
    }
  };
  for (const e of entries) await walk(e, "");
  return { files, folder };
}

// ---------------------------------------------------------------- the work queue

function enqueue(task) {
  if (state.running === 0 && state.queue.length === 0) {
    state.batch = { done: 0, total: 0, started: performance.now() };
  }
  state.batch.total++;
  state.queue.push(task);
}

// Queues what the series still needs at the current model and strength.
function ensure(series) {
  if (!state.model) return;
  const k = key();
  for (const s of series.slices) {
    if (s.outKey !== k && s.errKey !== k && !s.queued.has(`d${k}`)) {
      s.queued.add(`d${k}`);
      enqueue({ type: "denoise", series, slice: s, key: k });
    }
    const ref = series.reference && series.reference[series.slices.indexOf(s)];
    if (ref && !s.evals.has(k) && !s.queued.has(`e${k}`) && s.evalErrKey !== k) {
      s.queued.add(`e${k}`);
      enqueue({ type: "evaluate", series, slice: s, ref, key: k });
    }
  }
  pump();
}

function pump() {
  while (!state.paused && state.running < CONCURRENCY && state.queue.length) {
    // The series on screen first.
    let i = state.queue.findIndex((t) => t.series === state.current);
    if (i < 0) i = 0;
    const [task] = state.queue.splice(i, 1);
    state.running++;
    run(task).finally(() => {
      state.running--;
      pump();
      showProgress();
    });
  }
  showProgress();
}

async function run(task) {
  const { slice: s, key: k } = task;
  const [model, strengthText] = k.split("|");
  const strength = Number(strengthText);
  const tag = `${task.type[0]}${k}`;
  let again = false;
  try {
    if (task.type === "denoise") {
      const onBusy = (sec, attempt) => {
        state.busyNote = `Server busy (queue full): retrying ${s.name} in ${sec} s, attempt ${attempt + 1} of ${BUSY_RETRIES + 1}…`;
        showProgress();
      };
      const r = await denoise(s.body, s.kind, model, strength, onBusy);
      const output = s.kind === "npy" ? npyImage(r.bytes) : await dicomImage(r.bytes);
      if (!s.input && s.kind === "dicom") {
        // Pixels the page cannot decode (compressed): the server's decoding, at strength 0.
        const raw = await denoise(s.body, "dicom", model, 0, onBusy);
        s.input = await dicomImage(raw.bytes);
        s.inputSource = "server";
      }
      if (k !== key()) return; // the model or strength changed meanwhile
      Object.assign(s, {
        output,
        derived: s.kind === "dicom" ? r.bytes : null,
        outKey: k,
        error: null,
        noiseIn: r.noiseIn,
        noiseOut: r.noiseOut,
        ms: r.ms,
        version: r.version,
        device: r.device,
      });
    } else {
      const report = await evaluate(s.body, s.kind, task.ref.body, task.ref.kind, model, strength);
      s.evals.set(k, report);
    }
    state.busyNote = "";
  } catch (e) {
    state.busyNote = "";
    if (e instanceof ApiError && e.status === 401) {
      // Wait for a (new) token, then run it again.
      again = true;
      state.queue.unshift(task);
      askToken(describe(e));
      return;
    }
    if (k === key()) {
      const words = describe(e);
      if (task.type === "denoise") {
        s.error = words;
        s.errKey = k;
      } else {
        s.evalErrKey = k;
      }
      addError(task.type === "denoise" ? s.name : `${s.name} (evaluation)`, words);
    }
  } finally {
    if (!again) {
      s.queued.delete(tag);
      state.batch.done = Math.min(state.batch.done + 1, state.batch.total);
    }
    if (task.series === state.current) showSlice();
  }
}

function npyImage(bytes) {
  const a = parseNpy(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  return { width: a.shape[1], height: a.shape[0], hu: a.data };
}

async function dicomImage(bytes) {
  const info = await parseDicom(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  const img = decodeHu(info);
  if (!img) throw new Error("the server's DICOM answer has no pixels the page can read");
  return img;
}

function showProgress() {
  const { done, total, started } = state.batch;
  const busy = state.running > 0 || state.queue.length > 0;
  const bar = $("progress");
  bar.max = Math.max(total, 1);
  bar.value = busy ? done : Math.max(total, 1);
  document.body.dataset.busy = busy ? "1" : "0";
  if (state.paused) setStatus("Waiting for the access token…");
  else if (state.busyNote) setStatus(state.busyNote);
  else if (busy) setStatus(`Denoising: ${done} / ${total} done…`);
  else if (total) setStatus(`Done: ${total} request${total > 1 ? "s" : ""} in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
}

// ---------------------------------------------------------------- series and slices

function refreshSeriesList() {
  const sel = $("series");
  sel.replaceChildren(
    ...state.series.map((s) => {
      const o = document.createElement("option");
      o.value = String(s.id);
      o.textContent = s.label;
      return o;
    }),
  );
  sel.hidden = state.series.length < 2;
  if (state.current) sel.value = String(state.current.id);
}

function selectSeries(series) {
  state.current = series;
  state.slice = 0;
  $("series").value = String(series.id);
  $("slice").max = String(series.slices.length);
  $("slice").value = "1";
  $("reference").disabled = false;
  ensure(series);
  showSlice();
}

function setSlice(i) {
  const s = state.current;
  if (!s) return;
  state.slice = Math.min(Math.max(i, 0), s.slices.length - 1);
  $("slice").value = String(state.slice + 1);
  showSlice();
}

const fmt = (v, d = 1) => (v == null || !Number.isFinite(v) ? "—" : v.toFixed(d));

function showSlice() {
  const series = state.current;
  if (!series) return;
  const s = series.slices[state.slice];
  const k = key();
  const out = s.outKey === k ? s.output : null;
  viewer.setImages(s.input, out);
  const n = series.slices.length;
  $("slice-label").textContent = `${state.slice + 1} / ${n}`;
  $("label-in").textContent = `Input · ${s.name}${s.inputSource === "server" ? " (decoded by the server)" : ""}`;
  $("label-out").textContent = outLabel(s);
  $("stat-noise-in").textContent = s.outKey === k && s.noiseIn != null ? `${fmt(s.noiseIn)} HU` : "—";
  $("stat-noise-out").textContent = s.outKey === k && s.noiseOut != null ? `${fmt(s.noiseOut)} HU` : "—";
  $("stat-time").textContent = s.outKey === k && s.ms != null ? `${Math.round(s.ms)} ms` : "—";
  $("stat-device").textContent = s.outKey === k && s.device ? s.device : "—";
  const done = series.slices.filter((x) => x.outKey === k);
  $("download-zip").disabled = !done.some((x) => x.derived);
  $("download-npy").disabled = done.length === 0;
  showSliceTable(series);
  showMetrics(series, s);
  $("viewer").dataset.slice = String(state.slice + 1);
  $("viewer").dataset.ready = s.input && out ? "1" : "0";
}

function outLabel(s) {
  const k = key();
  if (s.outKey === k) {
    const m = state.models.find((x) => x.name === state.model);
    return `${modeLabel()} · ${state.model} ${s.version || (m && m.version) || ""} · strength ${Number(state.strength).toFixed(2)}`;
  }
  return s.errKey === k ? "No result for this slice (see Problems)" : "Denoising…";
}

function modeLabel() {
  return { output: "Denoised", difference: "Difference (input − output)", swipe: "Swipe: denoised | input", flicker: viewer.flickerInput ? "Flicker: input" : "Flicker: denoised" }[viewer.mode];
}

function showSliceTable(series) {
  const k = key();
  const rows = series.slices.map((s, i) => {
    const tr = document.createElement("tr");
    if (i === state.slice) tr.className = "current";
    const ok = s.outKey === k;
    const cells = [
      String(i + 1),
      s.name,
      ok ? fmt(s.noiseIn) : "—",
      ok ? fmt(s.noiseOut) : "—",
      ok ? String(Math.round(s.ms)) : "—",
      ok ? "done" : s.errKey === k ? "failed" : "waiting",
    ];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.append(td);
    }
    tr.addEventListener("click", () => setSlice(i));
    return tr;
  });
  $("slices-body").replaceChildren(...rows);
  const times = series.slices.filter((s) => s.outKey === k).map((s) => s.ms);
  $("slices-summary").textContent = times.length
    ? `${times.length} / ${series.slices.length} slices, mean ${Math.round(times.reduce((a, b) => a + b, 0) / times.length)} ms per slice`
    : `${series.slices.length} slices`;
}

function showMetrics(series, s) {
  const k = key();
  const box = $("metrics-body");
  if (!series.reference) {
    box.replaceChildren();
    $("metrics-note").textContent = "Add the full-dose slices of this series to compare.";
    return;
  }
  const reports = series.slices.map((x) => x.evals.get(k)).filter(Boolean);
  const here = s.evals.get(k);
  $("metrics-note").textContent = `${reports.length} / ${series.slices.length} slices evaluated; this slice${here ? "" : " (waiting)"} and the series mean.`;
  const rows = [];
  const windows = (here || reports[0] || { windows: [] }).windows;
  windows.forEach((w, wi) => {
    const mean = (pick) => {
      const v = reports.map((r) => pick(r.windows[wi])).filter((x) => x != null && Number.isFinite(x));
      return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
    };
    const psnr = (q) => (q.psnr == null ? Infinity : q.psnr);
    for (const [name, pick, d] of [
      ["PSNR dB", (x, side) => psnr(x[side]), 2],
      ["SSIM", (x, side) => x[side].ssim, 4],
      ["RMSE HU", (x, side) => x[side].rmse_hu, 2],
    ]) {
      const tr = document.createElement("tr");
      const cells = [
        `${name} [${w.window[0]}, ${w.window[1]}]`,
        here ? fmtQ(pick(here.windows[wi], "input"), d) : "…",
        here ? fmtQ(pick(here.windows[wi], "output"), d) : "…",
        fmtQ(mean((x) => pick(x, "input")), d),
        fmtQ(mean((x) => pick(x, "output")), d),
      ];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.append(td);
      }
      tr.dataset.metric = name.split(" ")[0].toLowerCase();
      tr.dataset.window = w.window.join(",");
      rows.push(tr);
    }
  });
  box.replaceChildren(...rows);
}

const fmtQ = (v, d) => (v === Infinity ? "∞ (identical)" : fmt(v, d));

async function addReference(files) {
  const series = state.current;
  if (!series || !files.length) return;
  const { series: refs } = await readFiles(files, false);
  const slices = refs.flatMap((r) => r.slices);
  if (slices.length !== series.slices.length) {
    addError("Reference", `it has ${slices.length} slice${slices.length === 1 ? "" : "s"}, the series ${series.slices.length}: add the full-dose slices of the same positions`);
    return;
  }
  slices.sort(compareSlices);
  series.reference = slices;
  for (const s of series.slices) s.evals.clear();
  ensure(series);
  showSlice();
}

// ---------------------------------------------------------------- downloads

function safeName(s) {
  return s.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^_+|_+$/g, "").slice(0, 60) || "series";
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
}

function downloadZip() {
  const series = state.current;
  const k = key();
  const done = series.slices.filter((s) => s.outKey === k && s.derived);
  const base = `ldct_${safeName(state.model)}_s${Number(state.strength).toFixed(2)}_${safeName(series.label)}`;
  const files = done.map((s, i) => ({ name: `${base}/IM${String(i + 1).padStart(4, "0")}.dcm`, data: s.derived }));
  save(zipStore(files), `${base}.zip`);
}

function downloadNpy() {
  const series = state.current;
  const k = key();
  const done = series.slices.filter((s) => s.outKey === k);
  const base = `ldct_${safeName(state.model)}_s${Number(state.strength).toFixed(2)}_${safeName(series.label)}`;
  const [w, h] = [done[0].output.width, done[0].output.height];
  if (done.every((s) => s.output.width === w && s.output.height === h)) {
    const vol = new Float32Array(done.length * w * h);
    done.forEach((s, i) => vol.set(s.output.hu, i * w * h));
    const shape = done.length === 1 ? [h, w] : [done.length, h, w];
    save(new Blob([encodeNpy(shape, vol)], { type: "application/octet-stream" }), `${base}.npy`);
  } else {
    // Slices of different sizes: one .npy each, in a zip.
    const files = done.map((s, i) => ({ name: `${base}/${String(i + 1).padStart(4, "0")}.npy`, data: encodeNpy([s.output.height, s.output.width], s.output.hu) }));
    save(zipStore(files), `${base}_npy.zip`);
  }
}

// ---------------------------------------------------------------- wiring

function onProbe(p) {
  const show = (id, v, x) => {
    const el = $(id);
    el.textContent = p ? `x ${p.x}, y ${p.y}: ${v == null ? "—" : `${Math.round(v)} HU`}${x || ""}` : "—";
    el.dataset.x = p ? String(p.x) : "";
    el.dataset.y = p ? String(p.y) : "";
    el.dataset.hu = p && v != null ? String(v) : "";
  };
  show("probe-in", p && p.input);
  const d = p && p.input != null && p.output != null ? ` (input − output ${Math.round(p.input - p.output)} HU)` : "";
  show("probe-out", p && p.output, d);
}

function onViewChange() {
  $("wl").textContent = `W ${viewer.width} L ${viewer.center}`;
  for (const b of document.querySelectorAll("[data-preset]")) b.classList.toggle("active", b.dataset.preset === viewer.preset);
  $("zoom-label").textContent = `${Math.round(viewer.zoom * 100)} %`;
  if (state.current) $("label-out").textContent = outLabel(state.current.slices[state.slice]);
}

const viewer = new Viewer(
  { input: $("view-in"), output: $("view-out") },
  { onProbe, onSlice: (step) => setSlice(state.slice + step), onChange: onViewChange },
);

function wire() {
  $("token-form").addEventListener("submit", submitToken);
  $("files").addEventListener("change", async (e) => {
    await openFiles([...e.target.files], false);
    e.target.value = "";
  });
  $("folder").addEventListener("change", async (e) => {
    await openFiles([...e.target.files], true);
    e.target.value = "";
  });
  $("reference").addEventListener("change", async (e) => {
    await addReference([...e.target.files]);
    e.target.value = "";
  });
  $("model").addEventListener("change", (e) => {
    state.model = e.target.value;
    for (const s of state.series) clearFailures(s);
    if (state.current) ensure(state.current);
    showSlice();
  });
  let debounce = null;
  $("strength").addEventListener("input", (e) => {
    state.strength = Number(e.target.value);
    state.strengthSet = true;
    $("strength-value").textContent = state.strength.toFixed(2);
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      if (state.current) ensure(state.current);
      showSlice();
    }, 250);
  });
  $("series").addEventListener("change", (e) => {
    const s = state.series.find((x) => String(x.id) === e.target.value);
    if (s) selectSeries(s);
  });
  $("slice").addEventListener("input", (e) => setSlice(Number(e.target.value) - 1));
  for (const b of document.querySelectorAll("[data-preset]")) b.addEventListener("click", () => viewer.setPreset(b.dataset.preset));
  $("mode").addEventListener("change", (e) => {
    viewer.setMode(e.target.value);
    $("swipe-box").hidden = e.target.value !== "swipe";
    $("diff-box").hidden = e.target.value !== "difference";
    showSlice();
  });
  $("swipe").addEventListener("input", (e) => {
    viewer.swipe = Number(e.target.value);
    viewer.render();
  });
  $("diff-width").addEventListener("input", (e) => {
    const v = Number(e.target.value);
    if (v > 0) {
      viewer.diffWidth = 2 * v;
      viewer.render();
    }
  });
  $("fit").addEventListener("click", () => viewer.resetView());
  $("zoom-in").addEventListener("click", () => viewer.setZoom(viewer.zoom * 1.25));
  $("zoom-out").addEventListener("click", () => viewer.setZoom(viewer.zoom / 1.25));
  $("download-zip").addEventListener("click", downloadZip);
  $("download-npy").addEventListener("click", downloadNpy);
  $("retry").addEventListener("click", () => {
    clearErrors();
    for (const s of state.series) clearFailures(s);
    if (state.current) ensure(state.current);
  });
  $("forget-token").addEventListener("click", () => {
    setToken("");
    askToken("Token forgotten. Enter one to continue.");
  });
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    const presets = Object.keys(PRESETS);
    if (e.key === "ArrowDown" || e.key === "PageDown") setSlice(state.slice + 1);
    else if (e.key === "ArrowUp" || e.key === "PageUp") setSlice(state.slice - 1);
    else if (e.key === "+" || e.key === "=") viewer.setZoom(viewer.zoom * 1.25);
    else if (e.key === "-") viewer.setZoom(viewer.zoom / 1.25);
    else if (e.key === "0") viewer.resetView();
    else if (/^[1-5]$/.test(e.key)) viewer.setPreset(presets[Number(e.key) - 1]);
    else return;
    e.preventDefault();
  });
  // Drop anywhere on the page.
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (e) => {
    if (e.target === document.documentElement || e.relatedTarget === null) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", async (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const { files, folder } = await droppedFiles(e.dataTransfer);
    await openFiles(files, folder);
  });
  window.addEventListener("error", (e) => addError("Page", `unexpected error: ${e.message}`));
  window.addEventListener("unhandledrejection", (e) => addError("Page", `unexpected error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));
}

function clearFailures(series) {
  for (const s of series.slices) {
    s.errKey = null;
    s.evalErrKey = null;
    s.error = null;
  }
}

async function start() {
  wire();
  onViewChange();
  $("forget-token").hidden = !getToken();
  try {
    await loadModels();
    setStatus(state.models.length ? "Drop CT slices, a series folder or .npy slices here, or open them above." : $("status-text").textContent);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      askToken(getToken() ? describe(e) : "This server needs an access token (--api-token).");
    } else {
      setStatus(describe(e));
    }
  }
  document.body.dataset.started = "1";
}

start();

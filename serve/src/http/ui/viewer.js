// Two synchronised canvas viewports: the input on the left, the denoised output (or the
// difference, a swipe or a flicker between the two) on the right. One view state (zoom,
// pan, window / level) drives both; images are float32 HU.

export const PRESETS = {
  soft: { label: "Soft tissue", width: 400, center: 40 },
  lung: { label: "Lung", width: 1500, center: -600 },
  bone: { label: "Bone", width: 2500, center: 480 },
  brain: { label: "Brain", width: 80, center: 40 },
  liver: { label: "Liver", width: 150, center: 90 },
};

export const MODES = ["output", "difference", "swipe", "flicker"];

// Grey levels of an image through a window (a cached canvas of the image's size).
function windowed(img, center, width) {
  const key = `${center}|${width}`;
  if (img._grey && img._grey.key === key) return img._grey.canvas;
  const { width: w, height: h, hu } = img;
  const canvas = img._grey ? img._grey.canvas : document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(w, h);
  const lo = center - width / 2;
  const k = 255 / Math.max(width, 1e-6);
  const px = data.data;
  for (let i = 0, j = 0; i < hu.length; i++, j += 4) {
    let g = (hu[i] - lo) * k;
    g = g < 0 ? 0 : g > 255 ? 255 : g;
    px[j] = px[j + 1] = px[j + 2] = g;
    px[j + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  img._grey = { key, canvas };
  return canvas;
}

/** input - output in HU (same size), cached on the output. */
export function difference(input, output) {
  if (!input || !output || input.width !== output.width || input.height !== output.height) return null;
  if (output._diff && output._diff.of === input) return output._diff.img;
  const hu = new Float32Array(input.hu.length);
  for (let i = 0; i < hu.length; i++) hu[i] = input.hu[i] - output.hu[i];
  const img = { width: input.width, height: input.height, hu };
  output._diff = { of: input, img };
  return img;
}

export class Viewer {
  /**
   * canvases: {input, output}; callbacks: onProbe({x, y, input, output} | null),
   * onSlice(step), onChange() (window, zoom or mode changed).
   */
  constructor(canvases, callbacks) {
    this.canvases = canvases;
    this.cb = callbacks;
    this.input = null;
    this.output = null;
    this.center = PRESETS.soft.center;
    this.width = PRESETS.soft.width;
    this.preset = "soft";
    this.mode = "output";
    this.swipe = 0.5;
    this.diffWidth = 200;
    this.flickerInput = false;
    this.flickerTimer = null;
    this.zoom = 1;
    this.cx = null; // view centre in image pixels
    this.cy = null;
    this.dims = null;
    this.drag = null;
    for (const [which, c] of Object.entries(canvases)) this.attach(which, c);
    const ro = new ResizeObserver(() => this.render());
    for (const c of Object.values(canvases)) ro.observe(c);
  }

  setImages(input, output) {
    this.input = input;
    this.output = output;
    const ref = input || output;
    const dims = ref ? `${ref.width}x${ref.height}` : null;
    if (dims !== this.dims) {
      // Another size: fit the new image.
      this.dims = dims;
      this.resetView(false);
    }
    this.render();
  }

  resetView(render = true) {
    const ref = this.input || this.output;
    this.zoom = 1;
    this.cx = ref ? ref.width / 2 : 0;
    this.cy = ref ? ref.height / 2 : 0;
    if (render) {
      this.render();
      this.cb.onChange();
    }
  }

  setWindow(center, width, preset = null) {
    this.center = Math.round(center);
    this.width = Math.max(1, Math.round(width));
    this.preset = preset;
    this.render();
    this.cb.onChange();
  }

  setPreset(name) {
    const p = PRESETS[name];
    if (p) this.setWindow(p.center, p.width, name);
  }

  setMode(mode) {
    if (!MODES.includes(mode)) return;
    this.mode = mode;
    clearInterval(this.flickerTimer);
    this.flickerTimer = null;
    this.flickerInput = false;
    if (mode === "flicker") {
      this.flickerTimer = setInterval(() => {
        this.flickerInput = !this.flickerInput;
        this.renderOne("output");
        this.cb.onChange();
      }, 600);
    }
    this.render();
    this.cb.onChange();
  }

  setZoom(zoom, anchor = null) {
    const z = Math.min(Math.max(zoom, 0.1), 64);
    if (anchor) {
      // Keep the image point under the cursor where it is.
      const s0 = this.scale(anchor.canvas);
      const ix = (anchor.x - anchor.canvas.width / 2) / s0 + this.cx;
      const iy = (anchor.y - anchor.canvas.height / 2) / s0 + this.cy;
      this.zoom = z;
      const s1 = this.scale(anchor.canvas);
      this.cx = ix - (anchor.x - anchor.canvas.width / 2) / s1;
      this.cy = iy - (anchor.y - anchor.canvas.height / 2) / s1;
    } else {
      this.zoom = z;
    }
    this.render();
    this.cb.onChange();
  }

  // Canvas pixels per image pixel.
  scale(canvas) {
    const ref = this.input || this.output;
    if (!ref) return 1;
    return Math.min(canvas.width / ref.width, canvas.height / ref.height) * this.zoom;
  }

  // The image pixel under a canvas point, or null outside the image.
  pixelAt(canvas, x, y) {
    const ref = this.input || this.output;
    if (!ref) return null;
    const s = this.scale(canvas);
    const ix = Math.floor((x - canvas.width / 2) / s + this.cx);
    const iy = Math.floor((y - canvas.height / 2) / s + this.cy);
    if (ix < 0 || iy < 0 || ix >= ref.width || iy >= ref.height) return null;
    return { x: ix, y: iy };
  }

  valueAt(img, p) {
    return img && p && p.x < img.width && p.y < img.height ? img.hu[p.y * img.width + p.x] : null;
  }

  fit(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
  }

  render() {
    this.renderOne("input");
    this.renderOne("output");
  }

  draw(ctx, canvas, img, center, width) {
    const s = this.scale(canvas);
    const x0 = canvas.width / 2 - this.cx * s;
    const y0 = canvas.height / 2 - this.cy * s;
    ctx.imageSmoothingEnabled = s < 1;
    ctx.drawImage(windowed(img, center, width), x0, y0, img.width * s, img.height * s);
  }

  renderOne(which) {
    const canvas = this.canvases[which];
    this.fit(canvas);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const { center, width } = this;
    if (which === "input") {
      if (this.input) this.draw(ctx, canvas, this.input, center, width);
    } else if (this.mode === "difference") {
      const d = difference(this.input, this.output);
      if (d) this.draw(ctx, canvas, d, 0, this.diffWidth);
    } else if (this.mode === "flicker") {
      const img = this.flickerInput ? this.input : this.output;
      if (img) this.draw(ctx, canvas, img, center, width);
    } else {
      if (this.output) this.draw(ctx, canvas, this.output, center, width);
      if (this.mode === "swipe" && this.input && this.output) {
        const x = Math.round(canvas.width * this.swipe);
        ctx.save();
        ctx.beginPath();
        ctx.rect(x, 0, canvas.width - x, canvas.height);
        ctx.clip();
        ctx.fillRect(x, 0, canvas.width - x, canvas.height);
        this.draw(ctx, canvas, this.input, center, width);
        ctx.restore();
        ctx.fillStyle = "#ffd400";
        ctx.fillRect(x - 1, 0, 2, canvas.height);
      }
    }
    canvas.dataset.rendered = String((parseInt(canvas.dataset.rendered || "0", 10) || 0) + 1);
  }

  probe(canvas, ev) {
    // Canvas pixels from the pointer, inside the border.
    const r = canvas.getBoundingClientRect();
    const x = ((ev.clientX - r.left - canvas.clientLeft) * canvas.width) / Math.max(canvas.clientWidth, 1);
    const y = ((ev.clientY - r.top - canvas.clientTop) * canvas.height) / Math.max(canvas.clientHeight, 1);
    return { x, y, p: this.pixelAt(canvas, x, y) };
  }

  attach(which, canvas) {
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("dblclick", () => this.resetView());
    canvas.addEventListener("pointerdown", (e) => {
      const pan = e.button === 1 || e.button === 2 || e.shiftKey;
      if (e.button !== 0 && !pan) return;
      canvas.setPointerCapture(e.pointerId);
      this.drag = { pan, x: e.clientX, y: e.clientY, center: this.center, width: this.width, cx: this.cx, cy: this.cy };
      e.preventDefault();
    });
    const end = (e) => {
      if (this.drag && canvas.hasPointerCapture(e.pointerId)) canvas.releasePointerCapture(e.pointerId);
      this.drag = null;
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointermove", (e) => {
      const d = this.drag;
      if (d) {
        const dx = e.clientX - d.x;
        const dy = e.clientY - d.y;
        if (d.pan) {
          const s = this.scale(canvas) / (window.devicePixelRatio || 1);
          this.cx = d.cx - dx / s;
          this.cy = d.cy - dy / s;
          this.render();
        } else {
          // Right: wider window; down: higher level (as radiology viewers do).
          const k = Math.max(d.width / 256, 0.25);
          this.setWindow(d.center + dy * k, Math.max(1, d.width + dx * k * 2));
          return;
        }
      }
      const { p } = this.probe(canvas, e);
      this.cb.onProbe(p ? { ...p, input: this.valueAt(this.input, p), output: this.valueAt(this.output, p) } : null);
    });
    canvas.addEventListener("pointerleave", () => this.cb.onProbe(null));
    canvas.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        if (e.ctrlKey || e.metaKey || e.altKey) {
          const { x, y } = this.probe(canvas, e);
          this.setZoom(this.zoom * Math.pow(1.0015, -e.deltaY), { canvas, x, y });
        } else if (e.deltaY !== 0) {
          this.cb.onSlice(e.deltaY > 0 ? 1 : -1);
        }
      },
      { passive: false },
    );
  }
}

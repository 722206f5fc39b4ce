// NumPy .npy arrays: read (2-D slices or 3-D stacks of numbers) and write float32.

export class NpyError extends Error {}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** Whether the bytes start with the .npy magic. */
export function isNpy(buffer) {
  const b = new Uint8Array(buffer, 0, Math.min(6, buffer.byteLength));
  return b.length === 6 && MAGIC.every((m, i) => b[i] === m);
}

const DTYPES = {
  f4: [4, (v, o, le) => v.getFloat32(o, le)],
  f8: [8, (v, o, le) => v.getFloat64(o, le)],
  i1: [1, (v, o) => v.getInt8(o)],
  u1: [1, (v, o) => v.getUint8(o)],
  i2: [2, (v, o, le) => v.getInt16(o, le)],
  u2: [2, (v, o, le) => v.getUint16(o, le)],
  i4: [4, (v, o, le) => v.getInt32(o, le)],
  u4: [4, (v, o, le) => v.getUint32(o, le)],
};

/**
 * Parses a .npy file: {shape, dtype (as written, e.g. "<f4"), data (Float32Array, C
 * order)}. Throws NpyError when it is not a readable numeric array.
 */
export function parseNpy(buffer) {
  if (!isNpy(buffer)) throw new NpyError("not a .npy file (no \\x93NUMPY magic)");
  const b = new Uint8Array(buffer);
  const v = new DataView(buffer);
  const major = b[6];
  let headerLen;
  let start;
  if (major === 1) {
    headerLen = v.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    headerLen = v.getUint32(8, true);
    start = 12;
  } else {
    throw new NpyError(`unknown .npy version ${major}`);
  }
  const header = new TextDecoder("latin1").decode(b.subarray(start, start + headerLen));
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shapeM = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeM) throw new NpyError("unreadable .npy header");
  const shape = shapeM[1]
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((s) => parseInt(s, 10));
  const dtype = descr[1];
  const kind = dtype.slice(1);
  if (!(kind in DTYPES)) throw new NpyError(`.npy dtype ${dtype} is not a number type this page reads`);
  const [size, get] = DTYPES[kind];
  const le = dtype[0] !== ">";
  const count = shape.reduce((a, n) => a * n, 1);
  const offset = start + headerLen;
  if (offset + count * size > b.length) throw new NpyError(".npy data is shorter than its shape says");
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) data[i] = get(v, offset + i * size, le);
  if (fortran[1] === "True" && shape.length > 1) return { shape, dtype, data: fromFortran(data, shape) };
  return { shape, dtype, data };
}

function fromFortran(data, shape) {
  const out = new Float32Array(data.length);
  const n = shape.length;
  const idx = new Array(n).fill(0);
  for (let f = 0; f < data.length; f++) {
    // f walks Fortran order (first index fastest); write at its C-order offset.
    let c = 0;
    for (let k = 0; k < n; k++) c = c * shape[k] + idx[k];
    out[c] = data[f];
    for (let k = 0; k < n; k++) {
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
  return out;
}

/** A little-endian float32 .npy file (version 1.0) of `data` in C order. */
export function encodeNpy(shape, data) {
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(", ");
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims}), }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const out = new Uint8Array(10 + header.length + data.length * 4);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[10 + i] = header.charCodeAt(i);
  const v = new DataView(out.buffer, 10 + header.length);
  for (let i = 0; i < data.length; i++) v.setFloat32(i * 4, data[i], true);
  return out;
}

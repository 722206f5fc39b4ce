// A small DICOM Part 10 reader for the page: the attributes it needs to sort and label
// a series, and the pixels of uncompressed single-frame grayscale images as HU.
// Compressed pixel data (JPEG, JPEG 2000, RLE, ...) is not decoded here: the page asks
// the server for those pixels (a denoise at strength 0 returns the input's HU in an
// uncompressed derived instance).

export class NotDicomError extends Error {}

const TS = {
  IMPLICIT_LE: "1.2.840.10008.1.2",
  EXPLICIT_LE: "1.2.840.10008.1.2.1",
  DEFLATED_LE: "1.2.840.10008.1.2.1.99",
  EXPLICIT_BE: "1.2.840.10008.1.2.2",
};

// VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length.
const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"]);

const tag = (g, e) => ((g << 16) | e) >>> 0;
const ITEM = tag(0xfffe, 0xe000);
const ITEM_END = tag(0xfffe, 0xe00d);
const SEQ_END = tag(0xfffe, 0xe0dd);
const PIXEL_DATA = tag(0x7fe0, 0x0010);

// The attributes read, by keyword: [tag, kind] (kind: "str" text, "num" numbers of a
// DS / IS string, "us" unsigned short).
const WANTED = {
  TransferSyntaxUID: [tag(0x0002, 0x0010), "str"],
  MediaStorageSOPClassUID: [tag(0x0002, 0x0002), "str"],
  ImageType: [tag(0x0008, 0x0008), "str"],
  SOPClassUID: [tag(0x0008, 0x0016), "str"],
  SOPInstanceUID: [tag(0x0008, 0x0018), "str"],
  Modality: [tag(0x0008, 0x0060), "str"],
  SeriesDescription: [tag(0x0008, 0x103e), "str"],
  PatientName: [tag(0x0010, 0x0010), "str"],
  StudyInstanceUID: [tag(0x0020, 0x000d), "str"],
  SeriesInstanceUID: [tag(0x0020, 0x000e), "str"],
  SeriesNumber: [tag(0x0020, 0x0011), "num"],
  InstanceNumber: [tag(0x0020, 0x0013), "num"],
  ImagePositionPatient: [tag(0x0020, 0x0032), "num"],
  ImageOrientationPatient: [tag(0x0020, 0x0037), "num"],
  SliceLocation: [tag(0x0020, 0x1041), "num"],
  SamplesPerPixel: [tag(0x0028, 0x0002), "us"],
  PhotometricInterpretation: [tag(0x0028, 0x0004), "str"],
  NumberOfFrames: [tag(0x0028, 0x0008), "num"],
  Rows: [tag(0x0028, 0x0010), "us"],
  Columns: [tag(0x0028, 0x0011), "us"],
  PixelSpacing: [tag(0x0028, 0x0030), "num"],
  BitsAllocated: [tag(0x0028, 0x0100), "us"],
  BitsStored: [tag(0x0028, 0x0101), "us"],
  PixelRepresentation: [tag(0x0028, 0x0103), "us"],
  WindowCenter: [tag(0x0028, 0x1050), "num"],
  WindowWidth: [tag(0x0028, 0x1051), "num"],
  RescaleIntercept: [tag(0x0028, 0x1052), "num"],
  RescaleSlope: [tag(0x0028, 0x1053), "num"],
};
const BY_TAG = new Map(Object.entries(WANTED).map(([k, [t, kind]]) => [t, [k, kind]]));

const ascii = new TextDecoder("latin1");

function text(bytes, pos, len) {
  return ascii.decode(bytes.subarray(pos, pos + len)).replace(/[\0 ]+$/, "").trim();
}

// A data set without preamble: group 0x0002 or 0x0008 first, explicit (a VR of two
// upper-case letters) or implicit VR, little endian.
function guessBare(b) {
  const g = b[0] | (b[1] << 8);
  if (g !== 0x0002 && g !== 0x0008) return null;
  const vr = String.fromCharCode(b[4], b[5]);
  return /^[A-Z]{2}$/.test(vr) ? TS.EXPLICIT_LE : TS.IMPLICIT_LE;
}

class Reader {
  constructor(bytes, littleEndian, explicit) {
    this.b = bytes;
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.le = littleEndian;
    this.explicit = explicit;
  }

  need(pos, n) {
    if (pos + n > this.b.length) throw new NotDicomError("the file ends inside a DICOM element");
  }

  u16(pos) {
    this.need(pos, 2);
    return this.v.getUint16(pos, this.le);
  }

  u32(pos) {
    this.need(pos, 4);
    return this.v.getUint32(pos, this.le);
  }

  // One element header at pos: {tag, vr, len, value (position), undefined length?}.
  header(pos) {
    const t = tag(this.u16(pos), this.u16(pos + 2));
    if (t === ITEM || t === ITEM_END || t === SEQ_END) {
      return { tag: t, vr: "", len: this.u32(pos + 4), value: pos + 8 };
    }
    if (!this.explicit) return { tag: t, vr: "", len: this.u32(pos + 4), value: pos + 8 };
    this.need(pos + 4, 2);
    const vr = String.fromCharCode(this.b[pos + 4], this.b[pos + 5]);
    if (!/^[A-Z]{2}$/.test(vr)) throw new NotDicomError(`no valid VR at byte ${pos}`);
    if (LONG_VRS.has(vr)) return { tag: t, vr, len: this.u32(pos + 8), value: pos + 12 };
    return { tag: t, vr, len: this.u16(pos + 6), value: pos + 8 };
  }

  // The end of an undefined-length value starting at pos (items up to the sequence
  // delimiter; each item's data set walked to its own delimiter).
  skipUndefined(pos, depth = 0) {
    if (depth > 32) throw new NotDicomError("sequences nested too deep");
    for (;;) {
      const h = this.header(pos);
      if (h.tag === SEQ_END) return h.value;
      if (h.tag !== ITEM) throw new NotDicomError(`expected a sequence item at byte ${pos}`);
      pos = h.len === 0xffffffff ? this.skipDataset(h.value, depth + 1) : h.value + h.len;
    }
  }

  skipDataset(pos, depth) {
    for (;;) {
      const h = this.header(pos);
      if (h.tag === ITEM_END) return h.value;
      pos = h.len === 0xffffffff ? this.skipUndefined(h.value, depth + 1) : h.value + h.len;
    }
  }
}

function readValue(r, kind, h) {
  r.need(h.value, h.len);
  if (kind === "us") return h.len >= 2 ? r.u16(h.value) : null;
  const s = text(r.b, h.value, h.len);
  if (kind === "str") return s;
  const nums = s.split("\\").map((x) => parseFloat(x)).filter((x) => Number.isFinite(x));
  return nums.length === 0 ? null : nums.length === 1 ? nums[0] : nums;
}

// Walks one level of a data set from pos, keeping the WANTED attributes in out, up to
// the pixel data (whose position it records) or the end. Stops at the end of group
// 0x0002 when metaOnly.
function walk(r, pos, out, metaOnly) {
  while (pos + 8 <= r.b.length) {
    if (metaOnly && r.u16(pos) !== 0x0002) return pos;
    const h = r.header(pos);
    if (h.tag === PIXEL_DATA) {
      out.pixelData = { offset: h.value, length: h.len, encapsulated: h.len === 0xffffffff };
      return r.b.length;
    }
    if (h.len === 0xffffffff) {
      pos = r.skipUndefined(h.value);
      continue;
    }
    const want = BY_TAG.get(h.tag);
    if (want && out[want[0]] === undefined) out[want[0]] = readValue(r, want[1], h);
    pos = h.value + h.len;
  }
  return pos;
}

// Inflates a deflated data set. Some writers leave bytes after the end of the deflate
// stream (a zero pad, a gzip trailer), which Chromium's DecompressionStream refuses,
// losing the output of the write that held them. So the tail is written a byte at a
// time, and the output of every write before the refused one is kept.
async function inflate(bytes) {
  const ds = new DecompressionStream("deflate-raw");
  const writer = ds.writable.getWriter();
  const reader = ds.readable.getReader();
  const chunks = [];
  let n = 0;
  const reading = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      chunks.push(value);
      n += value.length;
    }
  })();
  const tail = Math.max(0, bytes.length - 64);
  let failed = null;
  try {
    await writer.write(bytes.subarray(0, tail));
    for (let i = tail; i < bytes.length; i++) await writer.write(bytes.subarray(i, i + 1));
    await writer.close();
  } catch (e) {
    failed = e;
  }
  try {
    await reading;
  } catch (e) {
    failed = failed || e;
  }
  if (failed && n === 0) throw new NotDicomError(`cannot inflate the data set: ${failed.message}`);
  const out = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * Parses a DICOM file: {attributes by keyword, transferSyntax, bytes (the data set's
 * bytes, inflated when deflated), littleEndian, pixelData: {offset, length,
 * encapsulated}}. Throws NotDicomError when it is not DICOM.
 */
export async function parseDicom(buffer) {
  let bytes = new Uint8Array(buffer);
  const info = {};
  let pos;
  if (bytes.length >= 132 && text(bytes, 128, 4) === "DICM") {
    pos = walk(new Reader(bytes, true, true), 132, info, true);
  } else {
    const guess = bytes.length >= 8 ? guessBare(bytes) : null;
    if (guess === null) throw new NotDicomError("no DICM marker and no DICOM data set at the start");
    pos = 0;
    if ((bytes[0] | (bytes[1] << 8)) === 0x0002) pos = walk(new Reader(bytes, true, true), 0, info, true);
    if (!info.TransferSyntaxUID) info.TransferSyntaxUID = guess;
  }
  const ts = info.TransferSyntaxUID || TS.EXPLICIT_LE;
  info.transferSyntax = ts;
  if (ts === TS.DEFLATED_LE) {
    bytes = await inflate(bytes.subarray(pos));
    pos = 0;
  }
  const le = ts !== TS.EXPLICIT_BE;
  const r = new Reader(bytes, le, ts !== TS.IMPLICIT_LE);
  try {
    walk(r, pos, info, false);
  } catch (e) {
    if (!(e instanceof NotDicomError)) throw e;
    // A truncated tail after the attributes we need is the server's business.
    if (info.Rows === undefined) throw e;
    info.warning = e.message;
  }
  if (info.Rows === undefined && info.SOPClassUID === undefined && info.Modality === undefined) {
    throw new NotDicomError("no image attributes found");
  }
  info.bytes = bytes;
  info.littleEndian = le;
  return info;
}

/** Whether decodeHu can read this file's pixels (else the server decodes them). */
export function canDecode(info) {
  const frames = info.NumberOfFrames ?? 1;
  return (
    info.pixelData !== undefined &&
    !info.pixelData.encapsulated &&
    (info.SamplesPerPixel ?? 1) === 1 &&
    frames === 1 &&
    [8, 16, 32].includes(info.BitsAllocated) &&
    /^MONOCHROME[12]$/.test(info.PhotometricInterpretation ?? "MONOCHROME2") &&
    info.Rows > 0 &&
    info.Columns > 0 &&
    info.pixelData.length >= (info.Rows * info.Columns * info.BitsAllocated) / 8 &&
    info.bytes != null &&
    info.pixelData.offset + (info.Rows * info.Columns * info.BitsAllocated) / 8 <= info.bytes.length
  );
}

/** The pixels of an uncompressed grayscale slice as HU: {width, height, hu}. */
export function decodeHu(info) {
  if (!canDecode(info)) return null;
  const { Rows: h, Columns: w, BitsAllocated: ba } = info;
  const bs = Math.min(info.BitsStored ?? ba, ba);
  const signed = info.PixelRepresentation === 1;
  const slope = typeof info.RescaleSlope === "number" ? info.RescaleSlope : 1;
  const intercept = typeof info.RescaleIntercept === "number" ? info.RescaleIntercept : 0;
  const v = new DataView(info.bytes.buffer, info.bytes.byteOffset + info.pixelData.offset, (w * h * ba) / 8);
  const hu = new Float32Array(w * h);
  const step = ba / 8;
  const mask = bs >= 32 ? 0xffffffff : 2 ** bs - 1;
  const sign = 2 ** (bs - 1);
  for (let i = 0; i < w * h; i++) {
    let x;
    if (ba === 8) x = v.getUint8(i);
    else if (ba === 16) x = v.getUint16(i * step, info.littleEndian);
    else x = v.getUint32(i * step, info.littleEndian);
    x = bs >= 32 ? x : x & mask;
    if (signed && x >= sign) x -= 2 * sign;
    hu[i] = x * slope + intercept;
  }
  return { width: w, height: h, hu };
}

/** A slice's position along the series' normal (for sorting), or null. */
export function slicePosition(info) {
  const p = info.ImagePositionPatient;
  const o = info.ImageOrientationPatient;
  if (Array.isArray(p) && p.length === 3 && Array.isArray(o) && o.length === 6) {
    const n = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
    return p[0] * n[0] + p[1] * n[1] + p[2] * n[2];
  }
  return typeof info.SliceLocation === "number" ? info.SliceLocation : null;
}

export const DICOMDIR_CLASS = "1.2.840.10008.1.3.10";

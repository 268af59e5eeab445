// Drag instructions state for the editor: parse / validate / serialise the versioned JSON held in the
// "drag_data" widget (schema: core/drag_schema.py, version 1) plus the run-length mask codec.
// Pure functions, no DOM: the editor (drag_widget.js) owns one state object per node.
//
// state = {imageSize: [W, H] | null,
//          points:  [{handle: [x, y], target: [x, y]}],
//          regions: [{kind: "rect" | "polygon", handle: [[x, y], ...], target: [[x, y], ...] | null,
//                     points: [{handle, target}] | null}],
//          mask:    Uint8Array(W * H) of 0/1 | null,      // editable area, row-major
//          ui:      object | null}                         // kept as-is (the schema ignores it)

export const SCHEMA_VERSION = 1;
export const LIMITS = {
  maxJsonBytes: 256 * 1024,
  maxPoints: 64,
  maxRegions: 32,
  minPolygon: 3,
  maxPolygon: 16,
  maxSide: 16384,
  // The editor holds a mask as one byte per pixel plus an RGBA overlay canvas: 5 bytes a pixel, 80 MB at this
  // size. A JSON may declare up to maxSide^2 (268 M pixels, 1.3 GB here); the node resamples such a mask to its
  // image from the run lengths, so the editor refuses to show it rather than allocate per declared pixel.
  maxMaskPixels: 4096 * 4096,
};

const TOP_KEYS = ["version", "image_size", "points", "regions", "mask", "ui"];

/** A schema violation; `field` is a path such as "points[1].target". */
export class DragStateError extends Error {
  constructor(field, message) {
    super(`${field} ${message}`);
    this.field = field;
  }
}

/** A valid value the editor will not hold (a mask beyond LIMITS.maxMaskPixels); the node still accepts it. */
export class DragStateTooLarge extends DragStateError {}

/** An empty state (no image size known yet). */
export function emptyState(imageSize = null) {
  return { imageSize: imageSize ? [imageSize[0], imageSize[1]] : null, points: [], regions: [], mask: null, ui: null };
}

/** True when the state holds nothing a drag node would use or that the user drew. */
export function isEmptyState(s) {
  return !s.points.length && !s.regions.length && !s.mask;
}

function typeName(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  return { object: "an object", string: "a string", number: "a number", boolean: "a boolean" }[typeof v] || typeof v;
}

function short(v) {
  let t;
  try {
    t = JSON.stringify(v);
  } catch (e) {
    t = String(v);
  }
  return t === undefined ? String(v) : t.slice(0, 40);
}

function num(v, path) {
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new DragStateError(path, `must be a finite number, got ${typeName(v)} ${short(v)}`);
  }
  return v;
}

function xy(v, path) {
  if (!Array.isArray(v) || v.length !== 2) {
    throw new DragStateError(path, `must be [x, y] (2 numbers), got ${Array.isArray(v) ? v.length + " values" : typeName(v)}`);
  }
  return [num(v[0], `${path}[0]`), num(v[1], `${path}[1]`)];
}

function pair(v, path) {
  if (Array.isArray(v)) {
    if (v.length !== 4) throw new DragStateError(path, `must be [hx, hy, tx, ty] (4 numbers), got ${v.length} values`);
    const n = v.map((x, i) => num(x, `${path}[${i}]`));
    return { handle: [n[0], n[1]], target: [n[2], n[3]] };
  }
  if (!v || typeof v !== "object") {
    throw new DragStateError(path, `must be {"handle": [x, y], "target": [x, y]}, got ${typeName(v)}`);
  }
  for (const k of Object.keys(v)) {
    if (k !== "handle" && k !== "target") throw new DragStateError(`${path}.${k}`, "is not a known key");
  }
  for (const k of ["handle", "target"]) {
    if (v[k] == null) throw new DragStateError(`${path}.${k}`, "is missing: every handle needs a target");
  }
  return { handle: xy(v.handle, `${path}.handle`), target: xy(v.target, `${path}.target`) };
}

function list(v, path) {
  if (v == null) return [];
  if (!Array.isArray(v)) throw new DragStateError(path, `must be a list, got ${typeName(v)}`);
  return v;
}

function vertices(v, path) {
  if (!Array.isArray(v)) throw new DragStateError(path, `must be a list of [x, y] vertices, got ${typeName(v)}`);
  return v.map((p, i) => xy(p, `${path}[${i}]`));
}

function checkShape(kind, verts, path) {
  const n = verts.length;
  if (kind === "rect") {
    if (n !== 2 && n !== 4) throw new DragStateError(path, `a rect needs 2 opposite corners or 4 vertices, got ${n}`);
    const xs = verts.map((p) => p[0]);
    const ys = verts.map((p) => p[1]);
    if (Math.max(...xs) - Math.min(...xs) <= 0 || Math.max(...ys) - Math.min(...ys) <= 0) {
      throw new DragStateError(path, "has zero width or height");
    }
    return;
  }
  if (n < LIMITS.minPolygon || n > LIMITS.maxPolygon) {
    throw new DragStateError(path, `a polygon needs ${LIMITS.minPolygon} to ${LIMITS.maxPolygon} vertices, got ${n}`);
  }
  const why = polygonProblem(verts);
  if (why) throw new DragStateError(path, why);
}

/** Two opposite corners [[x0, y0], [x1, y1]] (x0 < x1, y0 < y1) of a rect given by 2 or 4 vertices. */
export function rectCorners(verts) {
  const xs = verts.map((p) => p[0]);
  const ys = verts.map((p) => p[1]);
  return [
    [Math.min(...xs), Math.min(...ys)],
    [Math.max(...xs), Math.max(...ys)],
  ];
}

function region(v, path) {
  if (!v || typeof v !== "object" || Array.isArray(v)) {
    throw new DragStateError(path, `must be an object {"kind", "handle", "target"}, got ${typeName(v)}`);
  }
  for (const k of Object.keys(v)) {
    if (!["kind", "handle", "target", "points"].includes(k)) throw new DragStateError(`${path}.${k}`, "is not a known key");
  }
  if (v.kind !== "rect" && v.kind !== "polygon") {
    throw new DragStateError(`${path}.kind`, `must be 'rect' or 'polygon', got ${short(v.kind)}`);
  }
  if (v.handle == null) throw new DragStateError(`${path}.handle`, "is missing");
  let handle = vertices(v.handle, `${path}.handle`);
  checkShape(v.kind, handle, `${path}.handle`);
  const hasTarget = v.target != null;
  const hasPoints = v.points != null;
  if (hasTarget && hasPoints) throw new DragStateError(path, "has both 'target' and 'points'");
  if (!hasTarget && !hasPoints) throw new DragStateError(`${path}.target`, "is missing: every handle region needs a target region");
  let target = null;
  let points = null;
  if (hasTarget) {
    target = vertices(v.target, `${path}.target`);
    if (target.length !== handle.length) {
      throw new DragStateError(`${path}.target`, `has ${target.length} vertices but the handle has ${handle.length}`);
    }
    checkShape(v.kind, target, `${path}.target`);
  } else {
    points = list(v.points, `${path}.points`).map((p, i) => pair(p, `${path}.points[${i}]`));
  }
  if (v.kind === "rect") {
    handle = rectCorners(handle);
    if (target) target = rectCorners(target);
  }
  return { kind: v.kind, handle, target, points };
}

function size(v, path) {
  if (!Array.isArray(v) || v.length !== 2) throw new DragStateError(path, `must be [W, H], got ${short(v)}`);
  const out = v.map((x, i) => num(x, `${path}[${i}]`));
  for (let i = 0; i < 2; i++) {
    if (!Number.isInteger(out[i]) || out[i] < 1 || out[i] > LIMITS.maxSide) {
      throw new DragStateError(`${path}[${i}]`, `must be a whole number of pixels between 1 and ${LIMITS.maxSide}, got ${short(v[i])}`);
    }
  }
  return out;
}

function checkInside(s) {
  if (!s.imageSize) return;
  const [W, H] = s.imageSize;
  const inside = (p, path) => {
    if (p[0] < 0 || p[0] > W || p[1] < 0 || p[1] > H) {
      throw new DragStateError(path, `(${p[0]}, ${p[1]}) lies outside the ${W}x${H} image`);
    }
  };
  s.points.forEach((p, i) => {
    inside(p.handle, `points[${i}].handle`);
    inside(p.target, `points[${i}].target`);
  });
  s.regions.forEach((r, i) => {
    r.handle.forEach((p, k) => inside(p, `regions[${i}].handle[${k}]`));
    (r.target || []).forEach((p, k) => inside(p, `regions[${i}].target[${k}]`));
    (r.points || []).forEach((p, k) => {
      inside(p.handle, `regions[${i}].points[${k}].handle`);
      inside(p.target, `regions[${i}].points[${k}].target`);
    });
  });
}

/** Parse the widget text into a state; throws DragStateError naming the field. Empty text = empty state. */
export function parseState(text) {
  if (typeof text !== "string") throw new DragStateError("drag_data", `must be a string, got ${typeName(text)}`);
  if (new TextEncoder().encode(text).length > LIMITS.maxJsonBytes) {
    throw new DragStateError("drag_data", `is larger than ${LIMITS.maxJsonBytes / 1024} KiB`);
  }
  if (!text.trim()) return emptyState();
  let obj;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new DragStateError("drag_data", `is not valid JSON (${e.message})`);
  }
  if (Array.isArray(obj)) obj = { version: SCHEMA_VERSION, points: obj };
  if (!obj || typeof obj !== "object") {
    throw new DragStateError("drag_data", `must be an object {"version": 1, ...}, got ${typeName(obj)}`);
  }
  for (const k of Object.keys(obj)) {
    if (!TOP_KEYS.includes(k)) throw new DragStateError(k, `is not a known key (expected one of ${TOP_KEYS.join(", ")})`);
  }
  const version = obj.version ?? SCHEMA_VERSION;
  if (version !== SCHEMA_VERSION) {
    throw new DragStateError("version", `${short(version)} is not supported (this editor reads version ${SCHEMA_VERSION})`);
  }
  const s = emptyState(obj.image_size != null ? size(obj.image_size, "image_size") : null);
  s.points = list(obj.points, "points").map((p, i) => pair(p, `points[${i}]`));
  s.regions = list(obj.regions, "regions").map((r, i) => region(r, `regions[${i}]`));
  if (s.regions.length > LIMITS.maxRegions) {
    throw new DragStateError("regions", `has ${s.regions.length} regions; at most ${LIMITS.maxRegions} are allowed`);
  }
  if (countPairs(s) > LIMITS.maxPoints) {
    throw new DragStateError("points", `has ${countPairs(s)} point pairs; at most ${LIMITS.maxPoints} are allowed`);
  }
  if (obj.mask != null) {
    const m = obj.mask;
    if (!m || typeof m !== "object" || Array.isArray(m)) {
      throw new DragStateError("mask", `must be {"size": [W, H], "counts": [...]}, got ${typeName(m)}`);
    }
    const msize = size(m.size, "mask.size");
    if (s.imageSize && (msize[0] !== s.imageSize[0] || msize[1] !== s.imageSize[1])) {
      throw new DragStateError("mask.size", `${msize[0]}x${msize[1]} differs from image_size ${s.imageSize[0]}x${s.imageSize[1]}`);
    }
    s.imageSize = s.imageSize || msize;
    if (msize[0] * msize[1] > LIMITS.maxMaskPixels) {
      // Checked before decoding: nothing is allocated per declared pixel.
      const mpx = (n) => `${Math.round(n / 2 ** 20)} Mpx`;
      throw new DragStateTooLarge("mask.size", `${msize[0]}x${msize[1]} (${mpx(msize[0] * msize[1])}) is more than the editor paints ` +
        `(${mpx(LIMITS.maxMaskPixels)}, e.g. 4096x4096)`);
    }
    s.mask = rleDecode(list(m.counts, "mask.counts"), msize[0], msize[1]);
  }
  if (obj.ui != null && typeof obj.ui === "object") s.ui = JSON.parse(JSON.stringify(obj.ui));
  checkInside(s);
  return s;
}

/** Number of point pairs, regions' own points included (the schema's limit counts them all). */
export function countPairs(s) {
  return s.points.length + s.regions.reduce((n, r) => n + (r.points ? r.points.length : 0), 0);
}

const r2 = (v) => Math.round(v * 100) / 100;
const pt = (p) => [r2(p[0]), r2(p[1])];

/** Canonical JSON text of a state (what the widget stores and the node parses). */
export function serializeState(s) {
  const obj = { version: SCHEMA_VERSION };
  if (s.imageSize) obj.image_size = [s.imageSize[0], s.imageSize[1]];
  obj.points = s.points.map((p) => ({ handle: pt(p.handle), target: pt(p.target) }));
  obj.regions = s.regions.map((r) => {
    const o = { kind: r.kind, handle: r.handle.map(pt) };
    if (r.target) o.target = r.target.map(pt);
    else o.points = (r.points || []).map((p) => ({ handle: pt(p.handle), target: pt(p.target) }));
    return o;
  });
  if (s.mask && s.imageSize && s.mask.some((v) => v)) {
    obj.mask = { size: [s.imageSize[0], s.imageSize[1]], counts: rleEncode(s.mask) };
  }
  if (s.ui) obj.ui = s.ui;
  return JSON.stringify(obj);
}

/** Run lengths of a 0/1 mask (row-major, alternating 0-runs and 1-runs, starting with a 0-run). */
export function rleEncode(mask) {
  const counts = [];
  let cur = 0;
  let run = 0;
  for (let i = 0; i < mask.length; i++) {
    const v = mask[i] ? 1 : 0;
    if (v === cur) run++;
    else {
      counts.push(run);
      cur = v;
      run = 1;
    }
  }
  counts.push(run);
  return counts;
}

/** 0/1 mask (Uint8Array W*H) from run lengths; throws DragStateError when they do not cover W*H pixels. */
export function rleDecode(counts, W, H) {
  let total = 0;
  counts.forEach((c, i) => {
    if (!Number.isInteger(c) || c < 0) throw new DragStateError(`mask.counts[${i}]`, `must be a non-negative integer, got ${short(c)}`);
    total += c;
  });
  if (total !== W * H) throw new DragStateError("mask.counts", `cover ${total} pixels but a ${W}x${H} mask has ${W * H}`);
  const m = new Uint8Array(W * H);
  let pos = 0;
  counts.forEach((c, i) => {
    if (i % 2 === 1) m.fill(1, pos, pos + c);
    pos += c;
  });
  return m;
}

/** Copy of a state with every coordinate (and the mask, nearest) rescaled to a new image size. */
export function rescaleState(s, W, H) {
  const out = cloneState(s);
  if (!s.imageSize) {
    out.imageSize = [W, H];
    return out;
  }
  const [w0, h0] = s.imageSize;
  const sx = W / w0;
  const sy = H / h0;
  const sp = (p) => [p[0] * sx, p[1] * sy];
  const spp = (p) => ({ handle: sp(p.handle), target: sp(p.target) });
  out.points = s.points.map(spp);
  out.regions = s.regions.map((r) => ({
    kind: r.kind,
    handle: r.handle.map(sp),
    target: r.target ? r.target.map(sp) : null,
    points: r.points ? r.points.map(spp) : null,
  }));
  if (s.mask) {
    const m = new Uint8Array(W * H);
    for (let y = 0; y < H; y++) {
      const y0 = Math.min(h0 - 1, Math.floor((y + 0.5) / sy));
      for (let x = 0; x < W; x++) m[y * W + x] = s.mask[y0 * w0 + Math.min(w0 - 1, Math.floor((x + 0.5) / sx))];
    }
    out.mask = m;
  }
  out.imageSize = [W, H];
  return out;
}

/** Deep copy of a state. */
export function cloneState(s) {
  const cp = (p) => [p[0], p[1]];
  const cpp = (p) => ({ handle: cp(p.handle), target: cp(p.target) });
  return {
    imageSize: s.imageSize ? [s.imageSize[0], s.imageSize[1]] : null,
    points: s.points.map(cpp),
    regions: s.regions.map((r) => ({
      kind: r.kind,
      handle: r.handle.map(cp),
      target: r.target ? r.target.map(cp) : null,
      points: r.points ? r.points.map(cpp) : null,
    })),
    mask: s.mask ? new Uint8Array(s.mask) : null,
    ui: s.ui ? JSON.parse(JSON.stringify(s.ui)) : null,
  };
}

// ---------------------------------------------------------------- polygon geometry
function cross(o, a, b) {
  return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
}

function segmentsTouch(p1, p2, q1, q2) {
  const d1 = cross(q1, q2, p1);
  const d2 = cross(q1, q2, p2);
  const d3 = cross(p1, p2, q1);
  const d4 = cross(p1, p2, q2);
  if (d1 * d2 < 0 && d3 * d4 < 0) return true;
  const on = (a, b, c, d) =>
    d === 0 && Math.min(a[0], b[0]) <= c[0] && c[0] <= Math.max(a[0], b[0]) && Math.min(a[1], b[1]) <= c[1] && c[1] <= Math.max(a[1], b[1]);
  return on(q1, q2, p1, d1) || on(q1, q2, p2, d2) || on(p1, p2, q1, d3) || on(p1, p2, q2, d4);
}

/** Signed shoelace area of a polygon. */
export function polygonArea(v) {
  let a = 0;
  for (let i = 0; i < v.length; i++) {
    const j = (i + 1) % v.length;
    a += v[i][0] * v[j][1] - v[j][0] * v[i][1];
  }
  return a / 2;
}

/** Why a polygon would be rejected by the node (repeated vertex, self-crossing, zero area), or null. */
export function polygonProblem(v) {
  const n = v.length;
  for (let i = 0; i < n; i++) {
    const j = (i + 1) % n;
    if (v[i][0] === v[j][0] && v[i][1] === v[j][1]) return `repeats vertex ${i}`;
  }
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      if (j === i + 1 || (i === 0 && j === n - 1)) continue;
      if (segmentsTouch(v[i], v[(i + 1) % n], v[j], v[(j + 1) % n])) return `crosses itself (edge ${i} meets edge ${j})`;
    }
  }
  if (Math.abs(polygonArea(v)) < 1e-6) return "has zero area";
  if (n === 4) {
    for (let k = 0; k < 4; k++) {
      if (Math.abs(cross(v[k], v[(k + 1) % 4], v[(k + 2) % 4])) < 1e-6) return "has three collinear vertices";
    }
  }
  return null;
}

/** True when point p lies inside polygon v (even-odd rule). */
export function pointInPolygon(p, v) {
  let inside = false;
  for (let i = 0, j = v.length - 1; i < v.length; j = i++) {
    if (v[i][1] > p[1] !== v[j][1] > p[1] && p[0] < ((v[j][0] - v[i][0]) * (p[1] - v[i][1])) / (v[j][1] - v[i][1]) + v[i][0]) {
      inside = !inside;
    }
  }
  return inside;
}

/** Vertices of a region's shape as a closed polygon (a rect's 2 corners become 4). */
export function shapeOutline(kind, verts) {
  if (kind !== "rect") return verts;
  const [a, b] = rectCorners(verts);
  return [a, [b[0], a[1]], b, [a[0], b[1]]];
}

/** Centroid (vertex mean) of a list of points. */
export function centroid(v) {
  const c = [0, 0];
  v.forEach((p) => {
    c[0] += p[0];
    c[1] += p[1];
  });
  return [c[0] / v.length, c[1] / v.length];
}

// A mask brush over the input picture, for inpainting: paint where the
// model should redraw (white in the mask sent), erase to keep. Pointer
// events, so a finger works as well as a mouse. The mask is drawn at the
// picture's own size, whatever size the canvas shows at.

const el = (id) => document.getElementById(id);
let canvas = null;
let ctx = null;
let painted = false;
let erasing = false;

export function initMaskPanel() {
  canvas = el('mask-canvas');
  ctx = canvas.getContext('2d');
  let drawing = false;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * (canvas.width / r.width), (e.clientY - r.top) * (canvas.height / r.height)];
  };
  const dab = (e) => {
    const [x, y] = at(e);
    const radius = (Number(el('mask-brush').value) / 100) * Math.max(canvas.width, canvas.height) / 2;
    ctx.globalCompositeOperation = erasing ? 'destination-out' : 'source-over';
    ctx.fillStyle = 'rgba(255, 64, 160, 1)';
    ctx.beginPath();
    ctx.arc(x, y, Math.max(1, radius), 0, 2 * Math.PI);
    ctx.fill();
    if (!erasing) painted = true;
  };
  canvas.addEventListener('pointerdown', (e) => { drawing = true; canvas.setPointerCapture(e.pointerId); dab(e); e.preventDefault(); });
  canvas.addEventListener('pointermove', (e) => { if (drawing) dab(e); });
  for (const end of ['pointerup', 'pointercancel']) canvas.addEventListener(end, () => { drawing = false; });
  el('mask-erase').addEventListener('click', () => {
    erasing = !erasing;
    el('mask-erase').setAttribute('aria-pressed', String(erasing));
  });
  el('mask-clear').addEventListener('click', () => clearMask());
  el('mask-invert').addEventListener('click', invert);
}

// Sizes the canvas to the picture and clears it.
export function resetMask(width, height) {
  canvas.width = width;
  canvas.height = height;
  clearMask();
}

function clearMask() {
  ctx.globalCompositeOperation = 'source-over';
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  painted = false;
}

function invert() {
  const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < img.data.length; i += 4) {
    const on = img.data[i + 3] >= 128;
    img.data[i] = 255; img.data[i + 1] = 64; img.data[i + 2] = 160;
    img.data[i + 3] = on ? 0 : 255;
  }
  ctx.putImageData(img, 0, 0);
  painted = img.data.some((v, i) => i % 4 === 3 && v >= 128);
}

// The mask as a PNG data URL (white = repaint), or null when nothing is
// painted (then the whole picture is reworked).
export function maskDataUrl() {
  if (!painted) return null;
  const out = document.createElement('canvas');
  out.width = canvas.width;
  out.height = canvas.height;
  const o = out.getContext('2d');
  o.fillStyle = '#000';
  o.fillRect(0, 0, out.width, out.height);
  const src = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const dst = o.getImageData(0, 0, out.width, out.height);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] >= 128 ? 255 : 0;
    dst.data[i] = v; dst.data[i + 1] = v; dst.data[i + 2] = v; dst.data[i + 3] = 255;
  }
  o.putImageData(dst, 0, 0);
  return out.toDataURL('image/png');
}

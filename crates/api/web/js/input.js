// The generate form's "start from an image" panel: a picture uploaded here
// (sent as a data: URL) or a gallery image's id ("Use as input" in its
// dialog), with the strength slider and a mask brush for inpainting. While a picture is set, the form asks
// for image-to-image at the picture's size (rounded down to the model's
// multiple).

import { setImage } from './api.js';
import { initMaskPanel, maskDataUrl, resetMask } from './mask.js';

const el = (id) => document.getElementById(id);
let current = null; // { ref, width, height } or null

export function initInputPanel() {
  el('init-file').addEventListener('change', () => {
    const file = el('init-file').files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => show(reader.result, reader.result);
    reader.readAsDataURL(file);
  });
  el('init-clear').addEventListener('click', clear);
  el('strength').addEventListener('input', () => { el('strength-value').textContent = el('strength').value; });
  initMaskPanel();
}

const SIDES = ['left', 'right', 'top', 'bottom'];

// What the request needs: { init_image, strength } (with a painted mask
// also mask_image, mask_blur, keep_unmasked), or null. Extending the
// canvas sends `outpaint` instead of the mask and leaves the strength and
// size to the server (1, and the extended canvas).
export function currentInput() {
  if (!current) return null;
  const sides = {};
  for (const side of SIDES) sides[side] = Math.max(0, Math.round(Number(el(`outpaint-${side}`).value) || 0));
  if (SIDES.some((side) => sides[side] > 0)) {
    return { init_image: current.ref, outpaint: sides,
      mask_blur: Math.min(64, Math.max(0, Number(el('mask-blur').value) || 0)) };
  }
  const input = { init_image: current.ref, strength: Number(el('strength').value) };
  const mask = maskDataUrl();
  if (mask) {
    input.mask_image = mask;
    input.mask_blur = Math.min(64, Math.max(0, Number(el('mask-blur').value) || 0));
    input.keep_unmasked = el('keep-unmasked').checked;
  }
  return input;
}

// A gallery image as the input: { id, url }.
export function useImage(image) {
  show(image.id, image.url);
}

function show(ref, url) {
  current = { ref };
  const img = el('init-preview');
  img.onload = () => {
    resetMask(img.naturalWidth, img.naturalHeight);
    const step = Number(el('width').step) || 8;
    const fit = (v) => Math.max(64, Math.floor(v / step) * step);
    el('width').value = fit(img.naturalWidth);
    el('height').value = fit(img.naturalHeight);
    el('size-preset').value = 'custom';
  };
  setImage(img, url);
  el('init-stage').hidden = false;
  el('mask-tools').hidden = false;
  el('outpaint-tools').hidden = false;
  el('init-clear').hidden = false;
  el('strength').disabled = false;
  el('init-panel').classList.add('active');
}

function clear() {
  current = null;
  el('init-file').value = '';
  el('init-stage').hidden = true;
  el('mask-tools').hidden = true;
  el('outpaint-tools').hidden = true;
  for (const side of SIDES) el(`outpaint-${side}`).value = '0';
  el('init-preview').removeAttribute('src');
  el('init-clear').hidden = true;
  el('strength').disabled = true;
  el('init-panel').classList.remove('active');
}

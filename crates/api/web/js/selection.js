// Selecting gallery images: ctrl/cmd-click toggles one, shift-click a
// range from the last one picked, "Select" mode makes a plain click
// toggle, "All on page" takes every loaded tile. The bar acts on the
// selection: download it as one ZIP, delete it.

import { call, saveDownload } from './api.js';

const el = (id) => document.getElementById(id);
const selected = new Set();
let anchor = null; // id of the last tile clicked, for shift ranges
let onDeleted = () => {};

export function initSelection({ deleted }) {
  onDeleted = deleted;
  el('gallery-select').addEventListener('click', () => setMode(!selecting()));
  el('selection-all').addEventListener('click', selectAll);
  el('selection-clear').addEventListener('click', clear);
  el('selection-download').addEventListener('click', download);
  el('selection-delete').addEventListener('click', removeSelected);
}

export function selecting() {
  return el('gallery-select').getAttribute('aria-pressed') === 'true';
}

function setMode(on) {
  el('gallery-select').setAttribute('aria-pressed', String(on));
  el('gallery-grid').classList.toggle('selecting', on);
  if (!on) clear();
  render();
}

function tiles() {
  return [...el('gallery-grid').querySelectorAll('.tile')];
}

// Handles a click on a tile; true when it was a selection click.
export function tileClicked(tile, event) {
  const id = tile.dataset.imageId;
  if (event.shiftKey && anchor) {
    const all = tiles().map((t) => t.dataset.imageId);
    const [a, b] = [all.indexOf(anchor), all.indexOf(id)].sort((x, y) => x - y);
    if (a >= 0) for (const i of all.slice(a, b + 1)) selected.add(i);
  } else if (event.ctrlKey || event.metaKey || selecting()) {
    if (selected.has(id)) selected.delete(id); else selected.add(id);
  } else {
    return false;
  }
  anchor = id;
  if (!selecting()) el('gallery-grid').classList.add('selecting');
  render();
  return true;
}

function selectAll() {
  for (const t of tiles()) selected.add(t.dataset.imageId);
  el('gallery-grid').classList.add('selecting');
  render();
}

export function clear() {
  selected.clear();
  anchor = null;
  if (!selecting()) el('gallery-grid').classList.remove('selecting');
  render();
}

// A new search replaced the tiles: the selection goes with them.
export function reset() {
  clear();
}

function render() {
  for (const t of tiles()) {
    const on = selected.has(t.dataset.imageId);
    t.classList.toggle('selected', on);
    t.setAttribute('aria-pressed', String(on));
  }
  const n = selected.size;
  el('selection-bar').hidden = n === 0 && !selecting();
  el('selection-count').textContent = `${n} selected`;
  el('selection-download').disabled = n === 0;
  el('selection-delete').disabled = n === 0;
}

function note(text, isError) {
  const status = el('selection-status');
  status.textContent = text;
  status.className = isError ? 'error' : 'hint';
}

async function download() {
  const ids = [...selected];
  const stamp = new Date().toISOString().slice(0, 19).replace(/[-:T]/g, '');
  try {
    await saveDownload('/api/images/download?ids=' + ids.join(','), `cyberimage-${stamp}.zip`);
    note(`Downloading ${ids.length} image${ids.length === 1 ? '' : 's'} as a ZIP.`);
  } catch (e) {
    note('Could not download: ' + e.message, true);
  }
}

async function removeSelected() {
  const ids = [...selected];
  if (!confirm(`Delete ${ids.length} image${ids.length === 1 ? '' : 's'} for good?`)) return;
  try {
    const result = await call('POST', '/api/images/delete', { ids });
    for (const id of result.deleted) {
      selected.delete(id);
      el('gallery-grid').querySelector(`[data-image-id="${id}"]`)?.remove();
    }
    onDeleted(result.deleted);
    note(`Deleted ${result.deleted.length} image${result.deleted.length === 1 ? '' : 's'}.`);
  } catch (e) {
    note('Could not delete: ' + e.message, true);
  }
  render();
}

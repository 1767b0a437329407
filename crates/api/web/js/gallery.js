// The gallery: thumbnails newest first, search and model filter (kept in
// the URL as ?search=&model=), grid / list / compact views (remembered),
// infinite scroll, keyboard (/ searches, j/k and arrows move), selection
// and batch actions (selection.js), and a detail dialog with metadata,
// copy, download, remix, use as input (image-to-image), upscale
// (upscale.js), delete; arrows, j/k and swipes move through it.

import { call, setImage } from './api.js';
import { initSelection, tileClicked, reset as resetSelection } from './selection.js';
import { showFor as showUpscale } from './upscale.js';

const PER_PAGE = 24;
const el = (id) => document.getElementById(id);
let state = { page: 0, totalPages: 1, loading: false, q: '', model: '', favorites: false, images: [], generation: 0 };
let navigateTo = null;
let current = -1; // index of the image in the dialog
let observer = null;

const VIEWS = ['grid', 'list', 'compact'];

export function init({ navigate }) {
  navigateTo = navigate;
  initSelection({ deleted: (ids) => {
    state.images = state.images.filter((i) => !ids.includes(i.id));
    el('gallery-empty').hidden = state.images.length !== 0;
  } });
  const view = el('gallery-view');
  view.value = VIEWS.includes(localStorage.getItem('cyberimage-gallery-view')) ? localStorage.getItem('cyberimage-gallery-view') : 'grid';
  applyView();
  view.addEventListener('change', () => { localStorage.setItem('cyberimage-gallery-view', view.value); applyView(); });
  document.addEventListener('keydown', keyboard);
  let touchX = null;
  el('image-dialog').addEventListener('touchstart', (e) => { touchX = e.touches[0].clientX; }, { passive: true });
  el('image-dialog').addEventListener('touchend', (e) => {
    if (touchX === null) return;
    const dx = e.changedTouches[0].clientX - touchX;
    touchX = null;
    if (Math.abs(dx) > 50) open(current + (dx < 0 ? 1 : -1));
  });
  let timer = null;
  el('gallery-search').addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(reset, 250);
  });
  el('gallery-model').addEventListener('change', reset);
  el('gallery-more').addEventListener('click', loadMore);
  el('detail-copy').addEventListener('click', copyPrompt);
  el('detail-favorite').addEventListener('click', toggleFavorite);
  el('gallery-favorites').addEventListener('click', () => {
    const on = el('gallery-favorites').getAttribute('aria-pressed') !== 'true';
    el('gallery-favorites').setAttribute('aria-pressed', String(on));
    reset();
  });
  el('detail-remix').addEventListener('click', remix);
  el('detail-input').addEventListener('click', useAsInput);
  el('detail-delete').addEventListener('click', remove);
  el('image-dialog').addEventListener('keydown', (e) => {
    if (e.key === 'ArrowRight' || e.key === 'j') open(current + 1);
    if (e.key === 'ArrowLeft' || e.key === 'k') open(current - 1);
  });
  observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !el('page-gallery').hidden) loadMore();
  }, { rootMargin: '400px' });
  observer.observe(el('gallery-sentinel'));
}

export async function enter() {
  await loadModelFilter();
  // The URL names the search and model filter (shareable, survives reload).
  const params = new URLSearchParams(location.search);
  el('gallery-search').value = params.get('search') || '';
  const model = params.get('model') || '';
  if ([...el('gallery-model').options].some((o) => o.value === model)) el('gallery-model').value = model;
  el('gallery-favorites').setAttribute('aria-pressed', String(params.get('favorites') === '1'));
  reset();
}

function applyView() {
  const grid = el('gallery-grid');
  for (const v of VIEWS) grid.classList.toggle('view-' + v, el('gallery-view').value === v);
}

// `/` focuses the search; j/k and the arrow keys move between tiles.
function keyboard(e) {
  if (el('page-gallery').hidden || el('image-dialog').open || e.ctrlKey || e.metaKey || e.altKey) return;
  const typing = ['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement?.tagName);
  if (e.key === '/' && !typing) {
    e.preventDefault();
    el('gallery-search').focus();
    return;
  }
  if (typing) return;
  const step = { j: 1, ArrowRight: 1, ArrowDown: 1, k: -1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
  if (!step) return;
  const tiles = [...el('gallery-grid').querySelectorAll('.tile')];
  if (!tiles.length) return;
  e.preventDefault();
  const at = tiles.indexOf(document.activeElement);
  const next = at < 0 ? 0 : Math.min(Math.max(at + step, 0), tiles.length - 1);
  tiles[next].focus();
  tiles[next].scrollIntoView({ block: 'nearest' });
}

function syncUrl() {
  if (location.pathname !== '/gallery') return;
  const params = new URLSearchParams();
  if (state.q) params.set('search', state.q);
  if (state.model) params.set('model', state.model);
  if (state.favorites) params.set('favorites', '1');
  const query = params.toString();
  history.replaceState(null, '', '/gallery' + (query ? '?' + query : ''));
}

async function loadModelFilter() {
  const select = el('gallery-model');
  if (select.options.length > 1) return;
  try {
    const m = await call('GET', '/api/models');
    for (const key of Object.keys(m.models)) {
      const opt = document.createElement('option');
      opt.value = key;
      opt.textContent = key;
      select.append(opt);
    }
  } catch (e) { /* filtering is optional */ }
}

function reset() {
  // A new generation: answers to loads started before it are dropped.
  state = {
    page: 0, totalPages: 1, loading: false, q: el('gallery-search').value.trim(),
    model: el('gallery-model').value, images: [], generation: state.generation + 1,
    favorites: el('gallery-favorites').getAttribute('aria-pressed') === 'true',
  };
  el('gallery-grid').textContent = '';
  resetSelection();
  syncUrl();
  return loadMore();
}

// Shows image `id` in the dialog once the gallery is reloaded (a new
// upscale is the newest image).
async function openById(id) {
  await reset();
  const index = state.images.findIndex((i) => i.id === id);
  if (index >= 0) open(index);
}

async function loadMore() {
  if (state.loading || state.page >= state.totalPages) return;
  state.loading = true;
  const mine = state;
  const params = new URLSearchParams({ page: String(state.page + 1), per_page: String(PER_PAGE) });
  if (mine.q) params.set('q', mine.q);
  if (mine.model) params.set('model', mine.model);
  if (mine.favorites) params.set('favorites', 'true');
  try {
    const data = await call('GET', '/api/gallery?' + params);
    // A newer search replaced this one while it was loading.
    if (mine.generation !== state.generation) return;
    state.page = data.page;
    state.totalPages = data.total_pages;
    el('gallery-count').textContent = `${data.total} image${data.total === 1 ? '' : 's'}`;
    for (const img of data.images) addTile(img);
    el('gallery-empty').hidden = data.total !== 0;
    el('gallery-more').hidden = state.page >= state.totalPages;
  } catch (e) {
    el('gallery-count').textContent = 'Could not load the gallery: ' + e.message;
  } finally {
    mine.loading = false;
  }
}

function addTile(img) {
  state.images.push(img);
  const s = img.metadata.settings;
  const tile = document.createElement('button');
  tile.className = 'tile';
  tile.dataset.imageId = img.id;
  tile.classList.toggle('favorite', Boolean(img.favorite));
  tile.title = img.metadata.prompt;
  const pic = document.createElement('img');
  pic.alt = img.metadata.prompt;
  pic.loading = 'lazy';
  pic.width = s.width;
  pic.height = s.height;
  pic.style.setProperty('--ar', `${s.width} / ${s.height}`);
  setImage(pic, img.thumbnail_url);
  const caption = document.createElement('span');
  caption.className = 'caption';
  caption.textContent = img.metadata.prompt;
  // Shown in the list view only.
  const details = document.createElement('span');
  details.className = 'details';
  details.textContent = `${img.metadata.model_id} · ${s.width}×${s.height} · seed ${s.seed} · ${new Date(img.created_at).toLocaleString()}`;
  tile.append(pic, caption, details);
  tile.addEventListener('click', (e) => {
    if (!tileClicked(tile, e)) open(state.images.indexOf(img));
  });
  el('gallery-grid').append(tile);
}

function open(index) {
  if (index < 0 || index >= state.images.length) return;
  current = index;
  const img = state.images[index];
  const m = img.metadata;
  const s = m.settings;
  const pic = el('detail-image');
  pic.alt = m.prompt;
  pic.width = s.width;
  pic.height = s.height;
  pic.removeAttribute('src');
  setImage(pic, img.url);
  const rows = [
    ['Prompt', m.prompt], ['Negative', m.negative_prompt || '—'], ['Model', m.model_id],
    ['Seed', s.seed], ['Steps', s.num_inference_steps], ['Guidance', s.guidance_scale],
    ['Size', `${s.width} × ${s.height}`], ['Created', new Date(img.created_at).toLocaleString()],
  ];
  const dl = el('detail-meta');
  dl.textContent = '';
  for (const [k, v] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = String(v);
    dd.dataset.field = k.toLowerCase();
    dl.append(dt, dd);
  }
  const download = el('detail-download');
  download.href = img.url;
  download.download = `${img.id}.png`;
  el('detail-status').textContent = '';
  showFavorite(img);
  showUpscale(img, { opened: openById });
  const dialog = el('image-dialog');
  if (!dialog.open) dialog.showModal();
}

function showFavorite(img) {
  const button = el('detail-favorite');
  button.textContent = img.favorite ? '★ Favourite' : '☆ Favourite';
  button.setAttribute('aria-pressed', String(Boolean(img.favorite)));
}

async function toggleFavorite() {
  const img = state.images[current];
  try {
    const updated = await call('PUT', `/api/images/${img.id}/favorite`, { favorite: !img.favorite });
    img.favorite = updated.favorite;
  } catch (e) {
    el('detail-status').textContent = 'Could not change the favourite: ' + e.message;
    return;
  }
  showFavorite(img);
  el('gallery-grid').querySelector(`[data-image-id="${img.id}"]`)?.classList.toggle('favorite', img.favorite);
}

async function copyPrompt() {
  const text = state.images[current].metadata.prompt;
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {
    // Clipboard API needs a secure context or permission: fall back.
    const area = document.createElement('textarea');
    area.value = text;
    el('image-dialog').append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  el('detail-status').textContent = 'Prompt copied.';
}

function remix() {
  sessionStorage.setItem('cyberimage-remix', JSON.stringify(state.images[current].metadata));
  el('image-dialog').close();
  navigateTo('/');
}

// The image as the generate form's starting picture (image-to-image),
// with its prompt and settings as a remix.
function useAsInput() {
  const img = state.images[current];
  sessionStorage.setItem('cyberimage-remix', JSON.stringify(img.metadata));
  sessionStorage.setItem('cyberimage-input', JSON.stringify({ id: img.id, url: img.url }));
  el('image-dialog').close();
  navigateTo('/');
}

async function remove() {
  const img = state.images[current];
  if (!confirm('Delete this image for good?')) return;
  try {
    await call('DELETE', `/api/images/${img.id}`);
  } catch (e) {
    el('detail-status').textContent = 'Could not delete: ' + e.message;
    return;
  }
  el('image-dialog').close();
  const tile = el('gallery-grid').querySelector(`[data-image-id="${img.id}"]`);
  if (tile) tile.remove();
  state.images.splice(current, 1);
  const count = el('gallery-grid').children.length;
  el('gallery-empty').hidden = count !== 0;
}

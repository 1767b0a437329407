// The gallery: thumbnails newest first, search and model filter, infinite
// scroll, and a detail dialog with metadata, copy, download, remix, use as
// input (image-to-image), delete.

import { call, setImage } from './api.js';

const PER_PAGE = 24;
const el = (id) => document.getElementById(id);
let state = { page: 0, totalPages: 1, loading: false, q: '', model: '', images: [], generation: 0 };
let navigateTo = null;
let current = -1; // index of the image in the dialog
let observer = null;

export function init({ navigate }) {
  navigateTo = navigate;
  let timer = null;
  el('gallery-search').addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(reset, 250);
  });
  el('gallery-model').addEventListener('change', reset);
  el('gallery-more').addEventListener('click', loadMore);
  el('detail-copy').addEventListener('click', copyPrompt);
  el('detail-remix').addEventListener('click', remix);
  el('detail-input').addEventListener('click', useAsInput);
  el('detail-delete').addEventListener('click', remove);
  el('image-dialog').addEventListener('keydown', (e) => {
    if (e.key === 'ArrowRight') open(current + 1);
    if (e.key === 'ArrowLeft') open(current - 1);
  });
  observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !el('page-gallery').hidden) loadMore();
  }, { rootMargin: '400px' });
  observer.observe(el('gallery-sentinel'));
}

export async function enter() {
  await loadModelFilter();
  reset();
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
  };
  el('gallery-grid').textContent = '';
  loadMore();
}

async function loadMore() {
  if (state.loading || state.page >= state.totalPages) return;
  state.loading = true;
  const mine = state;
  const params = new URLSearchParams({ page: String(state.page + 1), per_page: String(PER_PAGE) });
  if (mine.q) params.set('q', mine.q);
  if (mine.model) params.set('model', mine.model);
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
  tile.title = img.metadata.prompt;
  const pic = document.createElement('img');
  pic.alt = img.metadata.prompt;
  pic.loading = 'lazy';
  pic.width = s.width;
  pic.height = s.height;
  pic.style.setProperty('--ar', `${s.width} / ${s.height}`);
  setImage(pic, img.thumbnail_url);
  const caption = document.createElement('span');
  caption.textContent = img.metadata.prompt;
  tile.append(pic, caption);
  tile.addEventListener('click', () => open(state.images.indexOf(img)));
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
  const dialog = el('image-dialog');
  if (!dialog.open) dialog.showModal();
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

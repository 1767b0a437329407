// The generate page's "Recent generations": the newest pictures with copy
// prompt, download, delete and remix, refreshed when a job completes.

import { call, setImage } from './api.js';

const el = (id) => document.getElementById(id);
const COUNT = 8;
let remixInto = () => {};

export function initRecent({ remix }) {
  remixInto = remix;
}

export async function refreshRecent() {
  let page;
  try {
    page = await call('GET', `/api/gallery?per_page=${COUNT}`);
  } catch (e) {
    el('recent-empty').textContent = 'Could not load recent generations: ' + e.message;
    el('recent-empty').hidden = false;
    return;
  }
  const list = el('recent');
  list.textContent = '';
  for (const img of page.images) list.append(item(img));
  el('recent-empty').hidden = page.images.length > 0;
}

function item(img) {
  const m = img.metadata;
  const node = document.createElement('figure');
  node.className = 'recent-item';
  node.dataset.imageId = img.id;
  const pic = document.createElement('img');
  pic.alt = m.prompt;
  pic.loading = 'lazy';
  setImage(pic, img.thumbnail_url).catch(() => {});
  const caption = document.createElement('figcaption');
  caption.textContent = m.prompt;
  const actions = document.createElement('div');
  actions.className = 'row';
  const button = (label, cls, fn) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'ghost ' + cls;
    b.textContent = label;
    b.addEventListener('click', fn);
    actions.append(b);
  };
  button('Copy', 'copy', async () => {
    try { await navigator.clipboard.writeText(m.prompt); } catch (e) { /* no clipboard here */ }
    caption.dataset.note = 'copied';
  });
  const download = document.createElement('a');
  download.className = 'button ghost download';
  download.textContent = 'Download';
  download.href = img.url;
  download.download = `${img.id}.png`;
  actions.append(download);
  button('Remix', 'remix', () => { remixInto(m); el('prompt').focus(); });
  button('Delete', 'danger delete', async () => {
    if (!confirm('Delete this image for good?')) return;
    try {
      await call('DELETE', `/api/images/${img.id}`);
      node.remove();
      el('recent-empty').hidden = el('recent').children.length > 0;
    } catch (e) {
      caption.textContent = 'Could not delete: ' + e.message;
    }
  });
  node.append(pic, caption, actions);
  return node;
}

// The generate form's LoRA picker: the files in the server's loras/
// folder (GET /api/loras), each added with a weight (-10..10, 1 by
// default, as AUTOMATIC1111's <lora:name:1>), at most 8 per job. The
// server checks each one suits the model and says why when not.

import { call } from './api.js';

const el = (id) => document.getElementById(id);
const MAX = 8;

export async function initLoras() {
  let listed;
  try {
    listed = (await call('GET', '/api/loras')).loras;
  } catch (e) {
    return; // the picker is a nicety; prompts can still name <lora:…>
  }
  if (!listed.length) return;
  const select = el('lora-add');
  for (const l of listed) {
    const opt = document.createElement('option');
    opt.value = l.name;
    // The family its layer names give away, so a LoRA for another kind
    // of model is told apart before the server refuses it.
    opt.textContent = l.family ? `${l.name} (${l.family})` : l.name;
    opt.title = `sha256 ${l.short_hash || ''}`;
    select.append(opt);
  }
  el('lora-panel').hidden = false;
  select.addEventListener('change', () => {
    if (select.value) add(select.value, 1);
    select.value = '';
  });
}

function add(name, weight) {
  const list = el('lora-list');
  if (list.querySelector(`[data-lora="${CSS.escape(name)}"]`) || list.children.length >= MAX) return;
  const item = document.createElement('li');
  item.dataset.lora = name;
  const label = document.createElement('span');
  label.textContent = name;
  const input = document.createElement('input');
  input.type = 'number';
  input.min = '-10';
  input.max = '10';
  input.step = '0.05';
  input.value = String(weight);
  input.setAttribute('aria-label', `Weight of ${name}`);
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'ghost';
  remove.textContent = '✕';
  remove.setAttribute('aria-label', `Remove ${name}`);
  remove.addEventListener('click', () => item.remove());
  item.append(label, input, remove);
  list.append(item);
}

// The chosen LoRAs as the API takes them: [{name, weight}].
export function chosenLoras() {
  return [...el('lora-list').children].map((item) => ({
    name: item.dataset.lora,
    weight: Number(item.querySelector('input').value || 1),
  }));
}

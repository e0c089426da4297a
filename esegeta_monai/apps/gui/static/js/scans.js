// Step 2: the scans to explain — the bundle's samples, files under the roots, uploads.

import { baseName, getJson, uploadFile } from './api.js';
import { $, $$, fill, formatBytes, h, notice } from './dom.js';
import { emit, on, state } from './state.js';

const IMAGE_NAME = /\.(nii|nii\.gz|nrrd|nhdr|mha|mhd|dcm|png|jpe?g)$/i;
let roots = [];

function isChosen(id) {
  return state.scans.some((scan) => scan.id === id);
}

function setChosen(scan, chosen) {
  if (chosen && !isChosen(scan.id)) state.scans.push(scan);
  if (!chosen) state.scans = state.scans.filter((s) => s.id !== scan.id);
  renderSelected();
}

function renderSelected() {
  const list = $('#scan-selected');
  $('#scan-count').textContent = state.scans.length;
  $('#scans-next').disabled = state.scans.length === 0;
  $('#summary-scans').textContent = state.scans.length ? `${state.scans.length} scan${state.scans.length === 1 ? '' : 's'}` : 'choose images';
  if (!state.scans.length) {
    fill(list, h('li', { class: 'muted' }, 'None yet.'));
  } else {
    fill(list, state.scans.map((scan) => h('li', { class: 'selected-item' },
      h('span', { class: 'icon-file', 'aria-hidden': 'true' }),
      h('span', { class: 'selected-name', title: scan.id }, scan.name),
      h('span', { class: `tag tag-${scan.origin}` }, scan.origin),
      scan.size ? h('span', { class: 'muted small' }, formatBytes(scan.size)) : null,
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': `Remove ${scan.name}`, title: 'Remove', onclick: () => setChosen(scan, false) }, '✕'))));
  }
  for (const box of $$('input[data-scan-id]')) box.checked = isChosen(box.dataset.scanId);
  emit('scans', state.scans);
}

function renderSamples(bundle) {
  const samples = bundle.samples || [];
  state.scans = state.scans.filter((scan) => scan.origin !== 'sample');
  if (!samples.length) {
    fill($('#sample-list'), h('p', { class: 'muted' }, 'This bundle ships no sample scan: browse the folders or upload one.'));
  } else {
    const items = samples.map((id) => ({ id, name: baseName(id), origin: 'sample' }));
    for (const scan of items) state.scans.push(scan);  // preselected
    fill($('#sample-list'), h('ul', { class: 'check-list' }, items.map((scan) => h('li', {},
      h('label', { class: 'check' },
        h('input', { type: 'checkbox', checked: true, dataset: { scanId: scan.id }, onchange: (e) => setChosen(scan, e.target.checked) }),
        h('span', {}, scan.name), h('code', { class: 'muted small' }, scan.id))))));
  }
  renderSelected();
}

// -- browsing the roots -------------------------------------------------------------------

async function browse(dir) {
  const crumbs = $('#browse-crumbs');
  const list = $('#browse-list');
  notice($('#browse-message'), null);
  if (!dir) {
    fill(crumbs, h('span', {}, 'Allowed folders'));
    fill(list, roots.map((root) => h('li', {}, h('button', { type: 'button', class: 'file-row', onclick: () => browse(`${root.id}:`) },
      h('span', { class: 'icon-folder', 'aria-hidden': 'true' }),
      h('span', { class: 'file-name' }, root.name || root.path), h('code', { class: 'muted small' }, root.path)))));
    return;
  }
  let listing;
  try {
    listing = await getJson(`/api/files?dir=${encodeURIComponent(dir)}`);
  } catch (error) {
    notice($('#browse-message'), 'error', error.message);
    return;
  }
  const [rootId, rel] = [dir.slice(0, dir.indexOf(':')), dir.slice(dir.indexOf(':') + 1)];
  const root = roots.find((r) => r.id === rootId);
  const parts = rel.split('/').filter(Boolean);
  fill(crumbs,
    h('button', { type: 'button', class: 'link', onclick: () => browse(null) }, 'Folders'), ' / ',
    h('button', { type: 'button', class: 'link', onclick: () => browse(`${rootId}:`) }, root ? root.name || root.path : rootId),
    parts.map((part, i) => [' / ', h('button', { type: 'button', class: 'link', onclick: () => browse(`${rootId}:${parts.slice(0, i + 1).join('/')}`) }, part)]));
  const entries = listing.entries || [];
  if (listing.truncated) notice($('#browse-message'), 'warn', `This folder has more entries than can be listed; only the first ${entries.length} are shown.`);
  if (!entries.length) {
    fill(list, h('li', { class: 'muted' }, 'This folder is empty.'));
    return;
  }
  const sorted = [...entries].sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === 'dir' ? -1 : 1));
  fill(list, sorted.map((entry) => {
    if (entry.kind === 'dir') {
      return h('li', {}, h('button', { type: 'button', class: 'file-row', onclick: () => browse(entry.id) },
        h('span', { class: 'icon-folder', 'aria-hidden': 'true' }), h('span', { class: 'file-name' }, entry.name)));
    }
    const scan = { id: entry.id, name: entry.name, size: entry.size, origin: 'folder' };
    return h('li', {}, h('label', { class: `file-row${IMAGE_NAME.test(entry.name) ? '' : ' dim'}` },
      h('input', { type: 'checkbox', checked: isChosen(entry.id), dataset: { scanId: entry.id }, onchange: (e) => setChosen(scan, e.target.checked) }),
      h('span', { class: 'icon-file', 'aria-hidden': 'true' }),
      h('span', { class: 'file-name' }, entry.name), h('span', { class: 'muted small' }, formatBytes(entry.size))));
  }));
}

// -- uploads ------------------------------------------------------------------------------

async function upload(files) {
  const where = $('#upload-message');
  const lines = [];
  const show = () => fill(where, lines.map(([kind, text]) => h('div', { class: `notice notice-${kind}` }, text)));
  for (const file of files) {
    const line = ['info', `Uploading ${file.name} (${formatBytes(file.size)})…`];
    lines.push(line);
    show();
    try {
      const stored = await uploadFile(file);
      setChosen({ id: stored.id, name: stored.name || file.name, size: file.size, origin: 'upload' }, true);
      line.splice(0, 2, 'ok', `${file.name}: uploaded and added to the selected scans.`);
    } catch (error) {
      const why = { 413: 'Too large', 415: 'Not an image' }[error.status] || 'Refused';
      line.splice(0, 2, 'error', `${why}: ${error.message}`);
    }
    show();
  }
}

function initTabs() {
  for (const tab of $$('#step-scans .tab')) {
    tab.addEventListener('click', () => {
      for (const other of $$('#step-scans .tab')) other.setAttribute('aria-selected', String(other === tab));
      for (const pane of $$('#step-scans .pane')) pane.hidden = pane.dataset.pane !== tab.dataset.pane;
    });
  }
}

function initUpload() {
  const input = $('#upload-input');
  const zone = $('#dropzone');
  input.addEventListener('change', () => { upload(Array.from(input.files)); input.value = ''; });
  zone.addEventListener('dragover', (event) => { event.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    upload(Array.from(event.dataTransfer.files));
  });
}

export async function initScans() {
  initTabs();
  initUpload();
  on('bundle', renderSamples);
  getJson('/api/info').then((info) => {
    if (info.max_upload_mb) $('#upload-limit').textContent = `${info.max_upload_mb} MiB`;
  }).catch(() => {});
  try {
    roots = await getJson('/api/roots');
  } catch (error) {
    notice($('#browse-message'), 'error', `Could not list the folders: ${error.message}`);
  }
  browse(null);
}

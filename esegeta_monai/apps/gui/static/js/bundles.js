// Step 1: the bundles under the roots, as cards; the chosen one's metadata in a side panel.

import { getJson } from './api.js';
import { $, fill, h, notice } from './dom.js';
import { emit, state } from './state.js';

/** "image: MR magnitude, 1 channel, 96 × 96 × 64, float32" from a metadata input/output. */
function describeTensor(name, spec) {
  if (!spec || typeof spec !== 'object') return `${name}: ${spec}`;
  const parts = [];
  if (spec.modality) parts.push(spec.modality);
  if (spec.format) parts.push(spec.format);
  if (spec.type && !spec.format) parts.push(spec.type);
  if (spec.num_channels !== undefined) parts.push(`${spec.num_channels} channel${spec.num_channels === 1 ? '' : 's'}`);
  if (Array.isArray(spec.spatial_shape)) parts.push(spec.spatial_shape.join(' × '));
  if (spec.dtype) parts.push(spec.dtype);
  if (Array.isArray(spec.value_range) && spec.value_range.length) parts.push(`values ${spec.value_range.join('–')}`);
  return `${name}: ${parts.join(', ') || JSON.stringify(spec)}`;
}

function tensorList(specs) {
  if (!specs || typeof specs !== 'object' || !Object.keys(specs).length) return h('span', { class: 'muted' }, 'not stated');
  return h('ul', { class: 'plain' }, Object.entries(specs).map(([name, spec]) => h('li', {}, describeTensor(name, spec))));
}

function classList(classNames) {
  const entries = Object.entries(classNames || {});
  if (!entries.length) return h('span', { class: 'muted' }, 'not stated');
  return h('div', { class: 'tags' }, entries.map(([index, name]) => h('span', { class: 'tag' }, h('b', {}, index), ` ${name}`)));
}

function windowList(window) {
  if (!window || typeof window !== 'object' || !Object.keys(window).length) {
    return h('span', { class: 'muted' }, 'the whole image in one pass');
  }
  const show = (value) => (Array.isArray(value) ? value.join(' × ') : String(value));
  return h('dl', { class: 'kv' }, Object.entries(window).flatMap(([key, value]) => [h('dt', {}, key.replaceAll('_', ' ')), h('dd', {}, show(value))]));
}

/** What one case of the bundle is: "one file", or its files by key (or by channel when stacked). */
function caseText(caseLayout) {
  if (!caseLayout || !caseLayout.several) return 'one file per scan';
  const slots = caseLayout.slots;
  if (slots.every((slot) => slot.key === slots[0].key)) {
    return `${slots.length} files stacked as the channels of "${slots[0].key}": ${slots.map((s) => s.label.replace(/ \(channel.*\)$/, '')).join(', ')}`;
  }
  return `${slots.length} files, one per key: ${slots.map((s) => s.key).join(', ')}`;
}

export function bundleKind(bundle) {
  const dims = bundle.spatial_dims ? `${bundle.spatial_dims}D` : '';
  return `${dims} ${bundle.classifier ? 'classifier' : 'segmentation'}`.trim();
}

function renderDetail(bundle) {
  if (bundle.error) {
    fill($('#bundle-detail'), h('h3', {}, bundle.name), notice(h('div'), 'error', bundle.error));
    return;
  }
  const rows = [
    ['Folder', h('code', {}, bundle.path || bundle.id)],
    ['Task', bundle.task ? `${bundle.task} (${bundleKind(bundle)})` : bundleKind(bundle)],
    ['Inputs', tensorList(bundle.inputs)],
    ['Outputs', tensorList(bundle.outputs)],
    ['A case', caseText(bundle.case)],
    ['Classes', classList(bundle.class_names)],
    ['Window', windowList(bundle.window)],
    ['Samples', (bundle.samples || []).length ? `${bundle.samples.length} file(s) shipped with the bundle` : h('span', { class: 'muted' }, 'none')],
    ['Weights', bundle.has_weights === false ? h('span', { class: 'text-warn' }, 'models/model.pt is missing') : 'models/model.pt'],
  ];
  if (bundle.version) rows.push(['Version', String(bundle.version)]);
  if (bundle.license) rows.push(['Licence', String(bundle.license)]);
  fill($('#bundle-detail'),
    h('h3', {}, bundle.name),
    bundle.description ? h('p', { class: 'description' }, bundle.description) : null,
    bundle.intended_use ? h('p', { class: 'intended' }, h('b', {}, 'Intended use: '), bundle.intended_use) : null,
    h('table', { class: 'facts' }, h('tbody', {}, rows.map(([label, value]) => h('tr', {}, h('th', { scope: 'row' }, label), h('td', {}, value))))));
}

function card(bundle) {
  const classes = Object.keys(bundle.class_names || {}).length;
  return h('button', {
    type: 'button', class: `card bundle-card${bundle.error ? ' card-error' : ''}`, role: 'radio', 'aria-checked': 'false', dataset: { bundleId: bundle.id },
    onclick: () => (bundle.error ? renderDetail(bundle) : choose(bundle)),
  },
  h('span', { class: 'card-title' }, bundle.name),
  h('code', { class: 'card-path' }, bundle.path || bundle.id),
  bundle.description ? h('span', { class: 'card-text' }, bundle.description) : null,
  bundle.error ? h('span', { class: 'card-text text-error' }, 'Cannot be read: see the details.') : null,
  bundle.error ? null : h('span', { class: 'tags' },
    h('span', { class: 'tag tag-accent' }, bundleKind(bundle)),
    classes ? h('span', { class: 'tag' }, `${classes} classes`) : null,
    (bundle.samples || []).length ? h('span', { class: 'tag' }, `${bundle.samples.length} sample${bundle.samples.length === 1 ? '' : 's'}`) : null));
}

function choose(bundle) {
  state.bundle = bundle;
  for (const node of document.querySelectorAll('.bundle-card')) {
    node.setAttribute('aria-checked', String(node.dataset.bundleId === bundle.id));
  }
  renderDetail(bundle);
  $('#bundle-next').disabled = false;
  $('#summary-bundle').textContent = bundle.name;
  emit('bundle', bundle);
}

export async function initBundles() {
  try {
    state.bundles = await getJson('/api/bundles');
  } catch (error) {
    notice($('#bundle-message'), 'error', `Could not list the bundles: ${error.message}`);
    fill($('#bundle-list'));
    return;
  }
  if (!state.bundles.length) {
    fill($('#bundle-list'), h('p', { class: 'muted' }, 'No bundle was found under the allowed folders. Start the GUI with --root pointing at a folder that holds a bundle (a folder with configs/metadata.json).'));
    return;
  }
  fill($('#bundle-list'), state.bundles.map(card));
  const readable = state.bundles.filter((b) => !b.error);
  if (readable.length === 1) choose(readable[0]);
}

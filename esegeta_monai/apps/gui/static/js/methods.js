// Step 3: every registered method with a form made from its parameter table, the targets and
// the device; the Run button sends the job.

import { getJson, sendJson } from './api.js';
import { $, $$, fill, h, notice } from './dom.js';
import { emit, on, state } from './state.js';
import { caseMode, casePairs } from './case.js';
import { parseValue, sameValue, showValue } from './values.js';

const FAMILIES = {
  gradient: 'Gradients',
  cam: 'Class activation maps (CAM)',
  layer: 'Layer attribution',
  perturbation: 'Perturbation',
  relevance: 'Relevance propagation',
  visualisation: 'Feature visualisation',
};
const layersByBundle = new Map();  // bundle id → Promise of [{name, type, shape}]

const isLayerParam = (param) => param.name === 'layer' || param.name.endsWith('_layer');
const fieldId = (method, param) => `opt-${method}-${param}`;

// -- compatibility with the bundle ---------------------------------------------------------

/** Why `method` cannot run on `bundle` (its dims or tasks), or null. */
function incompatibility(method, bundle) {
  if (!bundle) return null;
  const dims = String(method.dims || '');
  if (bundle.spatial_dims && /\dD/.test(dims) && !dims.split('/').includes(`${bundle.spatial_dims}D`)) {
    return `works on ${dims} images; this bundle is ${bundle.spatial_dims}D`;
  }
  const tasks = String(method.tasks || '');
  const task = bundle.classifier ? 'classification' : 'segmentation';
  if (/classification|segmentation/.test(tasks) && !tasks.includes(task)) return `for ${tasks} only`;
  return null;
}

// -- the option fields ---------------------------------------------------------------------

function layerOptions(select, param, layers) {
  const current = select.value;
  fill(select,
    h('option', { value: '' }, param.default === null ? '(not set)' : `default: ${showValue(param.default)}`),
    layers.map((layer) => h('option', { value: layer.name },
      `${layer.name} — ${layer.type}${layer.shape ? ` (${[].concat(layer.shape).join(', ')})` : ''}`)));
  select.value = current;
}

function input(method, param) {
  const id = fieldId(method.name, param.name);
  const common = { id, dataset: { method: method.name, param: param.name } };
  if (isLayerParam(param)) {
    const select = h('select', common, h('option', { value: '' }, 'loading the layers…'));
    loadLayers().then((layers) => layerOptions(select, param, layers)).catch((error) => {
      fill(select, h('option', { value: '' }, `could not list layers: ${error.message}`));
    });
    return select;
  }
  if (Array.isArray(param.choices) && param.choices.length) {
    return h('select', common, param.choices.map((choice, i) => h('option', { value: String(i), selected: sameValue(choice, param.default) }, showValue(choice))));
  }
  if (param.type === 'bool' && typeof param.default === 'boolean') {
    return h('input', { ...common, type: 'checkbox', checked: param.default });
  }
  if (param.type === 'int' || param.type === 'float') {
    return h('input', {
      ...common, type: 'number', step: param.type === 'int' ? '1' : 'any', inputmode: 'decimal',
      value: param.default === null ? '' : String(param.default), placeholder: param.default === null ? 'not set' : '',
    });
  }
  return h('input', {
    ...common, type: 'text', spellcheck: false, autocomplete: 'off',
    value: param.default === null ? '' : showValue(param.default), placeholder: param.default === null ? 'not set' : '',
  });
}

function field(method, param) {
  const control = input(method, param);
  const checkbox = control.type === 'checkbox';
  const label = h('label', { for: control.id, class: 'field-label' }, param.name);
  const expects = param.expects && !checkbox && !(Array.isArray(param.choices) && param.choices.length)
    && !String(param.help || '').toLowerCase().includes(param.expects.toLowerCase()) ? `(${param.expects})` : '';
  const hint = [param.help, expects].filter(Boolean).join(' ');
  return h('div', { class: `field option${checkbox ? ' option-check' : ''}` },
    checkbox ? h('div', { class: 'check' }, control, label) : [label, control],
    hint ? h('small', { class: 'hint' }, hint) : null);
}

/** The options of a checked method that differ from its defaults, or throws naming the field. */
function readOptions(method) {
  const options = {};
  for (const param of method.params || []) {
    const control = document.getElementById(fieldId(method.name, param.name));
    if (!control) continue;
    let value;
    if (control.type === 'checkbox') value = control.checked;
    else if (control.tagName === 'SELECT' && Array.isArray(param.choices) && param.choices.length && !isLayerParam(param)) value = param.choices[Number(control.value)];
    else if (control.value.trim() === '') continue;  // empty: the default
    else value = parseValue(control.value, param.type, `${method.name}: ${param.name}`);
    if (!sameValue(value, param.default)) options[param.name] = value;
  }
  return options;
}

// -- the method list -----------------------------------------------------------------------

function optionsBlock(method, hidden) {
  const params = method.params || [];
  const block = h('div', { class: 'method-options', hidden },
    params.length ? h('div', { class: 'option-grid' }, params.map((param) => field(method, param)))
      : h('p', { class: 'muted small' }, 'This method has no options.'),
    params.length ? h('button', { type: 'button', class: 'btn btn-small', onclick: () => block.replaceWith(optionsBlock(method, false)) }, 'Reset to defaults') : null);
  return block;
}

function methodRow(method) {
  const checkbox = h('input', { type: 'checkbox', id: `method-${method.name}`, dataset: { methodName: method.name } });
  const row = h('div', { class: 'method', dataset: { method: method.name, search: [method.name, method.family, method.library, method.summary].join(' ').toLowerCase() } },
    h('label', { class: 'method-head', for: checkbox.id },
      checkbox,
      h('span', { class: 'method-name' }, method.name),
      h('span', { class: 'tag method-library', title: method.library }, method.library),
      h('span', { class: 'method-summary' }, method.summary),
      h('span', { class: 'method-why' })),
    optionsBlock(method, true));
  checkbox.addEventListener('change', () => {
    row.querySelector('.method-options').hidden = !checkbox.checked;
    row.classList.toggle('checked', checkbox.checked);
    if (checkbox.checked) state.chosen.set(method.name, method);
    else state.chosen.delete(method.name);
    changed();
  });
  return row;
}

function renderMethods() {
  const groups = new Map();
  for (const method of state.methods) {
    if (!groups.has(method.family)) groups.set(method.family, []);
    groups.get(method.family).push(method);
  }
  const order = [...Object.keys(FAMILIES), ...[...groups.keys()].filter((f) => !(f in FAMILIES)).sort()];
  fill($('#method-groups'), order.filter((family) => groups.has(family)).map((family) => h('section', { class: 'method-group', dataset: { family } },
    h('h3', {}, FAMILIES[family] || family, ' ', h('span', { class: 'count' }, groups.get(family).length)),
    groups.get(family).sort((a, b) => a.name.localeCompare(b.name)).map(methodRow))));
  markCompatibility();
}

function markCompatibility() {
  for (const method of state.methods) {
    const row = document.querySelector(`.method[data-method="${CSS.escape(method.name)}"]`);
    if (!row) continue;
    const why = incompatibility(method, state.bundle);
    const checkbox = row.querySelector('input[data-method-name]');
    row.classList.toggle('unavailable', Boolean(why));
    checkbox.disabled = Boolean(why);
    row.querySelector('.method-why').textContent = why ? `Not for this bundle: ${why}` : '';
    if (why && checkbox.checked) { checkbox.checked = false; checkbox.dispatchEvent(new Event('change')); }
  }
}

function search(text) {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean);
  for (const row of $$('.method')) row.hidden = !words.every((word) => row.dataset.search.includes(word));
  for (const group of $$('.method-group')) group.hidden = !group.querySelector('.method:not([hidden])');
}

// -- layers, targets, the plan -------------------------------------------------------------

function loadLayers() {
  const bundle = state.bundle;
  if (!bundle) return Promise.reject(new Error('choose a bundle first'));
  if (!layersByBundle.has(bundle.id)) {
    const path = `/api/bundles/${bundle.id.split('/').map(encodeURIComponent).join('/')}/layers`;
    const promise = getJson(path);
    promise.catch(() => layersByBundle.delete(bundle.id));
    layersByBundle.set(bundle.id, promise);
  }
  return layersByBundle.get(bundle.id);
}

function defaultTargets(bundle) {
  if (bundle && Array.isArray(bundle.default_targets) && bundle.default_targets.length) return bundle.default_targets.join(', ');
  return bundle && bundle.classifier ? 'class:1' : 'argmax:1';
}

/** The devices the server has (GET /api/info), as the device select's options. */
async function loadDevices() {
  let devices = ['cpu'];
  try {
    const info = await getJson('/api/info');
    if (Array.isArray(info.devices) && info.devices.length) devices = info.devices;
  } catch {
    devices = ['cpu', 'cuda'];  // an older server: offer both, the server checks
  }
  const label = (d) => (d === 'cpu' ? 'CPU' : d.startsWith('cuda') ? `GPU ${d}` : d);
  fill($('#device'), devices.map((d) => h('option', { value: d }, label(d))));
  $('#device').value = devices.find((d) => d.startsWith('cuda')) || devices[0];
}

function targets() {
  return $('#targets').value.split(/[,\s]+/).map((t) => t.trim()).filter(Boolean);
}

function changed() {
  const methods = state.chosen.size;
  const asCase = caseMode();
  const scans = asCase ? (casePairs() ? 1 : 0) : state.scans.length;
  const unit = asCase ? 'case' : 'scan';
  const count = targets().length;
  $('#summary-methods').textContent = methods ? `${methods} method${methods === 1 ? '' : 's'}` : 'choose methods';
  const missing = [!state.bundle && 'a bundle (step 1)', !scans && `${asCase ? 'a complete case' : 'a scan'} (step 2)`,
    !methods && 'a method', !count && 'a target'].filter(Boolean);
  fill($('#plan-summary'), missing.length
    ? h('p', { class: 'muted' }, `Still needed: ${missing.join(', ')}.`)
    : h('p', {}, h('b', {}, `${scans * methods * count} map${scans * methods * count === 1 ? '' : 's'}`),
      ` = ${scans} ${unit}${scans === 1 ? '' : 's'} × ${methods} method${methods === 1 ? '' : 's'} × ${count} target${count === 1 ? '' : 's'}`));
  $('#run-button').disabled = missing.length > 0;
  emit('methods', state.chosen);
}

function onBundle(bundle) {
  $('#targets').value = defaultTargets(bundle);
  const classes = Object.entries(bundle.class_names || {}).map(([i, name]) => `${i} ${name}`).join(', ');
  $('#target-classes').textContent = classes ? `This bundle's classes: ${classes}.` : '';
  for (const select of $$('#method-groups select[data-param]')) {
    const method = state.methods.find((m) => m.name === select.dataset.method);
    const param = method && method.params.find((p) => p.name === select.dataset.param);
    if (param && isLayerParam(param)) loadLayers().then((layers) => layerOptions(select, param, layers)).catch(() => {});
  }
  markCompatibility();
  changed();
}

async function run() {
  const message = $('#submit-message');
  let methods;
  try {
    methods = [...state.chosen.values()].map((method) => ({ name: method.name, options: readOptions(method) }));
  } catch (error) {
    notice(message, 'error', error.message);
    return;
  }
  const timeout = $('#timeout').value.trim();
  const body = {
    bundle: state.bundle.id,
    ...(caseMode() ? { case: casePairs() } : { images: state.scans.map((scan) => scan.id) }),
    methods,
    targets: targets(),
    device: $('#device').value,
    amp: $('#amp').checked,
    timeout: timeout === '' ? null : Number(timeout),
    layer: null,
  };
  const button = $('#run-button');
  button.disabled = true;
  notice(message, 'info', 'Starting…');
  try {
    const job = await sendJson('POST', '/api/jobs', body);
    notice(message, 'ok', `Job ${job.id} started.`);
    emit('job-started', job.id);
    emit('goto', 'run');
  } catch (error) {
    notice(message, 'error', error.message);
  } finally {
    button.disabled = false;
  }
}

export async function initMethods() {
  $('#method-search').addEventListener('input', (event) => search(event.target.value));
  $('#targets').addEventListener('input', changed);
  $('#run-button').addEventListener('click', run);
  on('bundle', onBundle);
  on('scans', changed);
  on('case', changed);
  loadDevices();
  try {
    state.methods = await getJson('/api/methods');
  } catch (error) {
    notice($('#method-groups'), 'error', `Could not list the methods: ${error.message}`);
    return;
  }
  renderMethods();
  changed();
}

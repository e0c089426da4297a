// Step 2, for a bundle whose case is several files (CT phases under their own keys, MRI
// sequences stacked as channels): one picker per file of the case, in the bundle's order, filled
// from the selected scans. The job then gets `case: [[key, file id], …]` instead of `images`.

import { $, fill, h } from './dom.js';
import { emit, on, state } from './state.js';

let slots = [];     // the bundle's case.slots: [{key, label}]
let chosen = [];    // the file id picked for each slot ('' when none)

/** Whether the chosen bundle reads a case of several files. */
export const caseMode = () => Boolean(state.bundle && state.bundle.case && state.bundle.case.several);

/** The case as [[key, file id], …] in slot order, or null while a slot is empty or a file is in two. */
export function casePairs() {
  if (!caseMode() || chosen.some((id) => !id) || new Set(chosen).size < chosen.length) return null;
  return slots.map((slot, i) => [slot.key, chosen[i]]);
}

function nameOf(id) {
  const scan = state.scans.find((s) => s.id === id);
  return scan ? scan.name : id;
}

/** Keep picks that are still selected scans; give empty slots the next unused scans, in order. */
function autofill() {
  const ids = state.scans.map((s) => s.id);
  chosen = slots.map((_, i) => (ids.includes(chosen[i]) ? chosen[i] : ''));
  const unused = ids.filter((id) => !chosen.includes(id));
  chosen = chosen.map((id) => id || unused.shift() || '');
}

function render() {
  const panel = $('#case-panel');
  panel.hidden = !caseMode();
  if (!caseMode()) return;
  const keys = state.bundle.case.keys || {};
  const stacked = slots.every((slot) => slot.key === slots[0].key);
  fill($('#case-lead'), stacked
    ? `This bundle stacks ${slots.length} files as the channels of "${slots[0].key}", in this order. `
    : `This bundle reads one file under each of the keys ${(keys.required || []).join(', ')}. `,
  'Select the files on the left, then check that each one is in its place.');
  fill($('#case-slots'), slots.map((slot, i) => h('li', { class: 'case-slot' },
    h('label', { class: 'case-label', for: `case-slot-${i}` },
      h('span', { class: 'case-num' }, String(i + 1)),
      h('span', {}, slot.label), slot.label !== slot.key ? h('code', { class: 'muted small' }, slot.key) : null),
    h('select', { id: `case-slot-${i}`, dataset: { caseKey: slot.key }, onchange: (e) => { chosen[i] = e.target.value; changed(); } },
      h('option', { value: '' }, state.scans.length ? '— choose a file —' : '— select files first —'),
      state.scans.map((scan) => h('option', { value: scan.id, selected: scan.id === chosen[i] }, scan.name))))));
  const pairs = casePairs();
  const twice = chosen.filter((id, i) => id && chosen.indexOf(id) !== i);
  fill($('#case-status'), twice.length
    ? h('div', { class: 'notice notice-warn', role: 'status' }, `${nameOf(twice[0])} is in two places.`)
    : pairs ? h('div', { class: 'notice notice-ok', role: 'status' }, `One case of ${pairs.length} files: ready.`)
      : h('p', { class: 'muted small' }, `${chosen.filter(Boolean).length} of ${slots.length} files chosen.`));
}

function changed() {
  render();
  if (!caseMode()) return;
  const pairs = casePairs();
  $('#scans-next').disabled = !pairs;
  $('#summary-scans').textContent = pairs ? `1 case of ${pairs.length} files` : `a case of ${slots.length} files`;
  emit('case', pairs);
}

export function initCase() {
  on('bundle', (bundle) => {
    slots = (bundle.case && bundle.case.slots) || [];
    chosen = slots.map(() => '');
    autofill();
    changed();
  });
  on('scans', () => { autofill(); changed(); });
}

// What the user has chosen so far, shared by the steps; a change is announced as an event
// ("bundle", "scans", "methods", "jobs", "step") that the steps listen to.

export const state = {
  bundles: [],        // GET /api/bundles
  bundle: null,       // the chosen bundle
  scans: [],          // [{id, name, size, origin: 'sample'|'folder'|'upload'}]
  methods: [],        // GET /api/methods
  chosen: new Map(),  // method name → {options: {...}} of the checked methods
  jobs: new Map(),    // job id → the latest job JSON
  job: null,          // the job whose results are shown
};

const listeners = new Map();

export function on(event, listener) {
  if (!listeners.has(event)) listeners.set(event, []);
  listeners.get(event).push(listener);
}

export function emit(event, detail) {
  for (const listener of listeners.get(event) || []) listener(detail);
}

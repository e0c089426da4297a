// Option values between the form and the JSON the API takes.

/** A value shown in a field: strings as they are, the rest as JSON (null → "None" is not used). */
export function showValue(value) {
  if (typeof value === 'string') return value;
  if (value === null || value === undefined) return '';
  return JSON.stringify(value);
}

/** Whether two option values are the same (deep, for lists and objects). */
export function sameValue(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

const PYTHON_WORDS = { True: true, False: false, None: null, true: true, false: false, null: null };

/** The value of a text field for a parameter of `type`; throws an Error naming `what`. */
export function parseValue(text, type, what) {
  const raw = text.trim();
  if (type === 'int') {
    if (!/^[+-]?\d+$/.test(raw)) throw new Error(`${what}: "${raw}" is not a whole number`);
    return Number.parseInt(raw, 10);
  }
  if (type === 'float') {
    const number = Number(raw);
    if (raw === '' || !Number.isFinite(number)) throw new Error(`${what}: "${raw}" is not a number`);
    return number;
  }
  if (type === 'bool') {
    if (!(raw in PYTHON_WORDS) || PYTHON_WORDS[raw] === null) throw new Error(`${what}: "${raw}" is not true or false`);
    return PYTHON_WORDS[raw];
  }
  if (type === 'str') return raw;
  // any: a number, a list, true/false/None, else the text itself
  if (raw in PYTHON_WORDS) return PYTHON_WORDS[raw];
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

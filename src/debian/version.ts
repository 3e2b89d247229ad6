/**
 * Debian version strings and dependency fields (deb-version(7), Debian Policy §7.1).
 */

function order(c: string | undefined): number {
  if (c === undefined) return 0
  if (c === '~') return -1
  if (/[A-Za-z]/.test(c)) return c.charCodeAt(0)
  return c.charCodeAt(0) + 256
}

function compareFragment(a: string, b: string): number {
  let i = 0
  let j = 0
  while (i < a.length || j < b.length) {
    let firstDiff = 0
    while ((i < a.length && !/[0-9]/.test(a[i]!)) || (j < b.length && !/[0-9]/.test(b[j]!))) {
      const ac = i < a.length && !/[0-9]/.test(a[i]!) ? order(a[i]) : 0
      const bc = j < b.length && !/[0-9]/.test(b[j]!) ? order(b[j]) : 0
      if (ac !== bc) return ac - bc
      i++
      j++
    }
    while (a[i] === '0') i++
    while (b[j] === '0') j++
    while (i < a.length && /[0-9]/.test(a[i]!) && j < b.length && /[0-9]/.test(b[j]!)) {
      if (!firstDiff) firstDiff = a.charCodeAt(i) - b.charCodeAt(j)
      i++
      j++
    }
    if (i < a.length && /[0-9]/.test(a[i]!)) return 1
    if (j < b.length && /[0-9]/.test(b[j]!)) return -1
    if (firstDiff) return firstDiff
  }
  return 0
}

function split(v: string): {epoch: number; upstream: string; revision: string} {
  const colon = v.indexOf(':')
  const epoch = colon >= 0 ? Number(v.slice(0, colon)) : 0
  const rest = colon >= 0 ? v.slice(colon + 1) : v
  const dash = rest.lastIndexOf('-')
  return dash >= 0 ? {epoch, upstream: rest.slice(0, dash), revision: rest.slice(dash + 1)} : {epoch, upstream: rest, revision: ''}
}

/** Compare two Debian versions like `dpkg --compare-versions`: <0, 0 or >0. */
export function compareDebianVersions(a: string, b: string): number {
  const va = split(a)
  const vb = split(b)
  if (va.epoch !== vb.epoch) return va.epoch - vb.epoch
  return compareFragment(va.upstream, vb.upstream) || compareFragment(va.revision, vb.revision)
}

export type VersionOp = '<<' | '<=' | '=' | '>=' | '>>'

export interface DepAlternative {
  name: string
  /** Multi-arch qualifier (`any`, `native`, or an architecture), if any. */
  archQualifier?: string
  op?: VersionOp
  version?: string
}

/** Does `version` satisfy `op constraint`? */
export function satisfies(version: string, op: VersionOp | undefined, constraint: string | undefined): boolean {
  if (!op || constraint === undefined) return true
  const c = compareDebianVersions(version, constraint)
  switch (op) {
    case '<<':
      return c < 0
    case '<=':
      return c <= 0
    case '=':
      return c === 0
    case '>=':
      return c >= 0
    case '>>':
      return c > 0
  }
}

const ALT_RE = /^([a-z0-9][a-z0-9+.-]*)(?::([a-z0-9-]+))?\s*(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s]+)\s*\))?\s*(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$/

/**
 * Parse a Depends/Pre-Depends field into groups of alternatives (`a | b, c` → [[a, b], [c]]).
 * Obsolete `<`/`>` operators mean `<=`/`>=` (Policy §7.1).
 */
export function parseDepends(field: string): DepAlternative[][] {
  const groups: DepAlternative[][] = []
  for (const group of field.split(',')) {
    if (!group.trim()) continue
    const alts: DepAlternative[] = []
    for (const alt of group.split('|')) {
      const m = ALT_RE.exec(alt.trim())
      if (!m) throw new Error(`cannot parse dependency '${alt.trim()}' in '${field}'`)
      const op = m[3] === '<' ? '<=' : m[3] === '>' ? '>=' : (m[3] as VersionOp | undefined)
      alts.push({name: m[1]!, ...(m[2] ? {archQualifier: m[2]} : {}), ...(op ? {op, version: m[4]!} : {})})
    }
    groups.push(alts)
  }
  return groups
}

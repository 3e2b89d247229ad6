/**
 * Elements: directories with an `element.yaml` manifest, optional files and EJS templates, and
 * hook scripts in diskimage-builder's phase directories.
 *
 * Search order: the spec's elementPaths (in order), then $RDK_ELEMENTS_PATH (colon-separated), then
 * the built-in `elements/` directory of rdk. The first directory holding an element of a name wins;
 * later ones are reported as shadowed by `rdk elements`.
 *
 * resolveElements() pulls in dependencies, checks conflicts and `provides`, and orders the elements
 * topologically (dependencies first; ties broken by name, so the order is stable).
 */
import {readFile, readdir, stat} from 'node:fs/promises'
import {join, resolve, sep} from 'node:path'
import {fileURLToPath} from 'node:url'
import {ElementError} from './errors.js'
import {ELEMENT_NAME_RE} from './spec.js'
import {normalisePath, TreeError} from './tree.js'
import {nearNames, parseMode, YamlFile} from './yaml.js'

/** diskimage-builder's hook phases, in the order they run. */
export const HOOK_PHASES = [
  'root.d',
  'extra-data.d',
  'pre-install.d',
  'install.d',
  'post-install.d',
  'post-root.d',
  'block-device.d',
  'pre-finalise.d',
  'finalise.d',
  'cleanup.d',
] as const
export type HookPhase = (typeof HOOK_PHASES)[number]

/** Hook script names: `NN-name` (DIB's convention); anything else in a phase dir is ignored. */
export const HOOK_NAME_RE = /^(\d+)-[A-Za-z0-9_.-]+$/

export const BUILTIN_ELEMENTS_DIR = fileURLToPath(new URL('../../elements', import.meta.url))

export interface PackageRequest {
  name: string
  /** Globs of the package's files to keep (all when undefined); honoured by the Debian layer. */
  files?: string[]
}

export interface ElementManifest {
  description: string
  depends: string[]
  provides: string[]
  conflicts: string[]
  packages: PackageRequest[]
  dirs: {path: string; mode: number; owner?: string}[]
  files: {path: string; source: string; mode?: number; owner?: string}[]
  templates: {path: string; template: string; mode?: number; owner?: string}[]
  symlinks: {path: string; target: string}[]
  devices: {path: string; kind: 'char' | 'block'; major: number; minor: number; mode: number}[]
}

export interface Hook {
  phase: HookPhase
  /** Script file name (`50-configure`). */
  name: string
  /** Numeric prefix. */
  order: number
  path: string
  element: string
}

export interface Element {
  name: string
  /** Absolute directory. */
  dir: string
  /** The search path it was found in, and whether that is rdk's built-in directory. */
  searchPath: string
  builtin: boolean
  manifest: ElementManifest
  /** Executable hooks by phase, each list in run order. */
  hooks: Partial<Record<HookPhase, Hook[]>>
  /** NN-name files in phase dirs that are not run because they are not executable. */
  ignoredHooks: string[]
}

export interface ElementLocation {
  name: string
  dir: string
  searchPath: string
  builtin: boolean
}

const MANIFEST_KEYS = ['description', 'depends', 'provides', 'conflicts', 'packages', 'dirs', 'files', 'templates', 'symlinks', 'devices'] as const

/** Search paths in order: user paths, $RDK_ELEMENTS_PATH, built-in. */
export function elementSearchPaths(
  userPaths: readonly string[],
  env: Record<string, string | undefined> = process.env,
  builtinDir = BUILTIN_ELEMENTS_DIR,
): string[] {
  const fromEnv = (env.RDK_ELEMENTS_PATH ?? '')
    .split(':')
    .filter(Boolean)
    .map((p) => resolve(p))
  return [...new Set([...userPaths.map((p) => resolve(p)), ...fromEnv, resolve(builtinDir)])]
}

/** All elements in the search paths (first wins) plus the shadowed ones. */
export class ElementCatalog {
  readonly searchPaths: string[]
  readonly builtinDir: string
  private readonly found = new Map<string, ElementLocation>()
  readonly shadowed: ElementLocation[] = []
  private readonly loaded = new Map<string, Promise<Element>>()

  private constructor(searchPaths: string[], builtinDir: string) {
    this.searchPaths = searchPaths
    this.builtinDir = resolve(builtinDir)
  }

  static async scan(searchPaths: string[], builtinDir = BUILTIN_ELEMENTS_DIR): Promise<ElementCatalog> {
    const cat = new ElementCatalog(searchPaths, builtinDir)
    for (const sp of searchPaths) {
      let names: string[]
      try {
        names = (await readdir(sp)).sort()
      } catch (err) {
        if (resolve(sp) === cat.builtinDir) continue
        throw new ElementError(`element path ${sp}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (err as Error).message}`)
      }
      for (const name of names) {
        const dir = join(sp, name)
        if (
          !(await stat(join(dir, 'element.yaml')).then(
            (s) => s.isFile(),
            () => false,
          ))
        )
          continue
        const loc = {name, dir, searchPath: sp, builtin: resolve(sp) === cat.builtinDir}
        if (cat.found.has(name)) cat.shadowed.push(loc)
        else cat.found.set(name, loc)
      }
    }
    return cat
  }

  names(): string[] {
    return [...this.found.keys()].sort()
  }

  location(name: string): ElementLocation | undefined {
    return this.found.get(name)
  }

  has(name: string): boolean {
    return this.found.has(name)
  }

  /** Load (once) and validate an element. */
  load(name: string): Promise<Element> {
    let p = this.loaded.get(name)
    if (!p) {
      const loc = this.found.get(name)
      if (!loc) return Promise.reject(this.unknown(name))
      p = loadElement(loc)
      this.loaded.set(name, p)
    }
    return p
  }

  unknown(name: string, requiredBy?: string): ElementError {
    const near = nearNames(name, this.found.keys())
    return new ElementError(
      `unknown element '${name}'${requiredBy ? ` (required by ${requiredBy})` : ''}` +
        (near.length ? `; did you mean ${near.map((n) => `'${n}'`).join(' or ')}?` : '') +
        `; searched: ${this.searchPaths.map((p) => (resolve(p) === this.builtinDir ? `${p} (built-in)` : p)).join(', ')}`,
      {hint: 'rdk elements lists the elements rdk can find; --elements-path DIR (or $RDK_ELEMENTS_PATH) adds a directory'},
    )
  }
}

function asStringList(y: YamlFile, key: string, data: Record<string, unknown>): string[] {
  const v = data[key]
  if (v === undefined || v === null) return []
  if (typeof v === 'string') return [v]
  if (!Array.isArray(v)) throw new ElementError(`${y.where([key])}: ${key}: expected a list of names, got ${typeof v}`)
  return v.map((x, i) => {
    if (typeof x !== 'string' || !x.trim()) throw new ElementError(`${y.where([key, i])}: ${key}[${i}]: expected a name, got ${JSON.stringify(x)}`)
    return x.trim()
  })
}

function imagePath(y: YamlFile, at: (string | number)[], p: string): string {
  if (!p.startsWith('/')) throw new ElementError(`${y.where(at, true)}: image path '${p}' must be absolute (start with /)`)
  try {
    return normalisePath(p)
  } catch (err) {
    if (err instanceof TreeError) throw new ElementError(`${y.where(at, true)}: ${err.message}`)
    throw err
  }
}

/** A path inside the element directory (no escaping it). */
function insideElement(y: YamlFile, at: (string | number)[], dir: string, rel: unknown): string {
  if (typeof rel !== 'string' || !rel) throw new ElementError(`${y.where(at)}: expected a file name inside the element directory, got ${JSON.stringify(rel)}`)
  const abs = resolve(dir, rel)
  if (abs !== dir && !abs.startsWith(dir + sep)) throw new ElementError(`${y.where(at)}: '${rel}' is outside the element directory`)
  return abs
}

function mapEntries(y: YamlFile, key: string, data: Record<string, unknown>): [string, unknown][] {
  const v = data[key]
  if (v === undefined || v === null) return []
  if (typeof v !== 'object' || Array.isArray(v))
    throw new ElementError(`${y.where([key])}: ${key}: expected a mapping of image path → ${key === 'symlinks' ? 'target' : 'source'}`)
  return Object.entries(v as Record<string, unknown>)
}

function objectWith(y: YamlFile, at: (string | number)[], v: unknown, allowed: string[]): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ElementError(`${y.where(at)}: expected a mapping with ${allowed.join(', ')}`)
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) throw new ElementError(`${y.where([...at, k], true)}: unknown key '${k}' (allowed: ${allowed.join(', ')})`)
  }
  return v as Record<string, unknown>
}

function optOwner(y: YamlFile, at: (string | number)[], v: unknown): string | undefined {
  if (v === undefined) return undefined
  if (typeof v === 'number') return String(v)
  if (typeof v !== 'string' || !v) throw new ElementError(`${y.where(at)}: owner must be a string like root, 0:0 or user:group`)
  return v
}

/** Parse and check an element.yaml (sources must exist; keys are known; paths are absolute). */
export async function parseManifest(text: string, file: string, dir: string): Promise<ElementManifest> {
  const y = YamlFile.parse(file, text, (m) => new ElementError(m))
  const raw = y.data ?? {}
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new ElementError(`${file}: an element manifest must be a mapping (description:, depends:, …)`)
  const data = raw as Record<string, unknown>
  for (const key of Object.keys(data)) {
    if (!(MANIFEST_KEYS as readonly string[]).includes(key)) {
      const near = nearNames(key, MANIFEST_KEYS)
      throw new ElementError(
        `${y.where([key], true)}: unknown key '${key}'${near.length ? ` (did you mean '${near[0]}'?)` : ''}; known keys: ${MANIFEST_KEYS.join(', ')}`,
      )
    }
  }
  const mode = (at: (string | number)[], v: unknown) => parseMode(v, y.sourceText(at), y.where(at), (m) => new ElementError(m))
  const description = data.description ?? ''
  if (typeof description !== 'string') throw new ElementError(`${y.where(['description'])}: description must be a string`)

  const packages: PackageRequest[] = []
  const rawPkgs = data.packages ?? []
  if (!Array.isArray(rawPkgs)) throw new ElementError(`${y.where(['packages'])}: packages: expected a list (of names, or {name, files})`)
  rawPkgs.forEach((p, i) => {
    const at = ['packages', i]
    const pkgName = /^[a-z0-9][a-z0-9+.-]+$/
    if (typeof p === 'string') {
      if (!pkgName.test(p)) throw new ElementError(`${y.where(at)}: '${p}' is not a Debian package name`)
      packages.push({name: p})
      return
    }
    const o = objectWith(y, at, p, ['name', 'files'])
    if (typeof o.name !== 'string' || !pkgName.test(o.name)) throw new ElementError(`${y.where([...at, 'name'])}: name must be a Debian package name`)
    let files: string[] | undefined
    if (o.files !== undefined) {
      if (!Array.isArray(o.files) || o.files.some((g) => typeof g !== 'string' || !g))
        throw new ElementError(`${y.where([...at, 'files'])}: files must be a list of globs`)
      files = o.files as string[]
    }
    packages.push(files ? {name: o.name, files} : {name: o.name})
  })

  const dirs: ElementManifest['dirs'] = []
  const rawDirs = data.dirs
  if (Array.isArray(rawDirs)) {
    rawDirs.forEach((p, i) => {
      if (typeof p !== 'string') throw new ElementError(`${y.where(['dirs', i])}: expected an image path`)
      dirs.push({path: imagePath(y, ['dirs', i], p), mode: 0o755})
    })
  } else {
    for (const [p, v] of mapEntries(y, 'dirs', data)) {
      const at = ['dirs', p]
      if (v === null || typeof v === 'string' || typeof v === 'number') {
        dirs.push({path: imagePath(y, at, p), mode: v === null ? 0o755 : mode(at, v)})
      } else {
        const o = objectWith(y, at, v, ['mode', 'owner'])
        dirs.push({
          path: imagePath(y, at, p),
          mode: o.mode === undefined ? 0o755 : mode([...at, 'mode'], o.mode),
          owner: optOwner(y, [...at, 'owner'], o.owner),
        })
      }
    }
  }

  const files: ElementManifest['files'] = []
  for (const [p, v] of mapEntries(y, 'files', data)) {
    const at = ['files', p]
    const o = typeof v === 'string' ? {source: v} : objectWith(y, at, v, ['source', 'mode', 'owner'])
    const source = insideElement(y, typeof v === 'string' ? at : [...at, 'source'], dir, o.source)
    if (
      !(await stat(source).then(
        () => true,
        () => false,
      ))
    )
      throw new ElementError(`${y.where(typeof v === 'string' ? at : [...at, 'source'])}: source file '${String(o.source)}' does not exist in ${dir}`)
    files.push({
      path: imagePath(y, at, p),
      source,
      mode: o.mode === undefined ? undefined : mode([...at, 'mode'], o.mode),
      owner: optOwner(y, [...at, 'owner'], o.owner),
    })
  }

  const templates: ElementManifest['templates'] = []
  for (const [p, v] of mapEntries(y, 'templates', data)) {
    const at = ['templates', p]
    const o = typeof v === 'string' ? {template: v} : objectWith(y, at, v, ['template', 'mode', 'owner'])
    const template = insideElement(y, typeof v === 'string' ? at : [...at, 'template'], dir, o.template)
    if (
      !(await stat(template).then(
        (s) => s.isFile(),
        () => false,
      ))
    )
      throw new ElementError(`${y.where(typeof v === 'string' ? at : [...at, 'template'])}: template '${String(o.template)}' does not exist in ${dir}`)
    templates.push({
      path: imagePath(y, at, p),
      template,
      mode: o.mode === undefined ? undefined : mode([...at, 'mode'], o.mode),
      owner: optOwner(y, [...at, 'owner'], o.owner),
    })
  }

  const symlinks: ElementManifest['symlinks'] = []
  for (const [p, v] of mapEntries(y, 'symlinks', data)) {
    if (typeof v !== 'string' || !v) throw new ElementError(`${y.where(['symlinks', p])}: symlink target must be a non-empty string`)
    symlinks.push({path: imagePath(y, ['symlinks', p], p), target: v})
  }

  const devices: ElementManifest['devices'] = []
  for (const [p, v] of mapEntries(y, 'devices', data)) {
    const at = ['devices', p]
    const o = objectWith(y, at, v, ['type', 'major', 'minor', 'mode'])
    if (o.type !== 'char' && o.type !== 'block') throw new ElementError(`${y.where([...at, 'type'])}: type must be char or block`)
    for (const k of ['major', 'minor'] as const) {
      if (!Number.isInteger(o[k]) || (o[k] as number) < 0) throw new ElementError(`${y.where([...at, k])}: ${k} must be a non-negative integer`)
    }
    devices.push({
      path: imagePath(y, at, p),
      kind: o.type,
      major: o.major as number,
      minor: o.minor as number,
      mode: o.mode === undefined ? 0o600 : mode([...at, 'mode'], o.mode),
    })
  }

  return {
    description: description.trim(),
    depends: asStringList(y, 'depends', data),
    provides: asStringList(y, 'provides', data),
    conflicts: asStringList(y, 'conflicts', data),
    packages,
    dirs,
    files,
    templates,
    symlinks,
    devices,
  }
}

export async function loadElement(loc: ElementLocation): Promise<Element> {
  const file = join(loc.dir, 'element.yaml')
  const manifest = await parseManifest(await readFile(file, 'utf8'), file, loc.dir)
  const hooks: Element['hooks'] = {}
  const ignoredHooks: string[] = []
  for (const phase of HOOK_PHASES) {
    let names: string[]
    try {
      names = await readdir(join(loc.dir, phase))
    } catch {
      continue
    }
    const list: Hook[] = []
    for (const name of names.sort()) {
      const path = join(loc.dir, phase, name)
      const st = await stat(path).catch(() => undefined)
      const m = HOOK_NAME_RE.exec(name)
      if (!st?.isFile() || !m || (st.mode & 0o111) === 0) {
        // Like dib-run-parts: only executables named NN-name run; a README is not worth a warning.
        if (st?.isFile() && m) ignoredHooks.push(`${phase}/${name} (not executable)`)
        continue
      }
      list.push({phase, name, order: Number(m[1]), path, element: loc.name})
    }
    if (list.length) hooks[phase] = list.sort(compareHooks)
  }
  return {...loc, manifest, hooks, ignoredHooks}
}

export function compareHooks(a: Hook, b: Hook): number {
  return a.order - b.order || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
}

export interface ResolveRequest {
  /** Element names with who asked for them (e.g. "flavor tiny", "the spec"). */
  roots: {name: string; requiredBy: string}[]
}

/**
 * Resolve the element graph: pull in dependencies (by element name, or by something an element
 * provides), check conflicts and duplicate provides, refuse cycles, order dependencies first.
 */
export async function resolveElements(catalog: ElementCatalog, req: ResolveRequest): Promise<Element[]> {
  const selected = new Map<string, Element>()
  const requiredBy = new Map<string, string>()
  const unresolved: {cap: string; by: string}[] = []
  const queue = [...req.roots]
  for (const r of req.roots) {
    if (!ELEMENT_NAME_RE.test(r.name)) throw new ElementError(`'${r.name}' (from ${r.requiredBy}) is not a valid element name`)
  }
  const drain = async () => {
    while (queue.length) {
      const {name, requiredBy: by} = queue.shift()!
      if (selected.has(name)) continue
      if (!catalog.has(name)) {
        unresolved.push({cap: name, by}) // maybe something provides it: decided below
        continue
      }
      const el = await catalog.load(name)
      selected.set(name, el)
      requiredBy.set(name, by)
      for (const dep of el.manifest.depends) if (!selected.has(dep)) queue.push({name: dep, requiredBy: `element ${name}`})
    }
  }
  await drain()
  // A name that is no element must be provided by a selected element, or by exactly one element
  // of the catalogue (which is then pulled in, e.g. the flavor's "agent").
  for (;;) {
    const provided = new Set([...selected.values()].flatMap((e) => [e.name, ...e.manifest.provides]))
    const open = unresolved.filter((u) => !provided.has(u.cap)).sort((a, b) => (a.cap < b.cap ? -1 : a.cap > b.cap ? 1 : 0))
    if (open.length === 0) break
    const {cap, by} = open[0]!
    const candidates: string[] = []
    for (const n of catalog.names()) {
      const e = await catalog.load(n).catch(() => undefined)
      if (e?.manifest.provides.includes(cap)) candidates.push(n)
    }
    if (candidates.length === 0) throw catalog.unknown(cap, by)
    if (candidates.length > 1)
      throw new ElementError(
        `'${cap}' (required by ${by}) is provided by several elements: ${candidates.join(', ')}; add the one to use to the build's elements`,
      )
    queue.push({name: candidates[0]!, requiredBy: by})
    await drain()
  }

  // provides: every element provides its own name too; two providers of one thing is an error.
  const providers = new Map<string, string[]>()
  for (const el of selected.values()) {
    for (const cap of new Set([el.name, ...el.manifest.provides])) providers.set(cap, [...(providers.get(cap) ?? []), el.name])
  }
  const chain = (n: string) => `${n} (required by ${requiredBy.get(n)})`
  for (const [cap, who] of [...providers].sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (who.length > 1) throw new ElementError(`elements ${[...who].sort().map(chain).join(' and ')} both provide '${cap}'; use only one of them`)
  }
  for (const el of selected.values()) {
    for (const c of el.manifest.conflicts) {
      for (const other of providers.get(c) ?? []) {
        if (other !== el.name) throw new ElementError(`element ${chain(el.name)} conflicts with ${c === other ? '' : `'${c}', provided by `}${chain(other)}`)
      }
    }
  }

  // Edges: dependency → dependent.
  const deps = new Map<string, string[]>()
  for (const el of selected.values()) {
    const ds = el.manifest.depends.map((d) => (selected.has(d) ? d : providers.get(d)![0]!)).filter((d) => d !== el.name)
    deps.set(el.name, [...new Set(ds)].sort())
  }
  const cycle = findCycle([...selected.keys()].sort(), deps)
  if (cycle) throw new ElementError(`element dependency cycle: ${cycle.join(' → ')}`)

  // Kahn's algorithm, always taking the alphabetically first ready element.
  const remaining = new Map([...deps].map(([n, d]) => [n, new Set(d)]))
  const order: Element[] = []
  while (remaining.size) {
    const ready = [...remaining]
      .filter(([, d]) => d.size === 0)
      .map(([n]) => n)
      .sort()
    const next = ready[0]!
    order.push(selected.get(next)!)
    remaining.delete(next)
    for (const d of remaining.values()) d.delete(next)
  }
  return order
}

/** A dependency cycle as a path `a, b, a` (a depends on b depends on a), or undefined. */
export function findCycle(nodes: string[], deps: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, 'active' | 'done'>()
  const stack: string[] = []
  const visit = (n: string): string[] | undefined => {
    const s = state.get(n)
    if (s === 'done') return undefined
    if (s === 'active') return [...stack.slice(stack.indexOf(n)), n]
    state.set(n, 'active')
    stack.push(n)
    for (const d of deps.get(n) ?? []) {
      const c = visit(d)
      if (c) return c
    }
    stack.pop()
    state.set(n, 'done')
    return undefined
  }
  for (const n of nodes) {
    const c = visit(n)
    if (c) return c
  }
  return undefined
}

/** All hooks of a phase across elements, in run order (number, then name); duplicate names are an error. */
export function hooksFor(elements: Element[], phase: HookPhase): Hook[] {
  const all: Hook[] = []
  const seen = new Map<string, string>()
  for (const el of elements) {
    for (const h of el.hooks[phase] ?? []) {
      const other = seen.get(h.name)
      if (other) throw new ElementError(`hook ${phase}/${h.name} is in both element '${other}' and element '${el.name}'; rename one`)
      seen.set(h.name, el.name)
      all.push(h)
    }
  }
  return all.sort(compareHooks)
}

/**
 * Debian packages for the tiny flavour: resolve names to exact versions and their dependency closure
 * with the host's apt configuration (no installation, no chroot), download them with
 * `apt-get download`, verify each against the SHA256 that apt's signed indexes give, and keep them in
 * a content-addressed cache (`<cacheDir>/debs/<sha256>.deb`, index `<cacheDir>/index.json`).
 *
 * Trust chain: apt verifies the suite's InRelease signature and the Packages index hashes when it
 * updates its lists; `apt-cache show` reports the SHA256 of each .deb from those indexes; every .deb
 * used here (fresh or cached) must hash to exactly that value.
 */
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {defaultCacheDir} from '../common/defaults.js'
import {EXIT_FAILURE, UserError, type UserErrorOptions} from '../common/errors.js'
import {run} from '../common/exec.js'
import {compareDebianVersions, parseDepends, satisfies, type DepAlternative} from './version.js'

export interface ResolvedPackage {
  name: string
  version: string
  /** `amd64`, `all`, … */
  arch: string
  /** SHA256 of the .deb, from apt's (signature-verified) Packages index. */
  sha256: string
  /** Pool path on the mirror (`pool/main/h/hdparm/hdparm_9.65+ds-1_amd64.deb`). */
  filename: string
  /** Size of the .deb in bytes. */
  size: number
  /** Source package name. */
  source: string
  /** Names of the resolved packages this one depends on (Depends + Pre-Depends, one per group). */
  depends: string[]
}

export interface AptOptions {
  /** An alternative apt configuration file (APT_CONFIG) for another mirror/suite; default: the host's. */
  aptConfig?: string
  /** Extra `-o Key=Value` options for apt-cache/apt-get. */
  aptOptions?: string[]
}

export interface ResolveOptions extends AptOptions {
  /** Architecture of the target; default: `dpkg --print-architecture`. */
  arch?: string
  /** Do not follow dependencies: only the named packages. */
  noDependencies?: boolean
  /**
   * Package names never pulled in as dependencies (e.g. `debconf`, `perl-base`: needed only by
   * maintainer scripts, which the tiny flavour never runs). A dependency group whose every
   * alternative is excluded is dropped. Explicitly requested names are still resolved.
   */
  exclude?: readonly string[]
}

/** A package name, version or dependency cannot be resolved from apt's indexes: a UserError (exit 2). */
export class PackageResolveError extends UserError {
  constructor(message: string, opts: UserErrorOptions = {}) {
    super(message, opts)
    this.name = 'PackageResolveError'
  }
}

/** A downloaded .deb does not match apt's index: the build failed (exit 1); the next run downloads it again. */
export class DebHashMismatchError extends UserError {
  constructor(
    readonly pkg: string,
    readonly expected: string,
    readonly actual: string,
    readonly file: string,
  ) {
    super(`SHA256 mismatch for ${pkg}: apt's index says ${expected}, the file ${file} has ${actual} (the file was deleted)`, {
      exit: EXIT_FAILURE,
      hint: "run again to download it anew; if it keeps failing, run 'apt-get update' (stale indexes) or check the mirror",
    })
    this.name = 'DebHashMismatchError'
  }
}

/** Default cache directory (src/common/defaults.ts): $RDK_CACHE_DIR, else $XDG_CACHE_HOME/rdk, else ~/.cache/rdk. */
export {defaultCacheDir}

function aptEnv(opts: AptOptions): Record<string, string | undefined> | undefined {
  return opts.aptConfig ? {...process.env, APT_CONFIG: opts.aptConfig} : undefined
}

function aptArgs(opts: AptOptions): string[] {
  return (opts.aptOptions ?? []).flatMap((o) => ['-o', o])
}

interface Stanza {
  [field: string]: string
}

/** Parse deb822 stanzas (apt-cache show output). */
export function parseStanzas(text: string): Stanza[] {
  const out: Stanza[] = []
  let cur: Stanza = {}
  let last = ''
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      if (Object.keys(cur).length) out.push(cur)
      cur = {}
      last = ''
      continue
    }
    if (/^\s/.test(line)) {
      if (last) cur[last] += `\n${line.trim()}`
      continue
    }
    const colon = line.indexOf(':')
    if (colon < 0) continue
    last = line.slice(0, colon)
    cur[last] = line.slice(colon + 1).trim()
  }
  if (Object.keys(cur).length) out.push(cur)
  return out
}

interface Candidate {
  stanza: Stanza
  name: string
  version: string
  arch: string
  provides: DepAlternative[]
}

function toCandidate(s: Stanza): Candidate {
  return {
    stanza: s,
    name: s.Package!,
    version: s.Version!,
    arch: s.Architecture!,
    provides: s.Provides ? parseDepends(s.Provides).flat() : [],
  }
}

let hostArch: string | undefined
async function nativeArch(): Promise<string> {
  hostArch ??= (await run('dpkg', ['--print-architecture'])).stdout.trim()
  return hostArch
}

/** apt-cache show for several names (`name` or `name=version`); absent names are simply missing. */
async function aptShow(specs: string[], allVersions: boolean, opts: AptOptions): Promise<Stanza[]> {
  if (specs.length === 0) return []
  const out: Stanza[] = []
  // keep command lines reasonable
  for (let i = 0; i < specs.length; i += 200) {
    const chunk = specs.slice(i, i + 200)
    const args = [...aptArgs(opts), 'show', ...(allVersions ? [] : ['--no-all-versions']), ...chunk]
    const r = await run('apt-cache', args, {allowFailure: true, env: aptEnv(opts)})
    out.push(...parseStanzas(r.stdout).filter((s) => s.Package && s.Version))
  }
  return out
}

/** Names of packages providing a virtual package (apt-cache showpkg's "Reverse Provides"). */
async function providersOf(name: string, opts: AptOptions): Promise<string[]> {
  const r = await run('apt-cache', [...aptArgs(opts), 'showpkg', name], {allowFailure: true, env: aptEnv(opts)})
  const m = /\nReverse Provides:\s*\n([\s\S]*)$/.exec(r.stdout)
  if (!m) return []
  const names: string[] = []
  for (const line of m[1]!.split('\n')) {
    const n = line.trim().split(/\s+/)[0]
    if (n && !names.includes(n)) names.push(n)
  }
  return names
}

/**
 * One `apt-cache depends --recurse` over the requested names: every package name the closure can
 * touch (all alternatives, recursively) and the providers apt lists for virtual packages. Used to
 * load all candidate records with one `apt-cache show` instead of one call per level (each apt call
 * re-reads the indexes when apt's binary cache is disabled, ~0.5 s here).
 */
async function dependsUniverse(specs: readonly string[], opts: AptOptions): Promise<{names: string[]; providers: Map<string, string[]>}> {
  const args = [
    ...aptArgs(opts),
    'depends',
    '--recurse',
    '--important',
    '--no-recommends',
    '--no-suggests',
    '--no-conflicts',
    '--no-breaks',
    '--no-replaces',
    '--no-enhances',
    ...specs,
  ]
  const r = await run('apt-cache', args, {allowFailure: true, env: aptEnv(opts)})
  const names = new Set<string>()
  const providers = new Map<string, string[]>()
  let dep: string | undefined
  for (const line of r.stdout.split('\n')) {
    if (!line.trim()) continue
    if (!/^\s/.test(line)) {
      const n = line.trim()
      names.add(n.replace(/^<|>$/g, '').replace(/:[a-z0-9-]+$/, ''))
      dep = undefined
      continue
    }
    const m = /^\s*\|?(?:Pre)?Depends:\s*<?([^>\s]+)>?/.exec(line)
    if (m) {
      dep = m[1]!.replace(/:[a-z0-9-]+$/, '')
      names.add(dep) // virtual ones too: one apt-cache show then knows they have no record
      continue
    }
    if (dep && /^\s{4}\S/.test(line)) {
      const p = line.trim().replace(/:[a-z0-9-]+$/, '')
      names.add(p)
      const list = providers.get(dep) ?? []
      if (!list.includes(p)) list.push(p)
      providers.set(dep, list)
    }
  }
  return {names: [...names], providers}
}

const NAME_RE = /^[a-z0-9][a-z0-9+.-]+$/
const VERSION_RE = /^[A-Za-z0-9.+~:-]+$/
const SPEC_RE = /^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$/

/** Refuse resolved entries that could not have come from apt (they end up in paths and apt-get arguments). */
function checkResolved(p: ResolvedPackage): void {
  if (!NAME_RE.test(p.name) || !VERSION_RE.test(p.version) || !/^[a-z0-9-]+$/.test(p.arch) || !/^[0-9a-f]{64}$/.test(p.sha256)) {
    throw new PackageResolveError(`invalid resolved package entry: ${JSON.stringify({name: p.name, version: p.version, arch: p.arch, sha256: p.sha256})}`)
  }
}

function archMatches(c: Candidate, alt: DepAlternative, arch: string): boolean {
  if (c.arch !== 'all' && c.arch !== arch) return false
  if (alt.archQualifier && alt.archQualifier !== 'any' && alt.archQualifier !== 'native' && alt.archQualifier !== arch) return false
  return true
}

/**
 * Resolve package names (`name` or `name=version`) to exact versions and their Depends/Pre-Depends
 * closure (Recommends, Suggests and Enhances are never followed), using the host's apt indexes.
 * For `a | b` the first alternative that exists and satisfies its version constraint wins, unless
 * another alternative is already part of the set; a purely virtual package is satisfied by a
 * provider already in the set, else by the first provider apt lists. Returns packages in a stable
 * order: requested names first, then dependencies breadth-first.
 */
export async function resolvePackages(names: readonly string[], opts: ResolveOptions = {}): Promise<ResolvedPackage[]> {
  const arch = opts.arch ?? (await nativeArch())
  const exclude = new Set(opts.exclude ?? [])
  /** candidate record (policy's choice) per name; null = no real package of that name */
  const candidates = new Map<string, Candidate | null>()
  const allVersions = new Map<string, Candidate[]>()

  async function loadCandidates(list: string[]): Promise<void> {
    const todo = [...new Set(list.filter((n) => !candidates.has(n)))]
    if (!todo.length) return
    const found = new Map<string, Candidate>()
    for (const s of await aptShow(todo, false, opts)) {
      const c = toCandidate(s)
      const prev = found.get(c.name)
      // a multi-arch host may list a foreign candidate too: keep ours
      if (!prev || c.arch === arch || c.arch === 'all') found.set(c.name, c)
    }
    for (const n of todo) candidates.set(n, found.get(n) ?? null)
  }

  async function versionsOf(name: string): Promise<Candidate[]> {
    let v = allVersions.get(name)
    if (!v) {
      v = (await aptShow([name], true, opts)).map(toCandidate).filter((c) => c.name === name)
      v.sort((a, b) => compareDebianVersions(b.version, a.version))
      allVersions.set(name, v)
    }
    return v
  }

  /** A real package for `alt`, honouring its version constraint; undefined if there is none. */
  async function pick(alt: DepAlternative): Promise<Candidate | undefined> {
    const c = candidates.get(alt.name)
    if (!c) return undefined
    if (archMatches(c, alt, arch) && satisfies(c.version, alt.op, alt.version)) return c
    return (await versionsOf(alt.name)).find((v) => archMatches(v, alt, arch) && satisfies(v.version, alt.op, alt.version))
  }

  const selected = new Map<string, Candidate>()
  const order: string[] = []
  const dependsOf = new Map<string, string[]>()

  function satisfiedBySelected(alt: DepAlternative): string | undefined {
    const s = selected.get(alt.name)
    if (s && satisfies(s.version, alt.op, alt.version)) return s.name
    for (const sel of selected.values()) {
      for (const p of sel.provides) {
        if (p.name !== alt.name) continue
        // a versioned dependency is satisfied only by a versioned Provides (Policy §7.5)
        if (!alt.op || (p.op === '=' && satisfies(p.version!, alt.op, alt.version))) return sel.name
      }
    }
    return undefined
  }

  // requested names
  for (const spec of names) {
    if (!SPEC_RE.test(spec)) throw new PackageResolveError(`not a Debian package name (or name=version): ${JSON.stringify(spec)}`)
  }
  const requested = names.map((spec) => {
    const eq = spec.indexOf('=')
    return eq >= 0 ? {name: spec.slice(0, eq), version: spec.slice(eq + 1)} : {name: spec, version: undefined}
  })
  const universe = opts.noDependencies ? {names: [], providers: new Map<string, string[]>()} : await dependsUniverse(names, opts)
  const providers = async (virtual: string) => universe.providers.get(virtual) ?? (await providersOf(virtual, opts))
  await loadCandidates([...requested.map((r) => r.name), ...universe.names])
  const missing: string[] = []
  let queue: Candidate[] = []
  for (const r of requested) {
    let c = await pick({name: r.name, ...(r.version ? {op: '=' as const, version: r.version} : {})})
    if (!c && !r.version) {
      // a virtual package named explicitly: take its first provider
      const provs = await providers(r.name)
      await loadCandidates(provs)
      for (const p of provs) if ((c = await pick({name: p}))) break
    }
    if (!c) {
      missing.push(r.version ? `${r.name}=${r.version}` : r.name)
      continue
    }
    if (!selected.has(c.name)) {
      selected.set(c.name, c)
      order.push(c.name)
      queue.push(c)
    }
  }
  if (missing.length)
    throw new PackageResolveError(`no such Debian package (or version) in apt's indexes: ${missing.join(', ')} (run 'apt-get update'?)`, {
      hint: "check the name (apt-cache policy NAME); run 'apt-get update' if the indexes are old",
    })

  while (queue.length && !opts.noDependencies) {
    const next: Candidate[] = []
    /** Select a candidate for the image and queue its own dependencies; returns its name. */
    const take = (p: Candidate): string => {
      selected.set(p.name, p)
      order.push(p.name)
      next.push(p)
      return p.name
    }
    const groupsOf = new Map<Candidate, DepAlternative[][]>()
    for (const c of queue) {
      const field = [c.stanza['Pre-Depends'], c.stanza.Depends].filter(Boolean).join(', ')
      groupsOf.set(c, parseDepends(field))
    }
    await loadCandidates([...groupsOf.values()].flat(2).map((a) => a.name))
    for (const c of queue) {
      const deps: string[] = []
      for (const group of groupsOf.get(c)!) {
        const alts = group.filter((a) => !exclude.has(a.name))
        if (!alts.length) continue
        let chosen: string | undefined
        for (const a of alts) if ((chosen = satisfiedBySelected(a))) break
        if (!chosen) {
          for (const a of alts) {
            const p = await pick(a)
            if (p) {
              chosen = take(p)
              break
            }
          }
        }
        if (!chosen) {
          // virtual packages: a provider already chosen, else the first real provider
          for (const a of alts) {
            if (a.op) continue
            const provs = (await providers(a.name)).filter((p) => !exclude.has(p))
            await loadCandidates(provs)
            chosen = provs.find((p) => selected.has(p))
            if (chosen) break
            for (const pn of provs) {
              const p = await pick({name: pn})
              if (p) {
                chosen = take(p)
                break
              }
            }
            if (chosen) break
          }
        }
        if (!chosen) {
          const text = group.map((a) => a.name + (a.op ? ` (${a.op} ${a.version})` : '')).join(' | ')
          throw new PackageResolveError(`cannot satisfy dependency '${text}' of ${c.name} ${c.version}: no such package or version in apt's indexes`)
        }
        if (!deps.includes(chosen) && chosen !== c.name) deps.push(chosen)
      }
      dependsOf.set(c.name, deps)
    }
    queue = next
  }

  return order.map((n) => {
    const c = selected.get(n)!
    const s = c.stanza
    if (!s.SHA256 || !s.Filename || !s.Size) throw new PackageResolveError(`apt's index has no SHA256/Filename/Size for ${c.name} ${c.version}`)
    return {
      name: c.name,
      version: c.version,
      arch: c.arch,
      sha256: s.SHA256.toLowerCase(),
      filename: s.Filename,
      size: Number(s.Size),
      source: (s.Source ?? c.name).split(' ')[0]!,
      depends: dependsOf.get(n) ?? [],
    }
  })
}

// ---------------------------------------------------------------------------------------------
// download + cache

export interface CacheIndexEntry {
  sha256: string
  size: number
  filename: string
  /** ISO time the .deb entered the cache. */
  added: string
}

export interface FetchOptions extends AptOptions {
  /**
   * What to do when a cached .deb no longer has its SHA256 (disk corruption, tampering): `refetch`
   * (default) deletes it, downloads it again and reports it in `stats.repaired`; `error` deletes it
   * and throws DebHashMismatchError (a re-run downloads it again).
   */
  onCorruptCache?: 'refetch' | 'error'
  /** Re-hash cached .debs before use (default true; about 1 s per GB). */
  verifyCached?: boolean
}

export interface FetchStats {
  cacheHits: number
  downloaded: number
  bytesDownloaded: number
  /** `name_version_arch` of cached files that failed verification and were fetched again. */
  repaired: string[]
  downloadMs: number
  verifyMs: number
}

export function packageKey(p: Pick<ResolvedPackage, 'name' | 'version' | 'arch'>): string {
  return `${p.name}_${p.version}_${p.arch}`
}

/** Path of a package's .deb in the content-addressed cache. */
export function cachedDebPath(cacheDir: string, sha256: string): string {
  return join(cacheDir, 'debs', `${sha256}.deb`)
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path, {highWaterMark: 1 << 20})) h.update(chunk as Buffer)
  return h.digest('hex')
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch {
    return false
  }
}

export async function readCacheIndex(cacheDir: string): Promise<Record<string, CacheIndexEntry>> {
  try {
    return JSON.parse(await readFile(join(cacheDir, 'index.json'), 'utf8')) as Record<string, CacheIndexEntry>
  } catch {
    return {}
  }
}

/** Merge entries into index.json (read-merge-write, atomic rename). Lookups never need it: the cache is addressed by hash. */
async function updateCacheIndex(cacheDir: string, add: Record<string, CacheIndexEntry>, remove: string[] = []): Promise<void> {
  if (!Object.keys(add).length && !remove.length) return
  const index = await readCacheIndex(cacheDir)
  for (const k of remove) delete index[k]
  Object.assign(index, add)
  const sorted = Object.fromEntries(Object.entries(index).sort(([a], [b]) => a.localeCompare(b)))
  const tmp = join(cacheDir, `.index.json.${process.pid}.${Date.now()}`)
  await writeFile(tmp, `${JSON.stringify(sorted, null, 1)}\n`)
  await rename(tmp, join(cacheDir, 'index.json'))
}

/** The file name `apt-get download` gives a package (epoch colon URL-encoded). */
function downloadName(p: ResolvedPackage): string {
  return `${p.name}_${p.version.replace(/:/g, '%3a')}_${p.arch}.deb`
}

/**
 * Make sure every resolved package is in the cache (downloading what is missing with one
 * `apt-get download` call into a per-call temp directory) and verified; return the cache paths in
 * the same order as `resolved`.
 */
export async function fetchPackagesWithStats(
  resolved: readonly ResolvedPackage[],
  cacheDir: string,
  opts: FetchOptions = {},
): Promise<{paths: string[]; stats: FetchStats}> {
  const stats: FetchStats = {cacheHits: 0, downloaded: 0, bytesDownloaded: 0, repaired: [], downloadMs: 0, verifyMs: 0}
  resolved.forEach(checkResolved)
  await mkdir(join(cacheDir, 'debs'), {recursive: true})
  const verifyCached = opts.verifyCached ?? true
  const toFetch: ResolvedPackage[] = []
  const t0 = Date.now()
  for (const p of resolved) {
    const path = cachedDebPath(cacheDir, p.sha256)
    if (!(await exists(path))) {
      toFetch.push(p)
      continue
    }
    if (verifyCached) {
      const actual = await sha256File(path)
      if (actual !== p.sha256) {
        await rm(path, {force: true})
        await updateCacheIndex(cacheDir, {}, [packageKey(p)])
        if (opts.onCorruptCache === 'error') throw new DebHashMismatchError(packageKey(p), p.sha256, actual, path)
        stats.repaired.push(packageKey(p))
        toFetch.push(p)
        continue
      }
    }
    stats.cacheHits++
  }
  stats.verifyMs = Date.now() - t0

  if (toFetch.length) {
    const t1 = Date.now()
    const tmp = await mkdtemp(join(cacheDir, 'tmp-'))
    try {
      const native = await nativeArch()
      const specs = [...new Set(toFetch.map((p) => (p.arch === 'all' || p.arch === native ? `${p.name}=${p.version}` : `${p.name}:${p.arch}=${p.version}`)))]
      // apt-get download runs the fetch as user _apt when it can; in a root-owned temp dir it falls
      // back to root and warns, which is harmless here
      await run('apt-get', [...aptArgs(opts), '-q', 'download', ...specs], {cwd: tmp, env: aptEnv(opts), timeoutMs: 30 * 60_000})
      const present = new Set(await readdir(tmp))
      const added: Record<string, CacheIndexEntry> = {}
      for (const p of toFetch) {
        const name = present.has(downloadName(p)) ? downloadName(p) : p.filename.split('/').pop()!
        const file = join(tmp, name)
        if (!present.has(name)) throw new PackageResolveError(`apt-get download did not produce ${downloadName(p)} for ${packageKey(p)}`)
        const actual = await sha256File(file)
        if (actual !== p.sha256) {
          await rm(file, {force: true})
          throw new DebHashMismatchError(packageKey(p), p.sha256, actual, file)
        }
        const size = (await stat(file)).size
        await rename(file, cachedDebPath(cacheDir, p.sha256))
        added[packageKey(p)] = {sha256: p.sha256, size, filename: p.filename, added: new Date().toISOString()}
        stats.downloaded++
        stats.bytesDownloaded += size
      }
      await updateCacheIndex(cacheDir, added)
    } finally {
      await rm(tmp, {recursive: true, force: true})
    }
    stats.downloadMs = Date.now() - t1
  }
  return {paths: resolved.map((p) => cachedDebPath(cacheDir, p.sha256)), stats}
}

/** fetchPackagesWithStats without the statistics. */
export async function fetchPackages(resolved: readonly ResolvedPackage[], cacheDir: string, opts: FetchOptions = {}): Promise<string[]> {
  return (await fetchPackagesWithStats(resolved, cacheDir, opts)).paths
}

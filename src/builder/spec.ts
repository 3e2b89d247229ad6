/**
 * The build spec: everything `rdk build` needs to know, typed and validated.
 *
 * SPEC_SETTINGS is the one definition of every field; the rdk.yaml keys (camelCase, the field
 * names), the `rdk build` flags and their help all derive from it. Sources, lowest first:
 * built-in defaults < config file (--config FILE, else ./rdk.yaml, else the embedded default config)
 * < flags. Single values: the flag replaces the file's value. Repeatable flags that add things
 * (--element, --elements-path, --ssh-key, --hardware-manager) add to the file's list;
 * --kernel-arg K=V sets K (replacing the file's K); --format replaces the file's list.
 */
import {readFile, readdir, stat} from 'node:fs/promises'
import {homedir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {
  checkEpoch as checkEpochIn,
  DEFAULT_CACHE_DIR_HELP,
  DEFAULT_SOURCE_DATE_EPOCH,
  defaultCacheDir,
  sourceDateEpochFromEnv as epochFromEnv,
} from '../common/defaults.js'
import {COMPRESSIONS, type Compression} from './compress.js'
import {DEFAULT_CONFIG_NAME, DEFAULT_CONFIG_YAML} from './default-config.js'
import {SpecError} from './errors.js'
import {nearNames, YamlFile} from './yaml.js'

export const FLAVORS = ['tiny', 'debian', 'container'] as const
export type Flavor = (typeof FLAVORS)[number]

/** Artefact formats (iso, pxe, ipxe, tar, zip: src/artefacts/, docs/artefacts.md). */
export const FORMATS = ['kernel', 'initramfs', 'iso', 'pxe', 'ipxe', 'tar', 'zip'] as const
export type Format = (typeof FORMATS)[number]

export const NODE_ICU = ['en', 'full'] as const
export type NodeIcu = (typeof NODE_ICU)[number]

/** mtime of everything in the image when SOURCE_DATE_EPOCH is not set (src/common/defaults.ts). */
export {DEFAULT_SOURCE_DATE_EPOCH}

export const DEFAULT_DEBIAN_MIRROR = 'http://deb.debian.org/debian'

export interface BuildSpec {
  flavor: Flavor
  /** Artefact base name: <name>.kernel, <name>.initramfs, <name>.manifest.json. */
  name: string
  /** Output directory (absolute). */
  output: string
  /** Elements added to the flavor's defaults. */
  elements: string[]
  /** Extra element directories, searched before the built-in ones (absolute). */
  elementPaths: string[]
  /** Kernel command-line parameters; null = a bare word (`quiet`). */
  kernelArgs: Record<string, string | null>
  /** authorized_keys files for root (absolute). */
  sshKeys: string[]
  /** Hardware-manager modules or directories of them (absolute), installed for the agent. */
  hardwareManagers: string[]
  compress: Compression
  /** Kernel modules (names, aliases or `@set`) added to the flavor's default set. */
  kernelModules: string[]
  /** Base URL of the iPXE script's kernel/initramfs (http/https), or '' for URLs relative to the script. */
  ipxeBaseUrl: string
  /** ICU data kept in the image's Node: `en` (root + English; ≈29 MB smaller) or `full`. */
  nodeIcu: NodeIcu
  formats: Format[]
  sourceDateEpoch: number
  cacheDir: string
  debianMirror: string
  debianSuite: string
  /** Derived: the validated key lines of all sshKeys files, in order. */
  authorizedKeys: string[]
}

export type SpecKey = Exclude<keyof BuildSpec, 'authorizedKeys'>

type Kind = 'string' | 'enum' | 'int' | 'path' | 'list' | 'enumList' | 'pathList' | 'map'

export interface SpecEnv {
  env: Record<string, string | undefined>
  cwd: string
  home: string
  /** Root under which /etc/apt is read for the default mirror ('/' normally; tests point elsewhere). */
  aptRoot: string
}

export interface SpecSetting {
  key: SpecKey
  /** `rdk build` flag name. */
  flag: string
  kind: Kind
  choices?: readonly string[]
  /** The flag may be given several times (and takes comma-separated values for lists). */
  repeatable?: boolean
  help: string
  /** How the default is shown in help. */
  defaultHelp: string
  /** Default value; computed only when neither the file nor a flag sets the field. */
  default: (env: SpecEnv, partial: Partial<BuildSpec>) => unknown | Promise<unknown>
}

// biome-ignore format: a table, one setting per line
export const SPEC_SETTINGS: readonly SpecSetting[] = [
  {key: 'flavor', flag: 'flavor', kind: 'enum', choices: FLAVORS, help: 'what to build: tiny (busybox ramdisk; builds today), debian, container (not implemented yet)', defaultHelp: 'tiny', default: () => 'tiny'},
  {key: 'name', flag: 'name', kind: 'string', help: 'artefact base name (<name>.kernel, <name>.initramfs, <name>.manifest.json)', defaultHelp: 'rdk-<flavor>', default: (_e, p) => `rdk-${p.flavor ?? 'tiny'}`},
  {key: 'output', flag: 'output', kind: 'path', help: 'output directory', defaultHelp: './out', default: (e) => resolve(e.cwd, 'out')},
  {key: 'elements', flag: 'element', kind: 'list', repeatable: true, help: "element to add to the flavor's defaults (repeatable, or comma-separated)", defaultHelp: 'none', default: () => []},
  {key: 'elementPaths', flag: 'elements-path', kind: 'pathList', repeatable: true, help: 'directory of extra elements, searched before the built-in ones (repeatable)', defaultHelp: 'none', default: () => []},
  {key: 'kernelArgs', flag: 'kernel-arg', kind: 'map', repeatable: true, help: 'kernel command-line parameter K=V for the boot artefacts (repeatable)', defaultHelp: 'none', default: () => ({})},
  {key: 'sshKeys', flag: 'ssh-key', kind: 'pathList', repeatable: true, help: "authorized_keys file (public keys) for root's SSH login (repeatable)", defaultHelp: 'none', default: () => []},
  {key: 'hardwareManagers', flag: 'hardware-manager', kind: 'pathList', repeatable: true, help: 'custom hardware-manager module (.js/.mjs) or directory of them, installed for the agent (repeatable)', defaultHelp: 'none', default: () => []},
  {key: 'compress', flag: 'compress', kind: 'enum', choices: COMPRESSIONS, help: "initramfs compression: xz (smallest; x86 BCJ filter, 32 MiB dictionary), gzip (no host tool needed), zstd, none", defaultHelp: 'xz', default: () => 'xz'},
  {key: 'kernelModules', flag: 'kernel-module', kind: 'list', repeatable: true, help: 'kernel module (name or alias) or @set (@storageExtra, @networkExtra, @networkNonFreeFirmware, @filesystemsExtra) added to the default drivers, with its dependencies (repeatable)', defaultHelp: 'none', default: () => []},
  {key: 'ipxeBaseUrl', flag: 'ipxe-base-url', kind: 'string', help: "http(s) URL the iPXE script loads <name>.kernel and <name>.initramfs from (empty: relative to the script's own URL)", defaultHelp: '$RDK_IPXE_BASE_URL, else empty', default: (e) => e.env.RDK_IPXE_BASE_URL ?? ''},
  {key: 'nodeIcu', flag: 'node-icu', kind: 'enum', choices: NODE_ICU, help: "ICU data in the image's Node: en keeps root and English locale data (Intl in other locales falls back to it), full keeps every locale", defaultHelp: 'en', default: () => 'en'},
  {key: 'formats', flag: 'format', kind: 'enumList', choices: FORMATS, repeatable: true, help: 'artefacts to write: kernel, initramfs, iso (hybrid BIOS+UEFI), pxe (TFTP tree), ipxe (script), tar (.tar.gz bundle), zip (bundle)', defaultHelp: 'kernel,initramfs', default: () => ['kernel', 'initramfs']},
  {key: 'sourceDateEpoch', flag: 'source-date-epoch', kind: 'int', help: 'timestamp (seconds) given to every file in the image', defaultHelp: `$SOURCE_DATE_EPOCH, else ${DEFAULT_SOURCE_DATE_EPOCH}`, default: (e) => sourceDateEpochFromEnv(e.env)},
  {key: 'cacheDir', flag: 'cache-dir', kind: 'path', help: 'cache of downloaded packages and stage outputs', defaultHelp: DEFAULT_CACHE_DIR_HELP, default: (e) => resolve(e.cwd, defaultCacheDir(e.env, e.home))},
  {key: 'debianMirror', flag: 'debian-mirror', kind: 'string', help: 'Debian mirror URL', defaultHelp: `this machine's apt mirror, else ${DEFAULT_DEBIAN_MIRROR}`, default: (e) => mirrorFromApt(e.aptRoot)},
  {key: 'debianSuite', flag: 'debian-suite', kind: 'string', help: 'Debian suite', defaultHelp: 'bookworm', default: () => 'bookworm'},
]

const byKey = new Map(SPEC_SETTINGS.map((s) => [s.key as string, s]))
const byFlag = new Map(SPEC_SETTINGS.map((s) => [s.flag, s]))

/** Flag descriptions for `rdk build`, derived from the table. */
export function buildFlagTable(): {name: string; multiple: boolean; help: string; setting: SpecSetting}[] {
  return SPEC_SETTINGS.map((s) => ({
    name: s.flag,
    multiple: Boolean(s.repeatable),
    help: `${s.help}${s.choices ? ` [${s.choices.join('|')}]` : ''} (rdk.yaml: ${s.key}; default: ${s.defaultHelp})`,
    setting: s,
  }))
}

function describe(v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'a list'
  if (typeof v === 'object') return 'a mapping'
  return `${typeof v === 'number' ? 'the number' : typeof v === 'boolean' ? 'the boolean' : 'the string'} ${JSON.stringify(v)}`
}

const specError = (m: string) => new SpecError(m)

export function sourceDateEpochFromEnv(env: Record<string, string | undefined>): number {
  return epochFromEnv(env, specError)
}

function checkEpoch(n: number, where: string): number {
  return checkEpochIn(n, where, specError)
}

function expandHome(p: string, env: SpecEnv): string {
  return p === '~' ? env.home : p.startsWith('~/') ? join(env.home, p.slice(2)) : p
}

/** One raw value (from YAML or a flag) → the field's type. `baseDir` anchors relative paths. */
function parseValue(s: SpecSetting, raw: unknown, where: string, baseDir: string, env: SpecEnv, fromFlag: boolean): unknown {
  const fail = (what: string): never => {
    throw new SpecError(`${where}: ${s.key}: expected ${what}, got ${describe(raw)}`)
  }
  const str = (v: unknown): string => (typeof v === 'string' ? v : fail('a string'))
  const list = (v: unknown): string[] => {
    if (typeof v === 'string')
      return v
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean)
    if (Array.isArray(v)) {
      return v.flatMap((x, i) => {
        if (typeof x !== 'string') throw new SpecError(`${where}: ${s.key}[${i}]: expected a string, got ${describe(x)}`)
        return fromFlag
          ? x
              .split(',')
              .map((y) => y.trim())
              .filter(Boolean)
          : [x.trim()]
      })
    }
    return fail('a list of strings')
  }
  const oneOf = (v: string): string => {
    if (s.choices!.includes(v)) return v
    const near = nearNames(v, s.choices!)
    throw new SpecError(`${where}: ${s.key}: '${v}' is not one of ${s.choices!.join(', ')}${near.length ? ` (did you mean '${near[0]}'?)` : ''}`)
  }
  const path = (v: string): string => resolve(baseDir, expandHome(v, env))
  switch (s.kind) {
    case 'string': {
      const v = str(raw).trim()
      if (!v) throw new SpecError(`${where}: ${s.key}: must not be empty`)
      return v
    }
    case 'enum':
      return oneOf(str(raw).trim())
    case 'int': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\s*\d+\s*$/.test(raw) ? Number(raw) : NaN
      if (!Number.isInteger(n)) fail('a whole number')
      return checkEpoch(n, `${where}: ${s.key}`)
    }
    case 'path': {
      const v = str(raw).trim()
      if (!v) throw new SpecError(`${where}: ${s.key}: must not be empty`)
      return path(v)
    }
    case 'list':
      return list(raw)
    case 'enumList':
      return [...new Set(list(raw).map(oneOf))]
    case 'pathList':
      return list(raw).map(path)
    case 'map':
      return parseKernelArgs(raw, where, fromFlag)
  }
}

const KARG_KEY = /^[^\s="]+$/

function checkKernelArg(key: string, value: string | null, where: string): void {
  if (!KARG_KEY.test(key)) throw new SpecError(`${where}: kernel argument name ${JSON.stringify(key)} must not be empty or contain spaces, '=' or '"'`)
  if (value !== null && /["\n\r\0]/.test(value)) throw new SpecError(`${where}: kernel argument ${key}: the value must not contain '"' or line breaks`)
}

/** kernelArgs from YAML (mapping K: V, or a list of "K=V") or from --kernel-arg K=V flags. */
export function parseKernelArgs(raw: unknown, where: string, fromFlag: boolean): Record<string, string | null> {
  const out: Record<string, string | null> = {}
  const pair = (item: string) => {
    const eq = item.indexOf('=')
    if (eq <= 0) {
      throw new SpecError(
        fromFlag
          ? `--kernel-arg ${JSON.stringify(item)}: expected K=V (e.g. --kernel-arg console=ttyS0,115200)`
          : `${where}: kernelArgs entry ${JSON.stringify(item)}: expected K=V`,
      )
    }
    const key = item.slice(0, eq)
    const value = item.slice(eq + 1)
    checkKernelArg(key, value, fromFlag ? `--kernel-arg ${item}` : where)
    out[key] = value
  }
  if (Array.isArray(raw)) {
    for (const item of raw) {
      if (typeof item !== 'string') throw new SpecError(`${where}: kernelArgs: list entries must be "K=V" strings, got ${describe(item)}`)
      pair(item)
    }
    return out
  }
  if (fromFlag && typeof raw === 'string') {
    pair(raw)
    return out
  }
  if (raw !== null && typeof raw === 'object') {
    for (const [key, v] of Object.entries(raw as Record<string, unknown>)) {
      let value: string | null
      if (v === null || v === true) value = null
      else if (typeof v === 'string' || typeof v === 'number') value = String(v)
      else throw new SpecError(`${where}: kernelArgs.${key}: expected a string or number (or null for a bare word), got ${describe(v)}`)
      checkKernelArg(key, value, where)
      out[key] = value
    }
    return out
  }
  throw new SpecError(`${where}: kernelArgs: expected a mapping of K: V (or a list of "K=V"), got ${describe(raw)}`)
}

/** The flavor's boot arguments overlaid with the spec's (the spec wins; insertion order kept). */
export function bootKernelArgs(
  flavor: {kernelArgs?: Record<string, string | null>},
  spec: {kernelArgs: Record<string, string | null>},
): Record<string, string | null> {
  return {...(flavor.kernelArgs ?? {}), ...spec.kernelArgs}
}

/** The kernel command line the artefacts are booted with (insertion order). */
export function kernelCmdline(args: Record<string, string | null>): string {
  return Object.entries(args)
    .map(([k, v]) => (v === null ? k : /\s/.test(v) ? `${k}="${v}"` : `${k}=${v}`))
    .join(' ')
}

const KEY_TYPES = new Set([
  'ssh-ed25519',
  'ssh-rsa',
  'ssh-dss',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
  'ssh-ed25519-cert-v01@openssh.com',
  'ssh-rsa-cert-v01@openssh.com',
  'ecdsa-sha2-nistp256-cert-v01@openssh.com',
  'ecdsa-sha2-nistp384-cert-v01@openssh.com',
  'ecdsa-sha2-nistp521-cert-v01@openssh.com',
])

/** Split off an authorized_keys options prefix (quoted strings may hold spaces). */
function splitOptions(line: string): {options: string; rest: string} {
  let inQuote = false
  for (let i = 0; i < line.length; i++) {
    const c = line[i]
    if (c === '\\' && inQuote) i++
    else if (c === '"') inQuote = !inQuote
    else if (!inQuote && (c === ' ' || c === '\t')) return {options: line.slice(0, i), rest: line.slice(i).trimStart()}
  }
  return {options: line, rest: ''}
}

/** Validate authorized_keys content: every non-comment line must be `[options] type base64 [comment]`. */
export function parseAuthorizedKeys(text: string, file: string): string[] {
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) throw new SpecError(`${file}: this is a private key; give the public key (the .pub file)`)
  const keys: string[] = []
  text.split(/\r?\n/).forEach((rawLine, i) => {
    const line = rawLine.trim()
    if (!line || line.startsWith('#')) return
    const where = `${file}:${i + 1}`
    let [type, blob] = line.split(/\s+/)
    if (!KEY_TYPES.has(type!)) {
      const {rest} = splitOptions(line)
      ;[type, blob] = rest.split(/\s+/)
      if (!KEY_TYPES.has(type ?? ''))
        throw new SpecError(`${where}: not an SSH public key line (expected e.g. 'ssh-ed25519 AAAA… comment'), got ${JSON.stringify(line.slice(0, 60))}`)
    }
    if (!blob || !/^[A-Za-z0-9+/]+={0,2}$/.test(blob)) throw new SpecError(`${where}: ${type} key has no valid base64 key data`)
    const bytes = Buffer.from(blob, 'base64')
    const len = bytes.length >= 4 ? bytes.readUInt32BE(0) : -1
    const inner = len > 0 && len < 64 && bytes.length >= 4 + len ? bytes.toString('latin1', 4, 4 + len) : ''
    if (inner !== type) throw new SpecError(`${where}: the key data does not hold a ${type} key (corrupt or truncated line?)`)
    keys.push(line)
  })
  if (keys.length === 0) throw new SpecError(`${file}: no SSH public keys in it`)
  return keys
}

/** The machine's Debian mirror from apt's sources (one-line and deb822 formats). */
export async function mirrorFromApt(aptRoot = '/'): Promise<string> {
  const dir = join(aptRoot, 'etc/apt')
  const files: string[] = [join(dir, 'sources.list')]
  try {
    for (const f of (await readdir(join(dir, 'sources.list.d'))).sort()) {
      if (f.endsWith('.list') || f.endsWith('.sources')) files.push(join(dir, 'sources.list.d', f))
    }
  } catch {
    // no sources.list.d
  }
  const debianSuite = /^(?:bookworm|trixie|forky|bullseye|buster|sid|stable|testing|unstable|oldstable)(?:-updates|-backports)?$/
  for (const f of files) {
    let text: string
    try {
      text = await readFile(f, 'utf8')
    } catch {
      continue
    }
    const candidates: {uri: string; suites: string[]}[] = []
    if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'mi').exec(stanza)?.[1]?.trim() ?? ''
        if (!field('Types').split(/\s+/).includes('deb') || /^(no|false)$/i.test(field('Enabled'))) continue
        for (const uri of field('URIs').split(/\s+/).filter(Boolean)) candidates.push({uri, suites: field('Suites').split(/\s+/)})
      }
    } else {
      for (const line of text.split('\n')) {
        const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line)
        if (m) candidates.push({uri: m[1]!, suites: [m[2]!]})
      }
    }
    const hit = candidates.find((c) => /^https?:\/\//.test(c.uri) && !/security/.test(c.uri) && c.suites.some((s) => debianSuite.test(s)))
    if (hit) return hit.uri.replace(/\/+$/, '')
  }
  return DEFAULT_DEBIAN_MIRROR
}

export interface SpecSources {
  /** --config FILE (undefined: ./rdk.yaml if it exists, else the embedded default config). */
  configFile?: string
  /** Flag values keyed by flag name; repeatable flags as arrays. */
  flags?: Record<string, unknown>
  env?: Partial<SpecEnv>
}

export interface ConfigLayer {
  /** Where the values came from (a file path, or the built-in default config). */
  origin: string
  values: Partial<BuildSpec>
}

/** Read and check a config document: unknown keys and wrong types are errors with line:col. */
export function parseConfigText(text: string, file: string, env: SpecEnv): ConfigLayer {
  const y = YamlFile.parse(file, text, (m) => new SpecError(m))
  if (y.data === null || y.data === undefined) return {origin: file, values: {}}
  if (typeof y.data !== 'object' || Array.isArray(y.data)) throw new SpecError(`${file}: the config must be a mapping of settings (flavor: tiny, …)`)
  const baseDir = file.startsWith('<') ? env.cwd : dirname(resolve(env.cwd, file))
  const values: Record<string, unknown> = {}
  for (const [key, raw] of Object.entries(y.data as Record<string, unknown>)) {
    const s = byKey.get(key)
    if (!s) {
      const near = nearNames(key, [...byKey.keys(), ...byFlag.keys()])
        .map((n) => byKey.get(n)?.key ?? byFlag.get(n)!.key)
        .filter((v, i, a) => a.indexOf(v) === i)
      throw new SpecError(
        `${y.where([key], true)}: unknown key '${key}'${near.length ? ` (did you mean '${near[0]}'?)` : ''}; known keys: ${SPEC_SETTINGS.map((x) => x.key).join(', ')}`,
      )
    }
    values[key] = parseValue(s, raw, y.where([key]), baseDir, env, false)
  }
  return {origin: file, values: values as Partial<BuildSpec>}
}

async function loadConfigLayer(configFile: string | undefined, env: SpecEnv): Promise<ConfigLayer> {
  let file = configFile
  if (file === undefined) {
    const implicit = resolve(env.cwd, 'rdk.yaml')
    if (
      await stat(implicit).then(
        (s) => s.isFile(),
        () => false,
      )
    )
      file = implicit
  }
  if (file === undefined) return parseConfigText(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_NAME, env)
  let text: string
  try {
    text = await readFile(resolve(env.cwd, file), 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new SpecError(
      `cannot read config file ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : (err as Error).message}`,
    )
  }
  return parseConfigText(text, file, env)
}

function flagLayer(flags: Record<string, unknown>, env: SpecEnv): Partial<BuildSpec> {
  const out: Record<string, unknown> = {}
  for (const [name, raw] of Object.entries(flags)) {
    if (raw === undefined || (Array.isArray(raw) && raw.length === 0)) continue
    const s = byFlag.get(name)
    if (!s) throw new SpecError(`unknown build option --${name}`)
    const values = Array.isArray(raw) ? raw : [raw]
    if (s.kind === 'map') {
      const merged: Record<string, string | null> = {}
      for (const v of values) Object.assign(merged, parseValue(s, String(v), `--${name}`, env.cwd, env, true))
      out[s.key] = merged
    } else if (s.repeatable) {
      out[s.key] = parseValue(s, values.map(String), `--${name}`, env.cwd, env, true)
    } else {
      out[s.key] = parseValue(s, values[values.length - 1], `--${name}`, env.cwd, env, true)
    }
  }
  return out as Partial<BuildSpec>
}

const APPEND: ReadonlySet<SpecKey> = new Set(['elements', 'elementPaths', 'sshKeys', 'hardwareManagers'])

/** Merge layers (later wins; see the module comment for lists). */
export function mergeLayers(layers: Partial<BuildSpec>[]): Partial<BuildSpec> {
  const out: Record<string, unknown> = {}
  for (const layer of layers) {
    for (const [k, v] of Object.entries(layer)) {
      if (v === undefined) continue
      const key = k as SpecKey
      if (APPEND.has(key) && Array.isArray(out[key])) out[key] = [...new Set([...(out[key] as string[]), ...(v as string[])])]
      else if (key === 'kernelArgs' && out[key]) out[key] = {...(out[key] as object), ...(v as object)}
      else out[key] = v
    }
  }
  return out as Partial<BuildSpec>
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/
export const ELEMENT_NAME_RE = /^[a-z0-9][a-z0-9._-]*$/

async function kindOf(p: string): Promise<'file' | 'dir' | 'other' | undefined> {
  try {
    const st = await stat(p)
    return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other'
  } catch {
    return undefined
  }
}

/** Fill defaults and check everything that needs more than one field or the filesystem. */
export async function finishSpec(partial: Partial<BuildSpec>, envIn: Partial<SpecEnv> = {}): Promise<BuildSpec> {
  const env = specEnv(envIn)
  const spec: Record<string, unknown> = {...partial}
  for (const s of SPEC_SETTINGS) {
    if (spec[s.key] === undefined) spec[s.key] = await s.default(env, spec as Partial<BuildSpec>)
  }
  const b = spec as unknown as BuildSpec
  if (!NAME_RE.test(b.name)) throw new SpecError(`name: '${b.name}' must be a file name: letters, digits, '.', '_', '+', '-' (not starting with a dot)`)
  for (const e of b.elements) {
    if (!ELEMENT_NAME_RE.test(e)) throw new SpecError(`elements: '${e}' is not a valid element name (lower-case letters, digits, '.', '_', '-')`)
  }
  for (const [k, v] of Object.entries(b.kernelArgs)) checkKernelArg(k, v, 'kernelArgs')
  if (b.formats.length === 0) throw new SpecError('formats: at least one format is needed (kernel, initramfs, …)')
  if (b.ipxeBaseUrl && !/^https?:\/\/[^\s"'`]+$/.test(b.ipxeBaseUrl)) throw new SpecError(`ipxeBaseUrl: '${b.ipxeBaseUrl}' is not an http:// or https:// URL`)
  if (!/^(https?|file):\/\/\S+$/.test(b.debianMirror)) throw new SpecError(`debianMirror: '${b.debianMirror}' must be an http://, https:// or file:// URL`)
  b.debianMirror = b.debianMirror.replace(/\/+$/, '')
  if (!/^[a-z0-9][a-z0-9.-]*$/.test(b.debianSuite)) throw new SpecError(`debianSuite: '${b.debianSuite}' is not a suite name (e.g. bookworm)`)
  const outKind = await kindOf(b.output)
  if (outKind && outKind !== 'dir') throw new SpecError(`output: ${b.output} exists and is not a directory`)
  for (const p of b.elementPaths) {
    const k = await kindOf(p)
    if (k !== 'dir') throw new SpecError(`elementPaths: ${p} ${k ? 'is not a directory' : 'does not exist'}`)
  }
  for (const p of b.hardwareManagers) {
    const k = await kindOf(p)
    if (!k) throw new SpecError(`hardwareManagers: ${p} does not exist`)
    if (k === 'file' && !/\.m?js$/.test(p)) throw new SpecError(`hardwareManagers: ${p} must be a .js or .mjs module (or a directory of them)`)
    if (k === 'other') throw new SpecError(`hardwareManagers: ${p} is not a file or directory`)
  }
  b.authorizedKeys = []
  for (const p of b.sshKeys) {
    let text: string
    try {
      text = await readFile(p, 'utf8')
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new SpecError(`sshKeys: cannot read ${p}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : (err as Error).message}`)
    }
    b.authorizedKeys.push(...parseAuthorizedKeys(text, p))
  }
  // Field order as in the table (stable JSON, stable cache keys).
  const ordered: Record<string, unknown> = {}
  for (const s of SPEC_SETTINGS) ordered[s.key] = spec[s.key]
  ordered.authorizedKeys = b.authorizedKeys
  return ordered as unknown as BuildSpec
}

export function specEnv(e: Partial<SpecEnv> = {}): SpecEnv {
  return {env: e.env ?? process.env, cwd: e.cwd ?? process.cwd(), home: e.home ?? homedir(), aptRoot: e.aptRoot ?? '/'}
}

export interface ResolvedSpec {
  spec: BuildSpec
  /** The config the file layer came from. */
  configOrigin: string
}

/** Config file + flags → a validated BuildSpec. */
export async function resolveSpec(src: SpecSources = {}): Promise<ResolvedSpec> {
  const env = specEnv(src.env)
  const layer = await loadConfigLayer(src.configFile, env)
  const flags = flagLayer(src.flags ?? {}, env)
  const spec = await finishSpec(mergeLayers([layer.values, flags]), env)
  return {spec, configOrigin: layer.origin}
}

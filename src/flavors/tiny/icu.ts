/**
 * Slimming the ICU data built into Node.
 *
 * The official Node binaries carry ICU's full data (`icudt<NN>_dat`, 33 MB of Node 20's 86 MB, ≈7.9 MB
 * of the xz'd initramfs): every locale's names, currencies, units, collation tailorings, the CJK/Thai
 * line-break dictionaries, transliterators and legacy-codepage converters. The agent speaks JSON and
 * logs in English; it needs ICU only for what V8 itself uses (Unicode properties in RegExps, case
 * mapping, normalisation, `localeCompare`, Date/Number formatting for `root`/`en`).
 *
 * ICU's common data is a table of contents (item names, sorted, and offsets) followed by the items.
 * We rewrite it in place inside (a copy of) the binary with a subset of the items — same header, same
 * ICU version, items byte-for-byte — and zero the rest of the symbol. ICU looks items up by name
 * and falls back along the locale chain (`de_CH` → `de` → `root`), so a removed locale behaves like
 * one ICU does not know: formatting in that locale uses root/English data instead of failing.
 *
 * A self-check (checkNode) runs the slimmed binary on the host before it goes into an image.
 */
import {dynamicSymbols} from '../../debian/elf.js'

export class IcuDataError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'IcuDataError'
  }
}

export interface IcuItem {
  /** Full item name, e.g. `icudt78l/coll/root.res`. */
  name: string
  /** Offset from the start of the table of contents, and size including alignment padding. */
  offset: number
  size: number
}

export interface IcuPackage {
  headerSize: number
  items: IcuItem[]
}

/** Bumped whenever keepForEnglish changes (part of the cache key of the prepared Node binary). */
export const ICU_PROFILE_VERSION = 3

/** Locales kept by the `en` profile (and the two bookkeeping bundles every tree has). */
export const KEPT_LOCALES: ReadonlySet<string> = new Set(['root', 'en', 'en_US', 'en_US_POSIX', 'en_001', 'pool', 'res_index'])
/** Converters at least this large (the CJK multi-byte tables) are dropped; single-byte ones are tiny. */
export const MAX_CONVERTER_BYTES = 32 * 1024

const LOCALE_ID = /^[a-z]{2,3}(?:_[A-Za-z0-9]+)*$/

/**
 * The `en` profile: everything except other locales' bundles (in every tree: main, coll, curr, lang,
 * region, unit, zone, rbnf, brkitr), transliterators, break-iterator dictionaries (Chinese/Japanese,
 * Thai, Lao, Khmer, Burmese word breaking) and the CJK line-break variants, the character-name table
 * (u_charName: not used by V8), the spoof checker's confusables, the ISO-2022 compound converters and
 * the large legacy converters. Line breaking keeps the default rules (not the loose/normal/CJK variants).
 */
export function keepForEnglish(name: string): boolean {
  const rel = name.slice(name.indexOf('/') + 1)
  const parts = rel.split('/')
  const base = parts[parts.length - 1]!
  // Transliterators, display names of languages and regions (Intl.DisplayNames then answers with the
  // code) and spelled-out numbers: V8 does not need them for anything the agent does.
  if (parts[0] === 'translit' || parts[0] === 'lang' || parts[0] === 'region' || parts[0] === 'rbnf') return false
  if (base.endsWith('.dict') || base.endsWith('.cfu') || base === 'unames.icu' || base.startsWith('icu-internal-compound')) return false
  if (parts[0] === 'brkitr' && base.startsWith('line_')) return false
  if (base.endsWith('.res')) {
    const id = base.slice(0, -4)
    if (KEPT_LOCALES.has(id)) return true
    return !LOCALE_ID.test(id)
  }
  return true
}

/** Parse ICU common data (`CmnD`, little-endian) at the start of `data`. */
export function parseIcuPackage(data: Buffer): IcuPackage {
  if (data.length < 32 || data[2] !== 0xda || data[3] !== 0x27) throw new IcuDataError('not ICU data (no 0xda27 magic)')
  const headerSize = data.readUInt16LE(0)
  if (data[8] !== 0) throw new IcuDataError('big-endian ICU data is not supported')
  if (data.toString('latin1', 12, 16) !== 'CmnD')
    throw new IcuDataError(`not an ICU common data package (format ${JSON.stringify(data.toString('latin1', 12, 16))})`)
  if (headerSize % 16 !== 0 || headerSize + 4 > data.length) throw new IcuDataError(`unexpected ICU header size ${headerSize}`)
  const toc = data.subarray(headerSize)
  const count = toc.readUInt32LE(0)
  if (count === 0 || 4 + count * 8 > toc.length) throw new IcuDataError(`bad ICU item count ${count}`)
  const items: IcuItem[] = []
  for (let i = 0; i < count; i++) {
    const nameOff = toc.readUInt32LE(4 + i * 8)
    const offset = toc.readUInt32LE(8 + i * 8)
    const end = toc.indexOf(0, nameOff)
    if (end < 0) throw new IcuDataError('unterminated ICU item name')
    items.push({name: toc.toString('latin1', nameOff, end), offset, size: 0})
  }
  for (let i = 0; i < count; i++) {
    const next = i + 1 < count ? items[i + 1]!.offset : toc.length
    if (next < items[i]!.offset || items[i]!.offset % 16 !== 0) throw new IcuDataError('ICU items are not laid out in table order (cannot slim this package)')
    items[i]!.size = next - items[i]!.offset
  }
  return {headerSize, items}
}

const align16 = (n: number): number => (n + 15) & ~15

/** A new package holding the items `keep` selects, in the same (sorted) order; fits in `data.length`. */
export function repackIcu(data: Buffer, keep: (name: string, size: number) => boolean): {data: Buffer; bytes: number; kept: number; dropped: number} {
  const pkg = parseIcuPackage(data)
  const chosen = pkg.items.filter((i) => keep(i.name, i.size))
  const names = chosen.map((i) => Buffer.from(`${i.name}\0`, 'latin1'))
  const tocHead = 4 + chosen.length * 8
  let cursor = align16(tocHead + names.reduce((n, b) => n + b.length, 0))
  const itemOffsets = chosen.map((i) => {
    const at = cursor
    cursor = align16(cursor + i.size)
    return at
  })
  const total = pkg.headerSize + cursor
  if (total > data.length) throw new IcuDataError('slimmed ICU data is larger than the original')
  const out = Buffer.alloc(data.length)
  data.copy(out, 0, 0, pkg.headerSize)
  const toc = out.subarray(pkg.headerSize)
  toc.writeUInt32LE(chosen.length, 0)
  let nameAt = tocHead
  chosen.forEach((item, k) => {
    toc.writeUInt32LE(nameAt, 4 + k * 8)
    toc.writeUInt32LE(itemOffsets[k]!, 8 + k * 8)
    names[k]!.copy(toc, nameAt)
    nameAt += names[k]!.length
    const src = data.subarray(pkg.headerSize + item.offset, pkg.headerSize + item.offset + item.size)
    src.copy(toc, itemOffsets[k]!)
  })
  return {data: out, bytes: total, kept: chosen.length, dropped: pkg.items.length - chosen.length}
}

export interface IcuSlimResult {
  symbol: string
  /** Size of the ICU data symbol and the bytes the kept items take. */
  symbolBytes: number
  keptBytes: number
  keptItems: number
  droppedItems: number
}

/**
 * Replace the ICU data inside the ELF image `binary` (modified in place) with the items `keep` selects.
 * Converters of MAX_CONVERTER_BYTES or more are dropped too.
 */
export function slimIcuInBinary(binary: Buffer, keep: (name: string) => boolean = keepForEnglish, file = 'node'): IcuSlimResult {
  const syms = dynamicSymbols(binary, (n) => /^icudt\d+_dat$/.test(n), file)
  if (syms.length !== 1 || syms[0]!.fileOffset === undefined) {
    throw new IcuDataError(`${file} has no single icudt<NN>_dat symbol with file contents (found ${syms.length}): is it an official Node build with full ICU?`)
  }
  const sym = syms[0]!
  const region = binary.subarray(sym.fileOffset!, sym.fileOffset! + sym.size)
  const r = repackIcu(region, (name, size) => keep(name) && !(name.endsWith('.cnv') && size >= MAX_CONVERTER_BYTES))
  r.data.copy(region)
  return {symbol: sym.name, symbolBytes: sym.size, keptBytes: r.bytes, keptItems: r.kept, droppedItems: r.dropped}
}

/**
 * What the agent (and V8 itself) needs of ICU, as a script for `node -e`: it throws, and so exits
 * non-zero, when a slimmed binary lost something that matters.
 */
export const ICU_SELF_CHECK = `
const assert = (c, what) => { if (!c) throw new Error('ICU self-check failed: ' + what) }
assert(/\\p{L}+/u.test('Ünïcödé') && /\\p{Script=Greek}/u.test('λ'), 'RegExp Unicode properties')
assert('ǅ'.toLowerCase() === 'ǆ' && 'ß'.toUpperCase() === 'SS', 'case mapping')
assert('Å'.normalize('NFD').length === 2 && 'ﬁ'.normalize('NFKC') === 'fi', 'normalisation')
assert(['b', 'a', 'C'].sort((x, y) => x.localeCompare(y)).join('') === 'abC', 'collation')
assert(new Intl.NumberFormat('en-US').format(1234567.891) === '1,234,567.891', 'number format')
assert(new Intl.DateTimeFormat('en-US', {timeZone: 'UTC', year: 'numeric', month: 'long'}).format(0) === 'January 1970', 'date format')
assert(new Date(0).toLocaleString('en-US', {timeZone: 'America/New_York'}).startsWith('12/31/1969'), 'time zones')
assert(new Intl.Segmenter('en', {granularity: 'word'}).segment('hello world').containing(7).segment === 'world', 'word segmentation')
assert(typeof new Date().toString() === 'string' && new Date(0).toISOString() === '1970-01-01T00:00:00.000Z', 'dates')
assert(new TextDecoder('utf-16le').decode(new Uint8Array([0x68, 0, 0x69, 0])) === 'hi', 'TextDecoder')
assert(new Intl.PluralRules('en').select(1) === 'one', 'plural rules')
assert(typeof new Intl.DisplayNames('en', {type: 'region'}).of('DE') === 'string', 'display names (the code when names are not kept)')
assert(new Intl.NumberFormat('de-DE').format(1.5).length > 0, 'fallback for a removed locale')
process.stdout.write('ok')
`

/**
 * ICU slimming of the image's Node (src/flavors/tiny/icu.ts), on this host's real Node binary: the
 * slimmed copy keeps what V8 needs (the build's own self-check), really lost the other locales, and
 * kept every remaining item byte for byte.
 */
import {execFileSync} from 'node:child_process'
import {chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {dynamicSymbols} from '../src/debian/elf.js'
import {ICU_SELF_CHECK, IcuDataError, keepForEnglish, parseIcuPackage, repackIcu, slimIcuInBinary} from '../src/flavors/tiny/icu.js'

const dir = mkdtempSync(join(tmpdir(), 'rdk-icu-'))
afterAll(() => rmSync(dir, {recursive: true, force: true}))

const original = readFileSync(process.execPath)
const icuOf = (bin: Buffer): Buffer => {
  const [sym] = dynamicSymbols(bin, (n) => /^icudt\d+_dat$/.test(n))
  return bin.subarray(sym!.fileOffset!, sym!.fileOffset! + sym!.size)
}

describe('ICU data in Node', () => {
  const slim = Buffer.from(original)
  const result = slimIcuInBinary(slim)
  const slimPath = join(dir, 'node')
  writeFileSync(slimPath, slim)
  chmodSync(slimPath, 0o755)
  const node = (code: string) => execFileSync(slimPath, ['-e', code], {encoding: 'utf8'})

  it('keeps root/English data only: a fraction of the items and bytes', () => {
    expect(result.symbol).toMatch(/^icudt\d+_dat$/)
    expect(result.keptItems).toBeGreaterThan(100)
    expect(result.droppedItems).toBeGreaterThan(result.keptItems * 5)
    expect(result.keptBytes).toBeLessThan(result.symbolBytes / 5)
  })

  it('passes the self-check the build runs (RegExp properties, case, normalisation, collation, formats)', () => {
    expect(node(ICU_SELF_CHECK)).toBe('ok')
  })

  it('formats other locales with the root/English data (the German data is gone)', () => {
    expect(execFileSync(process.execPath, ['-e', "process.stdout.write(new Intl.NumberFormat('de-DE').format(1234.5))"], {encoding: 'utf8'})).toBe('1.234,5')
    expect(node("process.stdout.write(new Intl.NumberFormat('de-DE').format(1234.5))")).toBe('1,234.5')
    expect(node("process.stdout.write(new Intl.NumberFormat('en-US').format(1234.5))")).toBe('1,234.5')
  })

  it('keeps every remaining item byte for byte, in sorted order, 16-byte aligned', () => {
    const before = icuOf(original)
    const after = icuOf(slim)
    const a = parseIcuPackage(before)
    const b = parseIcuPackage(after)
    expect(b.items.map((i) => i.name)).toEqual(
      a.items.filter((i) => keepForEnglish(i.name) && !(i.name.endsWith('.cnv') && i.size >= 32 * 1024)).map((i) => i.name),
    )
    expect([...b.items.map((i) => i.name)].sort()).toEqual(b.items.map((i) => i.name))
    const byName = new Map(a.items.map((i) => [i.name, i]))
    for (const item of b.items) {
      expect(item.offset % 16).toBe(0)
      const src = byName.get(item.name)!
      // The original item's bytes (its size may include alignment padding that differs).
      const n = Math.min(src.size, item.size)
      const x = before.subarray(a.headerSize + src.offset, a.headerSize + src.offset + n)
      const y = after.subarray(b.headerSize + item.offset, b.headerSize + item.offset + n)
      expect(x.equals(y), item.name).toBe(true)
    }
    // The rest of the symbol is zeros.
    const last = b.items[b.items.length - 1]!
    expect(after.subarray(b.headerSize + last.offset + last.size).every((x) => x === 0)).toBe(true)
  })

  it('keeps the locale-independent data and drops other locales, translit and dictionaries', () => {
    for (const keep of [
      'icudt78l/root.res',
      'icudt78l/en.res',
      'icudt78l/coll/ucadata.icu',
      'icudt78l/zoneinfo64.res',
      'icudt78l/uprops.icu',
      'icudt78l/nfkc.nrm',
      'icudt78l/brkitr/word.brk',
      'icudt78l/curr/pool.res',
    ]) {
      expect(keepForEnglish(keep), keep).toBe(true)
    }
    for (const drop of [
      'icudt78l/de.res',
      'icudt78l/zh_Hant_TW.res',
      'icudt78l/coll/de.res',
      'icudt78l/translit/root.res',
      'icudt78l/brkitr/cjdict.dict',
      'icudt78l/unames.icu',
      'icudt78l/lang/en.res',
    ]) {
      expect(keepForEnglish(drop), drop).toBe(false)
    }
  })

  it('refuses what is not ICU common data, and a binary without it', () => {
    expect(() => parseIcuPackage(Buffer.alloc(64))).toThrow(IcuDataError)
    const fake = Buffer.from(icuOf(original).subarray(0, 256))
    fake.write('XXXX', 12, 'latin1')
    expect(() => parseIcuPackage(fake)).toThrow(/not an ICU common data package/)
    expect(() => repackIcu(Buffer.alloc(64), () => true)).toThrow(IcuDataError)
    expect(() => slimIcuInBinary(readFileSync('/usr/bin/true'), undefined, '/usr/bin/true')).toThrow(/no single icudt<NN>_dat symbol/)
  })
})

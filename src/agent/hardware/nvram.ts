/**
 * clean_uefi_nvram with IPA's semantics (hardware.clean_uefi_nvram + efi_utils.clean_boot_records):
 * every `efibootmgr -v` boot entry whose device path (from its first BBS/HD/FvFile/FvVol/PciRoot/
 * VenMsg/VenHw/UsbClass node on, so the loader file is part of it) matches one of `match_patterns`
 * (case-insensitive regular expressions, searched anywhere in the path; default `^HD\(`,
 * `shim.*\.efi`, `grub.*\.efi`) is removed with `efibootmgr -b NNNN -B`, which also drops it from
 * BootOrder. Entries whose line has no recognised device path are left alone, as in IPA.
 *
 * rdk is stricter: a machine that did not boot in UEFI mode (no /sys/firmware/efi) gets a clear
 * error before efibootmgr runs, and the patterns are compiled (all of them) before any entry is
 * removed. The labels are never matched, only the device paths (as IPA).
 */
import {existsSync} from 'node:fs'
import {run} from '../../common/exec.js'
import {CommandExecutionError, InvalidCommandParamsError} from '../errors.js'
import type {Logger} from '../log.js'
import {bootRecords, EFI_FIRMWARE_DIR, type BootRecord} from '../image/bootloader.js'

export const DEFAULT_CLEAN_UEFI_NVRAM_MATCH_PATTERNS: readonly string[] = ['^HD\\(', 'shim.*\\.efi', 'grub.*\\.efi']

/** The device path types IPA's efibootmgr parser recognises. */
const ENTRY = /^(.*?)\s+((?:BBS|HD|FvFile|FvVol|PciRoot|VenMsg|VenHw|UsbClass)\(.*)$/

export interface NvramEntry {
  /** Boot number, four hex digits as efibootmgr prints it. */
  boot: string
  label: string
  /** The device path (loader included), as matched. */
  path: string
}

/** Split efibootmgr records into label and device path (pure); records without a known device path are dropped. */
export function nvramEntries(records: readonly BootRecord[]): NvramEntry[] {
  const out: NvramEntry[] = []
  for (const r of records) {
    const m = ENTRY.exec(r.text.replace(/\s+$/, ''))
    if (m) out.push({boot: r.num, label: m[1]!, path: m[2]!})
  }
  return out
}

/** Validate and compile match_patterns as IPA does (a list of strings, each a valid regex), case-insensitive. */
export function compileMatchPatterns(matchPatterns: unknown): RegExp[] {
  const list = matchPatterns === undefined || matchPatterns === null ? DEFAULT_CLEAN_UEFI_NVRAM_MATCH_PATTERNS : matchPatterns
  const error = `The match_patterns must be a list of strings: ${JSON.stringify(matchPatterns)}`
  if (!Array.isArray(list)) throw new InvalidCommandParamsError(error)
  return list.map((p) => {
    if (typeof p !== 'string') throw new InvalidCommandParamsError(error)
    try {
      return new RegExp(p, 'i')
    } catch (err) {
      throw new InvalidCommandParamsError(`${error} (${JSON.stringify(p)}: ${(err as Error).message})`)
    }
  })
}

/** The entries that would be removed, each with the first pattern it matched (pure). */
export function entriesToRemove(entries: readonly NvramEntry[], patterns: readonly RegExp[]): (NvramEntry & {pattern: string})[] {
  const out: (NvramEntry & {pattern: string})[] = []
  for (const e of entries) {
    const hit = patterns.find((p) => p.test(e.path))
    if (hit) out.push({...e, pattern: hit.source})
  }
  return out
}

export interface CleanNvramOptions {
  log: Logger
  /** Default /sys/firmware/efi. */
  firmwareDir?: string
}

/** The step: remove the matching entries; returns what was removed (IPA returns nothing). */
export async function cleanUefiNvram(opts: CleanNvramOptions, matchPatterns: unknown): Promise<{removed: (NvramEntry & {pattern: string})[]}> {
  const patterns = compileMatchPatterns(matchPatterns)
  const firmwareDir = opts.firmwareDir ?? EFI_FIRMWARE_DIR
  if (!existsSync(firmwareDir)) {
    throw new CommandExecutionError(
      `clean_uefi_nvram: this machine did not boot in UEFI mode (${firmwareDir} does not exist): there are no UEFI boot entries to clean`,
    )
  }
  const remove = entriesToRemove(nvramEntries(await bootRecords()), patterns)
  for (const e of remove) {
    opts.log.info('removing a UEFI boot entry matching a clean_uefi_nvram pattern', {boot: e.boot, label: e.label, path: e.path, pattern: e.pattern})
    await run('efibootmgr', ['-b', e.boot, '-B'])
  }
  if (!remove.length) opts.log.info('clean_uefi_nvram: no UEFI boot entry matches', {patterns: patterns.map((p) => p.source)})
  return {removed: remove}
}

/**
 * Disk erase methods with IPA's semantics (`hardware.py` erase helpers): shred, ATA secure erase,
 * NVMe secure erase, and clearing pstore.
 *
 * The building blocks (blkid probing, the in-use and special-filesystem guards, metadata wipes, the
 * allow-list) are src/agent/disk/. Every destructive function takes the allow-list and re-checks its
 * target with assertDeviceAllowed().
 */
import {readdir, rm} from 'node:fs/promises'
import path from 'node:path'
import {run, ToolMissingError} from '../../common/exec.js'
import {assertDeviceAllowed} from '../disk/allowlist.js'
import {BlockDeviceEraseError} from '../errors.js'
import type {Logger} from '../log.js'

// ------------------------------------------------------------------------------------------------
// shred

export interface ShredOptions {
  /** agent_erase_devices_iterations (default 1). */
  iterations: number
  /** agent_erase_devices_zeroize (default true). */
  zeroize: boolean
}

/** The shred command line IPA runs (pure). */
export function shredArgs(dev: string, o: ShredOptions): string[] {
  return ['--force', ...(o.zeroize ? ['--zero'] : []), '--verbose', '--iterations', String(o.iterations), dev]
}

/** Overwrite a whole device with shred. Throws CommandFailedError / ToolMissingError on failure. */
export async function shredDevice(dev: string, o: ShredOptions, allowlist: readonly string[], log?: Logger): Promise<void> {
  assertDeviceAllowed(dev, allowlist)
  log?.info('erasing block device with shred', {device: dev, iterations: o.iterations, zeroize: o.zeroize})
  await run('shred', shredArgs(dev, o))
}

// ------------------------------------------------------------------------------------------------
// ATA secure erase (hdparm)

/**
 * The lines of hdparm -I's "Security:" block, normalised as IPA does: tab-indented lines, stripped,
 * inner tabs turned into spaces ("not\tenabled" → "not enabled"). Empty when there is no such block.
 */
export function parseHdparmSecurity(output: string): string[] {
  const m = /\nSecurity:[ \t]*\n/.exec(output)
  if (!m) return []
  const lines: string[] = []
  for (const line of output.slice(m.index + m[0].length).split('\n')) {
    if (!line.startsWith('\t')) break
    lines.push(line.trim().replace(/\t/g, ' '))
  }
  return lines
}

/** IPA's reading of the ATA security state machine (pure). */
export type AtaSecurityState =
  | 'unsupported' // no security feature set: try another method
  | 'frozen' // SEC2/SEC6: cannot erase until a power cycle
  | 'locked' // SEC4: a password is set and the drive is locked
  | 'enabled' // SEC5: security enabled, unlocked: can erase with the (empty) password
  | 'disabled' // SEC1: no password: set an empty one first

export function ataSecurityState(lines: readonly string[]): AtaSecurityState {
  if (!lines.includes('supported')) return 'unsupported'
  if (!lines.includes('not frozen')) return 'frozen'
  if (!lines.includes('not locked')) return 'locked'
  if (lines.includes('not enabled')) return 'disabled'
  return 'enabled'
}

/** Does the drive offer the enhanced erase? */
export function ataSupportsEnhancedErase(lines: readonly string[]): boolean {
  return !lines.includes('not supported: enhanced erase')
}

async function hdparmSecurityLines(dev: string, log?: Logger): Promise<string[] | null> {
  try {
    const {stdout} = await run('hdparm', ['-I', dev], {timeoutMs: 60_000})
    return parseHdparmSecurity(stdout)
  } catch (err) {
    if (err instanceof ToolMissingError) throw err
    // Devices that are not ATA (virtio, loop, some RAID controllers) refuse IDENTIFY: no secure erase.
    log?.info('hdparm cannot identify the device: ATA secure erase unavailable', {device: dev, err: (err as Error).message})
    return null
  }
}

/**
 * smartctl's opinion on whether ATA security commands reach the drive (bridged devices often fail).
 * True when they do or when smartctl is not installed (IPA's behaviour).
 */
async function smartctlSecurityCheck(dev: string, log?: Logger): Promise<boolean> {
  try {
    const r = await run('smartctl', ['-d', 'ata', dev, '-g', 'security'], {allowFailure: true, timeoutMs: 60_000})
    if (r.exitCode !== 0 && r.exitCode !== 127) {
      log?.warn('refusing ATA secure erase: direct ATA commands through smartctl fail', {device: dev})
      return false
    }
    return !r.stdout.includes('Unavailable')
  } catch (err) {
    if (err instanceof ToolMissingError) return true
    throw err
  }
}

/**
 * ATA secure erase as IPA does it. Returns false when the drive does not support it (try another
 * method); throws BlockDeviceEraseError when it is supported but fails.
 */
export async function ataSecureErase(dev: string, allowlist: readonly string[], log?: Logger): Promise<boolean> {
  assertDeviceAllowed(dev, allowlist)
  let lines = await hdparmSecurityLines(dev, log)
  if (!lines || ataSecurityState(lines) === 'unsupported' || !(await smartctlSecurityCheck(dev, log))) return false
  if (ataSecurityState(lines) === 'frozen') throw new BlockDeviceEraseError(`Block device ${dev} is frozen and cannot be erased`)

  const unlock = async (): Promise<string[]> => {
    let current = (await hdparmSecurityLines(dev, log)) ?? []
    // hdparm < 9.51 took NULL literally; try both spellings of the empty password.
    for (const password of ['NULL', '']) {
      if (current.includes('not locked')) break
      const r = await run('hdparm', ['--user-master', 'u', '--security-unlock', password, dev], {allowFailure: true})
      if (r.exitCode !== 0) log?.info('ATA security unlock failed', {device: dev, password, stderr: r.stderr.trim()})
      current = (await hdparmSecurityLines(dev, log)) ?? []
    }
    return current
  }

  if (!lines.includes('not locked')) lines = await unlock()
  if (ataSecurityState(lines) === 'locked') throw new BlockDeviceEraseError(`Block device ${dev} already has a security password set`)
  if (ataSecurityState(lines) === 'disabled') {
    const r = await run('hdparm', ['--user-master', 'u', '--security-set-pass', 'NULL', dev], {allowFailure: true})
    if (r.exitCode !== 0) throw new BlockDeviceEraseError(`Security password set failed for device ${dev}: ${r.stderr.trim()}`)
  }
  const option = ataSupportsEnhancedErase(lines) ? '--security-erase-enhanced' : '--security-erase'
  log?.info('running ATA secure erase', {device: dev, option})
  const r = await run('hdparm', ['--user-master', 'u', option, 'NULL', dev], {allowFailure: true})
  if (r.exitCode !== 0) {
    // Unlock so that a shred fallback can still write to the drive.
    await unlock()
    throw new BlockDeviceEraseError(`Erase failed for device ${dev}: ${r.stderr.trim() || `exit code ${r.exitCode}`}`)
  }
  const after = (await hdparmSecurityLines(dev, log)) ?? []
  if (!after.includes('not enabled')) throw new BlockDeviceEraseError(`An unknown error occurred erasing block device ${dev}`)
  return true
}

// ------------------------------------------------------------------------------------------------
// NVMe secure erase (nvme format)

/** OACS bit 1: the controller supports the Format NVM command. */
export const NVME_FORMAT_SUPPORTED = 0b10
/** FNA bit 2: cryptographic erase is supported as part of Format NVM. */
export const NVME_CRYPTO_FORMAT_SUPPORTED = 0b100

export interface NvmeCapabilities {
  oacs: number
  fna: number
  sanicap: number
}

/** Parse `nvme id-ctrl -o json` (pure). */
export function parseNvmeIdCtrl(text: string): NvmeCapabilities | null {
  const trimmed = text.trim()
  if (!trimmed) return null
  const j = JSON.parse(trimmed) as Record<string, unknown>
  const n = (v: unknown): number => (typeof v === 'number' ? v : Number(v) || 0)
  return {oacs: n(j.oacs), fna: n(j.fna), sanicap: n(j.sanicap)}
}

/** The secure erase setting (`nvme format -s`) IPA picks: 2 crypto erase, 1 user-data erase, null none. */
export function nvmeFormatMode(c: NvmeCapabilities): 1 | 2 | null {
  if (!(c.oacs & NVME_FORMAT_SUPPORTED)) return null
  return c.fna & NVME_CRYPTO_FORMAT_SUPPORTED ? 2 : 1
}

/** NVMe secure erase as IPA does it. True on success; BlockDeviceEraseError on any failure. */
export async function nvmeSecureErase(dev: string, allowlist: readonly string[], log?: Logger): Promise<boolean> {
  assertDeviceAllowed(dev, allowlist)
  let caps: NvmeCapabilities | null
  try {
    const {stdout} = await run('nvme', ['id-ctrl', dev, '-o', 'json'], {timeoutMs: 60_000})
    caps = parseNvmeIdCtrl(stdout)
  } catch (err) {
    if (err instanceof ToolMissingError) throw new BlockDeviceEraseError(`Failed to fetch NVMe capabilities for device ${dev}: ${err.message}`)
    throw new BlockDeviceEraseError(`Failed to fetch NVMe capabilities for device ${dev}: ${(err as Error).message}`)
  }
  if (!caps) throw new BlockDeviceEraseError(`nvme-cli did not return any information for device: ${dev}`)
  const mode = nvmeFormatMode(caps)
  if (mode === null) throw new BlockDeviceEraseError(`nvme-cli did not return any supported format modes for device: ${dev}`)
  log?.info('running NVMe secure erase', {device: dev, ses: mode})
  try {
    await run('nvme', ['format', dev, '-s', String(mode), '-f'])
  } catch (err) {
    throw new BlockDeviceEraseError(`Failed to nvme format device ${dev}: ${(err as Error).message}`)
  }
  return true
}

/** IPA's test for an NVMe device: the name. */
export function isNvme(dev: string): boolean {
  return dev.startsWith('/dev/nvme')
}

// ------------------------------------------------------------------------------------------------
// pstore

/** Where pstore is mounted, from /proc/mounts text (pure); null when it is not. */
export function pstoreMountPoint(mounts: string): string | null {
  const m = /^pstore (\S+) pstore /m.exec(mounts)
  return m ? m[1]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) : null
}

/** Remove everything inside `dir` (not `dir` itself). */
export async function clearDirectory(dir: string): Promise<number> {
  const entries = await readdir(dir)
  for (const e of entries) await rm(path.join(dir, e), {recursive: true, force: true})
  return entries.length
}

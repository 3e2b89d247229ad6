/**
 * Disk cleaning primitives with IPA's semantics (`hardware.py` erase helpers and
 * `disk_utils.destroy_disk_metadata`), plus rdk's safety guard.
 *
 * Safety guard (ours, always on): a device is never written if a filesystem on it, on one of its
 * partitions or on anything stacked on them (md, dm, LVM) is mounted, or if any of those is active
 * swap. Special filesystems (shared/clustered: GPFS, VMFS, GFS2, Ceph) are guarded as IPA does when
 * `guard_special_filesystems` is on.
 *
 * Every destructive function takes the allow-list and re-checks its target with assertDeviceAllowed().
 */
import {existsSync} from 'node:fs'
import {readFile, readdir, realpath, rm} from 'node:fs/promises'
import path from 'node:path'
import {CommandFailedError, run, ToolMissingError} from '../../common/exec.js'
import {BlockDeviceEraseError, ProtectedDeviceError} from '../errors.js'
import type {Logger} from '../log.js'
import {assertDeviceAllowed, kernelName, parentDiskOf} from './disks.js'

/** Primary or backup GPT: protective MBR/header + 128 entries of 128 bytes = 33 sectors of 512 bytes. */
export const GPT_SIZE_SECTORS = 33
const SYS_CLASS_BLOCK = '/sys/class/block'

// ------------------------------------------------------------------------------------------------
// Probing

/** Parse `blkid -p -o export` output (KEY=value lines). */
export function parseBlkidExport(text: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=')
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1)
  }
  return out
}

/**
 * Low-level probe of one device's signatures (`blkid -p -o export`: TYPE, UUID, LABEL, PARTUUID…;
 * bypasses the blkid cache and udev), or of the partition starting at byte `offset` of a disk
 * (`-O`). {} when none.
 */
export async function probeDevice(dev: string, offset?: number): Promise<Record<string, string>> {
  const r = await run('blkid', ['-p', '-o', 'export', ...(offset === undefined ? [] : ['-O', String(offset)]), dev], {allowFailure: true, timeoutMs: 30_000})
  // exit 2: no signature found
  if (r.exitCode !== 0) return {}
  return parseBlkidExport(r.stdout)
}

/** Partitions of a whole disk, as /dev paths (from sysfs; empty for a partition). */
export async function partitionsOf(dev: string): Promise<string[]> {
  const kname = kernelName(dev)
  let entries: string[]
  try {
    entries = await readdir(path.join(SYS_CLASS_BLOCK, kname))
  } catch {
    return []
  }
  return entries.filter((e) => e.startsWith(kname) && existsSync(path.join(SYS_CLASS_BLOCK, kname, e, 'partition'))).sort().map((e) => `/dev/${e}`)
}

/** Size in bytes from sysfs (`size` is always in 512-byte units). */
export async function deviceSize(dev: string): Promise<number> {
  const text = await readFile(path.join(SYS_CLASS_BLOCK, kernelName(dev), 'size'), 'utf8')
  return Number(text.trim()) * 512
}

/** The device's read-only flag (/sys/class/block/X/ro, which partitions have too). */
export async function isReadOnlyDevice(dev: string, log?: Logger): Promise<boolean> {
  const kname = kernelName(dev)
  for (const k of [kname, parentDiskOf(kname)]) {
    if (!k) continue
    try {
      return (await readFile(path.join(SYS_CLASS_BLOCK, k, 'ro'), 'utf8')).trim() === '1'
    } catch {
      // try the parent
    }
  }
  log?.warn('could not determine whether the device is read-only', {device: dev})
  return false
}

/** Label of the virtual-media parameters floppy/USB image Ironic attaches. */
export const VIRTUAL_MEDIA_LABEL = 'ir-vfd-dev'

/** IPA skips the virtual-media device: /dev/disk/by-label/ir-vfd-dev, or a probed LABEL of ir-vfd-dev. */
export async function isVirtualMediaDevice(dev: string, probe?: Record<string, string>): Promise<boolean> {
  try {
    if ((await realpath(`/dev/disk/by-label/${VIRTUAL_MEDIA_LABEL}`)) === (await realpath(dev))) return true
  } catch {
    // no such label link
  }
  const p = probe ?? (await probeDevice(dev))
  return p.LABEL === VIRTUAL_MEDIA_LABEL
}

/** A Linux software RAID member: the device or one of its partitions carries an md superblock. */
export async function isLinuxRaidMember(dev: string, probe?: Record<string, string>): Promise<boolean> {
  const own = probe ?? (await probeDevice(dev))
  if (own.TYPE === 'linux_raid_member') return true
  for (const part of await partitionsOf(dev)) {
    if ((await probeDevice(part)).TYPE === 'linux_raid_member') return true
  }
  return false
}

// ------------------------------------------------------------------------------------------------
// Safety guard: mounted filesystems, swap, special filesystems

export interface MountEntry {
  majmin: string
  mountpoint: string
  fstype: string
  source: string
}

/** Octal escapes (\040 for a space) used in /proc/self/mountinfo and /proc/swaps. */
function unescapeProc(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

/** Parse /proc/self/mountinfo. */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (!line.trim()) continue
    const [left, right] = line.split(' - ')
    if (!left || right === undefined) continue
    const f = left.split(' ')
    const r = right.split(' ')
    if (f.length < 5) continue
    out.push({majmin: f[2]!, mountpoint: unescapeProc(f[4]!), fstype: r[0] ?? '', source: unescapeProc(r[1] ?? '')})
  }
  return out
}

/** Parse /proc/swaps: the swap areas' file names (devices or files). */
export function parseSwaps(text: string): string[] {
  return text
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((f): f is string => Boolean(f))
    .map(unescapeProc)
}

/** Why each kernel block device is in use: itself, or through something stacked on it, is mounted or swap. */
export async function devicesInUse(): Promise<Map<string, string>> {
  const byMajmin = new Map<string, string>()
  const names = await readdir(SYS_CLASS_BLOCK).catch(() => [] as string[])
  await Promise.all(
    names.map(async (n) => {
      const mm = (await readFile(path.join(SYS_CLASS_BLOCK, n, 'dev'), 'utf8').catch(() => '')).trim()
      if (mm) byMajmin.set(mm, n)
    }),
  )
  const direct = new Map<string, string>()
  const mark = (kname: string | undefined, why: string): void => {
    if (kname && !direct.has(kname)) direct.set(kname, why)
  }
  const devOf = async (p: string): Promise<string | undefined> => {
    if (!p.startsWith('/dev/')) return undefined
    try {
      const k = path.basename(await realpath(p))
      return existsSync(path.join(SYS_CLASS_BLOCK, k)) ? k : undefined
    } catch {
      return undefined
    }
  }
  for (const m of parseMountinfo(await readFile('/proc/self/mountinfo', 'utf8'))) {
    const byNumber = m.majmin.startsWith('0:') ? undefined : byMajmin.get(m.majmin)
    mark(byNumber ?? (await devOf(m.source)), 'mounted filesystem')
  }
  const swaps = await readFile('/proc/swaps', 'utf8').catch(() => '')
  for (const f of parseSwaps(swaps)) mark(await devOf(f), 'active swap')

  // Close over the stack: whatever lies beneath a used device (slaves) and the disk holding a used partition.
  const out = new Map<string, string>()
  const queue = [...direct.entries()]
  while (queue.length) {
    const [k, why] = queue.shift()!
    if (out.has(k)) continue
    out.set(k, why)
    const slaves = await readdir(path.join(SYS_CLASS_BLOCK, k, 'slaves')).catch(() => [] as string[])
    for (const s of slaves) queue.push([s, why])
    const parent = parentDiskOf(k)
    if (parent) queue.push([parent, why])
  }
  return out
}

/** Throw ProtectedDeviceError if `dev` (or its partitions, or what is stacked on them) is mounted or swap. */
export async function assertNotInUse(dev: string, inUse?: Map<string, string>): Promise<void> {
  const used = inUse ?? (await devicesInUse())
  const why = used.get(kernelName(dev))
  if (why) throw new ProtectedDeviceError(dev, why)
}

/** Partition type GUIDs/ids IPA refuses to wipe (shared, clustered filesystems). */
export const GUARDED_PARTITION_IDS: Readonly<Record<string, string>> = {
  '37affc90-ef7d-4e96-91c3-2d7ae055b174': 'IBM GPFS Partition',
  'aa31e02a-400f-11db-9590-000c2911d1b8': 'VMware VMFS Partition (GPT)',
  '0xfb': 'VMware VMFS Partition (MBR)',
}
/** blkid filesystem types refused likewise (IPA guards gfs2; rdk adds VMFS and Ceph signatures). */
export const GUARDED_FS_TYPES: Readonly<Record<string, string>> = {
  gfs2: 'Red Hat Global File System 2',
  vmfs_volume_member: 'VMware VMFS volume',
  vmfs: 'VMware VMFS volume',
  ceph_bluestore: 'Ceph BlueStore volume',
}

/** What special filesystem, if any, a set of blkid probes shows (pure). */
export function findSpecialFilesystem(probes: readonly Record<string, string>[]): string | null {
  for (const p of probes) {
    for (const key of ['PART_ENTRY_TYPE', 'PTUUID', 'UUID', 'PART_ENTRY_UUID']) {
      const v = p[key]?.toLowerCase()
      if (v && GUARDED_PARTITION_IDS[v]) return GUARDED_PARTITION_IDS[v]
    }
    const t = p.TYPE?.toLowerCase()
    if (t && GUARDED_FS_TYPES[t]) return GUARDED_FS_TYPES[t]
  }
  return null
}

/** Throw ProtectedDeviceError if `dev` or one of its partitions holds a guarded special filesystem. */
export async function assertNoSpecialFilesystems(dev: string): Promise<void> {
  const probes = await Promise.all([dev, ...(await partitionsOf(dev))].map((d) => probeDevice(d)))
  const what = findSpecialFilesystem(probes)
  if (what) throw new ProtectedDeviceError(dev, what)
}

// ------------------------------------------------------------------------------------------------
// Metadata erase (disk_utils.destroy_disk_metadata)

/**
 * Wipe signatures and partition tables: `wipefs --force --all`, zero the first and last 33 sectors
 * with direct I/O (primary and backup GPT, even when sgdisk cannot parse a damaged table), then
 * `sgdisk -Z`, and tell the kernel.
 */
export async function destroyDiskMetadata(dev: string, allowlist: readonly string[], log?: Logger): Promise<void> {
  assertDeviceAllowed(dev, allowlist)
  log?.debug('destroying disk metadata', {device: dev})
  try {
    await run('wipefs', ['--force', '--all', dev])
  } catch (err) {
    if (!(err instanceof CommandFailedError) || !err.stderr.includes('--force')) throw err
    await run('wipefs', ['--all', dev])
  }
  const size = await deviceSize(dev)
  const sectors = Math.floor(size / 512)
  await run('dd', ['bs=512', 'if=/dev/zero', `of=${dev}`, `count=${Math.min(GPT_SIZE_SECTORS, sectors)}`, 'oflag=direct'])
  if (sectors > GPT_SIZE_SECTORS) {
    await run('dd', ['bs=512', 'if=/dev/zero', `of=${dev}`, `count=${GPT_SIZE_SECTORS}`, `seek=${sectors - GPT_SIZE_SECTORS}`, 'oflag=direct'])
  }
  await run('sgdisk', ['-Z', dev])
  if (!parentDiskOf(kernelName(dev))) {
    // Drop the kernel's view of the (now gone) partitions; fails harmlessly when they are busy.
    await run('blockdev', ['--rereadpt', dev], {allowFailure: true})
  }
  await run('udevadm', ['settle', '--timeout=30'], {allowFailure: true, timeoutMs: 35_000}).catch(() => undefined)
  log?.info('disk metadata destroyed', {device: dev})
}

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

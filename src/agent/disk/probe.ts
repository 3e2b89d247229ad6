/**
 * Asking the tools what is on the block devices: lsblk (the device list), udev properties and blkid
 * (signatures, filesystem and partition-entry tags). Parsers are pure functions over tool output;
 * the I/O functions are thin wrappers around them.
 */
import {realpath} from 'node:fs/promises'
import {run} from '../../common/exec.js'
import {partitionsOf} from './sysfs.js'

// ------------------------------------------------------------------------------------------------
// lsblk

/** Columns asked of lsblk (all accepted by util-linux 2.38, Debian bookworm). */
export const LSBLK_COLUMNS = [
  'KNAME',
  'PKNAME',
  'MODEL',
  'SIZE',
  'ROTA',
  'TYPE',
  'UUID',
  'PARTUUID',
  'SERIAL',
  'WWN',
  'LOG-SEC',
  'PHY-SEC',
  'TRAN',
  'RO',
] as const

/** One row of `lsblk --json --list`. */
export interface LsblkRow {
  kname: string
  pkname: string | null
  /** Every parent the device was listed under (an md array or multipath map has several). */
  parents: string[]
  model: string | null
  size: number
  rotational: boolean
  type: string
  uuid: string | null
  partuuid: string | null
  serial: string | null
  wwn: string | null
  logicalSectors: number | null
  physicalSectors: number | null
  tran: string | null
  readOnly: boolean
}

/** A tool's value as a trimmed string, null when absent or empty. */
export function str(v: unknown): string | null {
  if (v === null || v === undefined) return null
  const s = String(v).trim()
  return s === '' ? null : s
}

function int(v: unknown): number | null {
  if (v === null || v === undefined || v === '') return null
  const n = typeof v === 'number' ? v : Number(String(v).trim())
  return Number.isFinite(n) ? Math.trunc(n) : null
}

/** A tool's boolean (true/false, 1/0, "yes"). */
export function bool(v: unknown): boolean {
  if (typeof v === 'boolean') return v
  if (typeof v === 'number') return v !== 0
  const s = String(v ?? '')
    .trim()
    .toLowerCase()
  return s === '1' || s === 'true' || s === 'yes'
}

/**
 * Parse `lsblk --json` output (list or tree form; lsblk < 2.33 printed every value as a string,
 * newer ones use numbers and booleans). Children are flattened; a device listed under several
 * parents (md array, multipath map) is kept once with all its parents; `pkname` is taken from the
 * tree when the column is missing.
 */
export function parseLsblkJson(text: string): LsblkRow[] {
  const data = JSON.parse(text) as {blockdevices?: unknown[]}
  const out: LsblkRow[] = []
  const seen = new Map<string, LsblkRow>()
  const walk = (nodes: unknown[] | undefined, parent: string | null): void => {
    for (const raw of nodes ?? []) {
      if (!raw || typeof raw !== 'object') continue
      const d = raw as Record<string, unknown>
      const kname = str(d.kname ?? d.name)
      if (!kname) continue
      const pk = str(d.pkname) ?? parent
      const known = seen.get(kname)
      if (known) {
        if (pk && !known.parents.includes(pk)) known.parents.push(pk)
      } else {
        const row: LsblkRow = {
          kname,
          pkname: pk,
          parents: pk ? [pk] : [],
          model: str(d.model),
          size: int(d.size) ?? 0,
          rotational: bool(d.rota),
          type: str(d.type) ?? '',
          uuid: str(d.uuid),
          partuuid: str(d.partuuid),
          serial: str(d.serial),
          wwn: str(d.wwn),
          logicalSectors: int(d['log-sec']),
          physicalSectors: int(d['phy-sec']),
          tran: str(d.tran),
          readOnly: bool(d.ro),
        }
        seen.set(kname, row)
        out.push(row)
      }
      walk(d.children as unknown[] | undefined, kname)
    }
  }
  walk(data.blockdevices, null)
  return out
}

/** Run lsblk once over every block device. */
export async function runLsblk(): Promise<LsblkRow[]> {
  const {stdout} = await run('lsblk', ['-bia', '--json', '--list', `-o${LSBLK_COLUMNS.join(',')}`])
  return parseLsblkJson(stdout)
}

/** Parse `lsblk -P` output (one line of KEY="value" pairs per device). */
export function parseLsblkPairs(text: string): Record<string, string>[] {
  const out: Record<string, string>[] = []
  for (const line of text.split('\n')) {
    if (!line.trim()) continue
    out.push(Object.fromEntries([...line.matchAll(/([\w-]+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!])))
  }
  return out
}

/** `lsblk -Pbio <columns>`: columns the JSON listing does not carry (FSTYPE), one record per device. */
export async function lsblkColumns(columns: readonly string[]): Promise<Record<string, string>[]> {
  const {stdout} = await run('lsblk', ['-Pbio', columns.join(',')], {timeoutMs: 30_000})
  return parseLsblkPairs(stdout)
}

// ------------------------------------------------------------------------------------------------
// udev and mdadm --export (KEY=value, trimmed)

/** Parse `udevadm info --query=property` (and `mdadm --detail --export`) output: KEY=value lines, trimmed. */
export function parseUdevProperties(text: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=')
    if (eq <= 0) continue
    out[line.slice(0, eq).trim()] = line.slice(eq + 1).trim()
  }
  return out
}

/** `udevadm info --query=property` of one device, parsed (throws what run() throws). */
export async function udevProperties(dev: string): Promise<Record<string, string>> {
  const {stdout} = await run('udevadm', ['info', '--query=property', `--name=${dev}`], {timeoutMs: 10_000})
  return parseUdevProperties(stdout)
}

// ------------------------------------------------------------------------------------------------
// blkid

/** Parse `blkid -p -o export` output (KEY=value lines; values kept exactly: blkid escapes its own spaces). */
export function parseBlkidExport(text: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=')
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1)
  }
  return out
}

/**
 * Low-level probe of one device's signatures (`blkid -p -o export`: TYPE, UUID, LABEL, PARTUUID,
 * PTTYPE…; bypasses the blkid cache and udev), or of the partition starting at byte `offset` of a
 * disk (`-O`). {} when none (exit code 2) or when blkid fails.
 */
export async function probeDevice(dev: string, offset?: number): Promise<Record<string, string>> {
  const r = await run('blkid', ['-p', '-o', 'export', ...(offset === undefined ? [] : ['-O', String(offset)]), dev], {allowFailure: true, timeoutMs: 30_000})
  // exit 2: no signature found
  if (r.exitCode !== 0) return {}
  return parseBlkidExport(r.stdout)
}

/** IPA's block_uuid: the filesystem UUID, else the partition UUID. */
export async function blockUuid(dev: string): Promise<string> {
  const t = await probeDevice(dev)
  return t.UUID || (t.PART_ENTRY_UUID ?? '').toLowerCase()
}

/**
 * Devices on `dev` carrying a tag (`blkid -l -t NAME=value dev`, which answers from the blkid cache
 * and udev): their paths, best match last; [] when none or when blkid fails.
 */
export async function findByTag(tag: string, dev: string): Promise<string[]> {
  const {stdout} = await run('blkid', ['-l', '-t', tag, dev], {allowFailure: true, timeoutMs: 30_000})
  return stdout
    .trim()
    .split('\n')
    .map((l) => l.split(':', 1)[0]!)
    .filter(Boolean)
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

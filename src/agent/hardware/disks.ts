/**
 * Block devices as IPA reports them (`hardware.list_all_block_devices`), with the device allow-list
 * applied, and root-device / skip-list hint matching.
 *
 * The allow-list is applied here and only here for listing: if `deviceAllowlist` is non-empty the
 * agent sees only those devices and their partitions; everything else is invisible. Destructive
 * code double-checks each target with assertDeviceAllowed() (src/agent/disk/allowlist.ts) so no
 * caller can bypass it. The probing itself (lsblk, udev, sysfs) is src/agent/disk/.
 */
import {readdir, realpath} from 'node:fs/promises'
import path from 'node:path'
import {run, ToolMissingError} from '../../common/exec.js'
import {isAllowed, resolveAllowlist} from '../disk/allowlist.js'
import {bool, parseUdevProperties, runLsblk, str, udevProperties, type LsblkRow} from '../disk/probe.js'
import {udevSettle} from '../disk/settle.js'
import {readTrimmed, SYS_CLASS_BLOCK} from '../disk/sysfs.js'
import type {Logger} from '../log.js'
import type {BlockDevice} from './types.js'

const GIB = 1024 ** 3

export interface SelectOptions {
  /** Kernel names from resolveAllowlist(); empty means no allow-list. */
  allowed: ReadonlySet<string>
  /** 'disk' (IPA's default), 'part' (partitions), 'raid' or 'md'. */
  blockType?: 'disk' | 'part' | 'raid' | 'md'
  /** Keep devices whose size is 0 (IPA's ignore_empty=False). */
  keepEmpty?: boolean
}

/**
 * Which lsblk rows IPA would report, in lsblk order. Disks are TYPE disk, any RAID level (`raid1`…)
 * and multipath maps; partitions are TYPE part (and md, partitions on software RAID). RAM, zRAM and
 * floppy devices, empty devices, CD-ROMs, unattached loops and multipath members are left out.
 * With an allow-list only listed devices (and their partitions) remain, and listed loop devices count
 * as disks.
 */
export function selectBlockDevices(rows: readonly LsblkRow[], opts: SelectOptions): LsblkRow[] {
  const blockType = opts.blockType ?? 'disk'
  const mpathMembers = new Set(rows.filter((r) => r.type === 'mpath').flatMap((r) => r.parents))
  const out: LsblkRow[] = []
  for (const r of rows) {
    if (!isAllowed(r.kname, r.pkname, opts.allowed)) continue
    const listed = opts.allowed.size > 0 && opts.allowed.has(r.kname)
    if (/^(ram|zram|fd)\d*/.test(r.kname)) continue
    if (!opts.keepEmpty && !r.size) continue
    let matches: boolean
    switch (blockType) {
      case 'disk':
        matches = r.type === 'disk' || r.type.includes('raid') || r.type === 'mpath' || (r.type === 'loop' && listed)
        if (r.type === 'disk' && mpathMembers.has(r.kname)) matches = false
        break
      case 'part':
        matches = r.type === 'part' || (r.type === 'md' && r.pkname !== null)
        break
      case 'raid':
        matches = r.type.includes('raid')
        break
      case 'md':
        matches = r.type === 'md'
        break
    }
    if (matches) out.push(r)
  }
  return out
}

/** Map of resolved device path → /dev/disk/by-path link pointing at it. */
export async function byPathMapping(dir = '/dev/disk/by-path'): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return out
  }
  await Promise.all(
    names.map(async (n) => {
      const link = path.join(dir, n)
      try {
        out.set(await realpath(link), link)
      } catch {
        // dangling link
      }
    }),
  )
  return out
}

class UdevState {
  missing = false
}

async function udevOf(dev: string, state: UdevState, log?: Logger): Promise<Record<string, string>> {
  if (state.missing) return {}
  try {
    return await udevProperties(dev)
  } catch (err) {
    if (err instanceof ToolMissingError) {
      state.missing = true
      log?.warn('udevadm is not installed: disk serial numbers and WWNs come from lsblk only', {package: err.debianPackage})
    } else {
      log?.debug('udevadm info failed', {device: dev, err})
    }
    return {}
  }
}

/** Turn one lsblk row into IPA's BlockDevice, reading udev properties and sysfs. */
async function toBlockDevice(r: LsblkRow, byPath: Map<string, string>, udevState: UdevState, log?: Logger): Promise<BlockDevice> {
  const name = `/dev/${r.kname}`
  const [udev, hctl, vendor, sysSerial] = await Promise.all([
    udevOf(name, udevState, log),
    readdir(`/sys/block/${r.kname}/device/scsi_device`).then(
      (e) => e[0] ?? null,
      () => null,
    ),
    readTrimmed(`${SYS_CLASS_BLOCK}/${r.kname}/device/vendor`),
    // Without udev's database (udevd not running) lsblk knows no virtio-blk serial: the kernel has it.
    r.serial
      ? Promise.resolve(null)
      : readTrimmed(`${SYS_CLASS_BLOCK}/${r.kname}/serial`).then((v) => v ?? readTrimmed(`${SYS_CLASS_BLOCK}/${r.kname}/device/serial`)),
  ])
  // Device-mapper devices (multipath) carry their identifiers as DM_* properties.
  const u = (key: string): string | null => str(udev[`ID_${key}`]) ?? (r.kname.startsWith('dm-') ? str(udev[`DM_${key}`]) : null)
  return {
    name,
    model: r.model ?? '',
    size: r.size,
    rotational: r.rotational,
    wwn: u('WWN') ?? r.wwn,
    serial: u('SERIAL_SHORT') ?? u('SERIAL') ?? r.serial ?? str(sysSerial),
    vendor,
    wwn_with_extension: u('WWN_WITH_EXTENSION'),
    wwn_vendor_extension: u('WWN_VENDOR_EXTENSION'),
    hctl,
    by_path: byPath.get(name) ?? null,
    logical_sectors: r.logicalSectors,
    physical_sectors: r.physicalSectors,
    tran: r.tran,
  }
}

export interface ListBlockDevicesOptions {
  /** config.deviceAllowlist (/dev paths). */
  allowlist: readonly string[]
  includePartitions?: boolean
  log?: Logger
}

/**
 * Disks (then, optionally, partitions) as IPA's GenericHardwareManager.list_block_devices reports
 * them, with the allow-list applied.
 */
export async function listBlockDevices(opts: ListBlockDevicesOptions): Promise<BlockDevice[]> {
  await udevSettle(opts.log)
  const [rows, byPath] = await Promise.all([runLsblk(), byPathMapping()])
  const allowed = resolveAllowlist(opts.allowlist)
  const chosen = selectBlockDevices(rows, {allowed, blockType: 'disk'})
  if (opts.includePartitions) chosen.push(...selectBlockDevices(rows, {allowed, blockType: 'part'}))
  const state = new UdevState()
  return Promise.all(chosen.map((r) => toBlockDevice(r, byPath, state, opts.log)))
}

// ------------------------------------------------------------------------------------------------
// Device hints (root device hints and node.properties.skip_block_devices), as ironic-lib's
// parse_root_device_hints / find_devices_by_hints: strings compared lower-cased (equality by
// default, `s==` `s!=` `<in>` `<or>`), size in GiB as a real number (a 10.5 GiB disk is `> 10` and
// not `== 10`) with `==` `!=` `>=` `<=` `>` `<` `<or>` and oslo's `=` (at least), rotational a boolean.

const STRING_HINTS = new Set(['model', 'vendor', 'serial', 'wwn', 'wwn_with_extension', 'wwn_vendor_extension', 'hctl', 'by_path', 'name'])
const VALID_HINTS = [...STRING_HINTS, 'size', 'rotational']
const NUMBER_OPS = /^(<or>|==|!=|>=|<=|=|>|<)?\s*(.*)$/s

/** ironic-lib's parse_root_device_hints checks: the message of the ValueError it would raise, or null. */
export function deviceHintsProblem(hints: Record<string, unknown>): string | null {
  const invalid = Object.keys(hints).filter((k) => !VALID_HINTS.includes(k))
  if (invalid.length) return `The hints "${invalid.join(', ')}" are invalid. Valid hints are: "${VALID_HINTS.join(', ')}"`
  for (const [name, expression] of Object.entries(hints)) {
    if (STRING_HINTS.has(name)) {
      if (typeof expression !== 'string') return `Root device hint "${name}" is not a string value. Hint expression: ${String(expression)}`
      if (!expression.trim()) return `Root device hint "${name}" expression is empty`
    } else if (name === 'size') {
      const text = String(expression).trim()
      if (!text) return `Root device hint "size" expression is empty`
      const [, op, rest] = NUMBER_OPS.exec(text) as unknown as [string, string | undefined, string]
      for (const v of op === '<or>' ? rest.split(/\s*<or>\s*/) : [rest]) {
        if (!/^[+-]?\d+$/.test(v.trim())) return `Root device hint "size" is not an integer value. Current value: ${text}`
        if (Number(v) <= 0) return `Root device hint "size" should be a positive integer. Current value: ${text}`
      }
    } else if (!isStrictBool(expression)) {
      return `Root device hint "rotational" is not a Boolean value. Current value: ${String(expression)}`
    }
  }
  return null
}

/** oslo's bool_from_string(strict=True) accepts these. */
function isStrictBool(v: unknown): boolean {
  if (typeof v === 'boolean') return true
  return ['1', 't', 'true', 'on', 'y', 'yes', '0', 'f', 'false', 'off', 'n', 'no'].includes(
    String(v ?? '')
      .trim()
      .toLowerCase(),
  )
}

function matchString(actual: string | null, hint: unknown, key: string): boolean {
  if (actual === null) return false
  const norm = (s: string): string => {
    const t = s.trim().toLowerCase()
    // rdk also takes a bare kernel name (sda, disk/by-path/…) for the device paths.
    if (key === 'name' || key === 'by_path') return t.startsWith('/dev/') || t === '' ? t : `/dev/${t}`
    return t
  }
  const a = norm(actual)
  const h = String(hint).trim()
  const m = /^(s==|s!=|<in>|<or>)\s*(.*)$/s.exec(h)
  if (!m) return a === norm(h)
  const [, op, rest] = m as unknown as [string, string, string]
  switch (op) {
    case 's==':
      return a === norm(rest)
    case 's!=':
      return a !== norm(rest)
    case '<in>':
      return a.includes(rest.trim().toLowerCase())
    case '<or>':
      return rest.split(/\s*<or>\s*/).some((alt) => a === norm(alt))
  }
  return false
}

function matchNumber(actual: number, hint: unknown): boolean {
  const h = String(hint).trim()
  const m = NUMBER_OPS.exec(h)
  const op = m?.[1] ?? '=='
  const rest = m?.[2] ?? h
  if (op === '<or>') return rest.split(/\s*<or>\s*/).some((v) => Number(v) === actual)
  const v = Number(rest)
  if (!Number.isFinite(v)) return false
  switch (op) {
    case '==':
      return actual === v
    case '!=':
      return actual !== v
    case '>=':
    case '=': // oslo specs_matcher: '=' means "at least"
      return actual >= v
    case '<=':
      return actual <= v
    case '>':
      return actual > v
    case '<':
      return actual < v
  }
  return false
}

/** Does `dev` satisfy every hint in `hints`? Unknown hint keys never match. */
export function matchDeviceHints(dev: BlockDevice, hints: Record<string, unknown>): boolean {
  const keys = Object.keys(hints)
  if (keys.length === 0) return false
  for (const key of keys) {
    const hint = hints[key]
    if (key === 'size') {
      if (!matchNumber(dev.size / GIB, hint)) return false
    } else if (key === 'rotational') {
      if (dev.rotational !== bool(hint)) return false
    } else if (STRING_HINTS.has(key)) {
      const actual = (dev as unknown as Record<string, unknown>)[key]
      if (!matchString(actual === null || actual === undefined ? null : String(actual), hint, key)) return false
    } else {
      return false
    }
  }
  return true
}

/** IPA's guess_root_disk: the smallest device of at least `minGiB` GiB (ties broken by name). */
export function guessRootDisk(devices: readonly BlockDevice[], minGiB = 4): BlockDevice | undefined {
  const sorted = [...devices].sort((a, b) => a.size - b.size || a.name.localeCompare(b.name))
  return sorted.find((d) => d.size >= minGiB * GIB)
}

/** Volume name of a software RAID device (`mdadm --detail --export` MD_NAME, without the host part). */
export async function mdVolumeName(dev: string): Promise<string | null> {
  try {
    const {stdout} = await run('mdadm', ['--detail', '--export', dev], {timeoutMs: 10_000})
    const name = parseUdevProperties(stdout).MD_NAME
    if (!name) return null
    const colon = name.indexOf(':')
    return colon >= 0 ? name.slice(colon + 1) : name
  } catch {
    return null
  }
}

/**
 * Names of devices that node.properties.skip_block_devices excludes from erasure: device hints
 * matched against `devices`, and `volume_name` hints matched against software RAID volume names.
 */
export async function skipListFromNode(properties: Record<string, unknown> | undefined, devices: readonly BlockDevice[]): Promise<Set<string>> {
  const out = new Set<string>()
  const hints = properties?.skip_block_devices
  if (!Array.isArray(hints)) return out
  for (const raw of hints) {
    if (!raw || typeof raw !== 'object') continue
    const hint = raw as Record<string, unknown>
    if ('volume_name' in hint) {
      for (const d of devices) {
        if (!path.basename(d.name).startsWith('md')) continue
        if ((await mdVolumeName(d.name)) === String(hint.volume_name)) out.add(d.name)
      }
      continue
    }
    for (const d of devices) if (matchDeviceHints(d, hint)) out.add(d.name)
  }
  return out
}

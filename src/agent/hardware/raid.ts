/**
 * Software RAID with mdadm, as IPA's GenericHardwareManager does it (hardware.py, raid_utils.py):
 * create_configuration / delete_configuration / apply_configuration, the md device as the install
 * device, and image.install_bootloader onto the holder disks (docs/raid.md).
 *
 * The plan (which partitions, which mdadm argv) is made by pure functions; the I/O functions below
 * only carry it out, so the unit tests check the plan and a VM test checks the real thing.
 */
import {existsSync} from 'node:fs'
import {stat} from 'node:fs/promises'
import path from 'node:path'
import {CommandFailedError, run, ToolMissingError} from '../../common/exec.js'
import type {AgentConfig} from '../config.js'
import {CommandExecutionError, SoftwareRAIDError} from '../errors.js'
import type {Logger} from '../log.js'
import {runningFromRamdisk} from '../system.js'
import {addUefiBootEntries, findEfiLoaders, imageGrubInstall, withMount} from '../image/bootloader.js'
import {resolveAllowlist} from '../disk/allowlist.js'
import {partitionNumber, partitionPath, ESP_TYPE_GPT} from '../disk/partitions.js'
import {findByTag, lsblkColumns, probeDevice, runLsblk, type LsblkRow} from '../disk/probe.js'
import {rereadPartitionTable, rescanDevice, udevSettle} from '../disk/settle.js'
import {parentDiskOf, partitionsOf} from '../disk/sysfs.js'
import {wipeSignatures} from '../disk/wipe.js'
import {matchDeviceHints, selectBlockDevices} from './disks.js'
import type {BlockDevice, NodeInfo} from './types.js'

/** Room kept before the first RAID partition in UEFI mode for an ESP on every holder (IPA: 550 MiB, DIB's size). */
export const ESP_SIZE_MIB = 550
/** md<i> lives on partition i + RAID_PARTITION of every holder. */
export const RAID_PARTITION = 1
export const SUPPORTED_SOFTWARE_RAID_LEVELS: readonly string[] = ['0', '1', '1+0', '5', '6']

export interface LogicalDisk {
  size_gb?: number | string
  raid_level?: string
  controller?: string
  volume_name?: string
  physical_disks?: unknown
  is_root_volume?: boolean
  [key: string]: unknown
}

export interface RaidConfig {
  logical_disks?: LogicalDisk[]
  [key: string]: unknown
}

/** A logical disk with the holder disks chosen for it (IPA's `block_devices`). */
export type PlacedLogicalDisk = LogicalDisk & {block_devices: string[]}

export type BootMode = 'uefi' | 'bios'
export type TableType = 'gpt' | 'msdos'

// ------------------------------------------------------------------------------------------------
// Node facts

/** Ironic capabilities: a dict, or the `"k1:v1,k2:v2"` string in properties/instance_info. */
export function parseCapabilities(holder: Record<string, unknown> | undefined): Record<string, string> {
  const caps = holder?.capabilities
  if (!caps) return {}
  if (typeof caps === 'object' && !Array.isArray(caps)) {
    return Object.fromEntries(Object.entries(caps as Record<string, unknown>).map(([k, v]) => [k, String(v)]))
  }
  if (typeof caps !== 'string') return {}
  const text = caps
  if (text.trim().startsWith('{')) {
    try {
      return parseCapabilities({capabilities: JSON.parse(text)})
    } catch {
      // fall through to the k:v form
    }
  }
  const out: Record<string, string> = {}
  for (const pair of text.split(',')) {
    const i = pair.indexOf(':')
    if (i > 0) out[pair.slice(0, i).trim()] = pair.slice(i + 1).trim()
  }
  return out
}

/** IPA's utils.get_node_boot_mode: secure boot → uefi; instance_info, capabilities, driver_internal_info, else the ramdisk's mode. */
export function nodeBootMode(node: NodeInfo | undefined, ramdiskMode: BootMode): BootMode {
  const iiCaps = parseCapabilities(node?.instance_info)
  const nodeCaps = parseCapabilities(node?.properties)
  const secure = (v: string | undefined): boolean => String(v ?? '').toLowerCase() === 'true'
  if (secure(iiCaps.secure_boot) || secure(nodeCaps.secure_boot)) return 'uefi'
  const raw = node?.instance_info?.deploy_boot_mode ?? nodeCaps.boot_mode ?? node?.driver_internal_info?.deploy_boot_mode ?? ramdiskMode
  const mode = String(raw).toLowerCase()
  return mode === 'uefi' || mode === 'bios' ? mode : ramdiskMode
}

/** IPA's utils.get_partition_table_type_from_specs: gpt in UEFI mode, else the disk_label capability (default msdos). */
export function partitionTableType(node: NodeInfo | undefined, ramdiskMode: BootMode): TableType {
  if (nodeBootMode(node, ramdiskMode) === 'uefi') return 'gpt'
  const label = parseCapabilities(node?.instance_info).disk_label ?? parseCapabilities(node?.properties).disk_label ?? 'msdos'
  return label === 'gpt' ? 'gpt' : 'msdos'
}

export function ramdiskBootMode(): BootMode {
  return existsSync('/sys/firmware/efi') ? 'uefi' : 'bios'
}

/** The node's target_raid_config when it asks for software RAID (any logical disk with controller 'software'), else null. */
export function softwareRaidConfig(raidConfig: unknown): RaidConfig | null {
  if (!raidConfig || typeof raidConfig !== 'object') return null
  const lds = (raidConfig as RaidConfig).logical_disks
  if (!Array.isArray(lds)) return null
  return lds.some((ld) => ld && typeof ld === 'object' && ld.controller === 'software') ? (raidConfig as RaidConfig) : null
}

// ------------------------------------------------------------------------------------------------
// Validation (IPA's validate_configuration, same rules and texts)

/**
 * Throw SoftwareRAIDError unless IPA would accept the configuration: one or two logical disks, all
 * `controller: software`, physical_disks a list of ≥ 2 hint dicts, the first RAID-1, at most one
 * MAX, a supported second level with enough disks for RAID-5 (3) / RAID-6 (4). Returns false (as IPA)
 * for an empty config.
 */
export function validateRaidConfig(raidConfig: unknown, nodeUuid: string | undefined, physicalDeviceCount: number): boolean {
  if (!raidConfig || (typeof raidConfig === 'object' && Object.keys(raidConfig).length === 0)) return false
  const lds = (raidConfig as RaidConfig).logical_disks
  if (!Array.isArray(lds) || lds.length === 0) throw new SoftwareRAIDError('RAID config contains no logical disks')
  const errors: string[] = []
  if (lds.length !== 1 && lds.length !== 2) errors.push('Software RAID configuration requires one or two logical disks')
  for (const ld of lds) {
    if (ld?.controller !== 'software') errors.push("Software RAID configuration requires all logical disks to have 'controller'='software'")
    const pd = ld?.physical_disks
    if (pd !== undefined && pd !== null) {
      if (!Array.isArray(pd) || pd.length < 2) {
        errors.push('The physical_disks parameter for software RAID must be a list with at least 2 items, each specifying a disk in the device hints format')
      }
      if (Array.isArray(pd) && pd.some((i) => !i || typeof i !== 'object' || Array.isArray(i))) {
        errors.push('The physical_disks parameter for software RAID must be a list of device hints (dictionaries)')
      }
    }
  }
  if (String(lds[0]?.raid_level) !== '1') errors.push('Software RAID Configuration requires RAID-1 for the first logical disk')
  if (lds.length === 2) {
    if (lds[0]?.size_gb === 'MAX' && lds[1]?.size_gb === 'MAX') errors.push("Software RAID can have only one RAID device with size 'MAX'")
    const level = String(lds[1]?.raid_level)
    if (!SUPPORTED_SOFTWARE_RAID_LEVELS.includes(level)) errors.push(`Software RAID configuration does not support RAID level ${level}`)
    if (level === '5' && physicalDeviceCount < 3) {
      errors.push(`Software RAID configuration is not possible for RAID level 5 with only ${physicalDeviceCount} block devices found.`)
    }
    if (level === '6' && physicalDeviceCount < 4) {
      errors.push(`Software RAID configuration is not possible for RAID level 6 with only ${physicalDeviceCount} block devices found.`)
    }
  }
  if (errors.length) throw new SoftwareRAIDError(`Could not validate Software RAID config for ${nodeUuid}: ${errors.join('; ')}`)
  return true
}

// ------------------------------------------------------------------------------------------------
// The plan

/**
 * IPA's get_block_devices_for_raid: each logical disk gets the disks its physical_disks hints name
 * (each hint its own disk, in order), or every disk. Returns all holders (first-use order) and the
 * logical disks with `block_devices`.
 */
export function placeLogicalDisks(
  devices: readonly BlockDevice[],
  logicalDisks: readonly LogicalDisk[],
): {holders: string[]; logicalDisks: PlacedLogicalDisk[]} {
  const holders: string[] = []
  const placed: PlacedLogicalDisk[] = []
  for (const ld of logicalDisks) {
    let matching: string[]
    if (Array.isArray(ld.physical_disks) && ld.physical_disks.length) {
      matching = []
      for (const hint of ld.physical_disks as Record<string, unknown>[]) {
        const candidates = devices.filter((d) => matchDeviceHints(d, hint)).map((d) => d.name)
        if (!candidates.length) {
          throw new SoftwareRAIDError(`No candidates for physical disk ${JSON.stringify(hint)} from the list ${JSON.stringify(devices.map((d) => d.name))}`)
        }
        const next = candidates.find((c) => !matching.includes(c))
        if (!next) {
          throw new SoftwareRAIDError(
            `No candidates left for physical disk ${JSON.stringify(hint)} from the list ${JSON.stringify(candidates)} after picking ${JSON.stringify(matching)} for previous volumes`,
          )
        }
        matching.push(next)
      }
    } else {
      matching = devices.map((d) => d.name)
    }
    for (const m of matching) if (!holders.includes(m)) holders.push(m)
    placed.push({...ld, block_devices: matching})
  }
  return {holders, logicalDisks: placed}
}

/** IPA reorders the logical disks so that the MAX one is created last (it takes what is left). */
export function maxLast<T extends LogicalDisk>(lds: readonly T[]): T[] {
  const max = lds.find((l) => l.size_gb === 'MAX')
  return [...lds.filter((l) => l !== max), ...(max ? [max] : [])]
}

/**
 * Where the first RAID partition starts (IPA's calculate_raid_start): UEFI leaves 551 MiB for an
 * ESP on every holder, BIOS + GPT leaves 8 MiB for a BIOS boot partition, BIOS + MBR starts at the
 * first usable sector.
 */
export function raidStart(bootMode: BootMode, table: TableType, firstUsableSector = 2048): string {
  if (bootMode === 'uefi') return `${ESP_SIZE_MIB + 1}MiB`
  if (table === 'gpt') return '8MiB'
  return `${firstUsableSector}s`
}

/**
 * parted bounds of one RAID partition (IPA's calc_raid_partition_sectors): the first starts at the
 * raid start and ends at `size` GiB; the next start where the previous ended; MAX runs to the end.
 * `end` is the next start (GiB as a number).
 */
export function partitionBounds(sizeGiB: number, start: string | number): {start: string; end: string; next: number | string} {
  const startStr = typeof start === 'number' ? `${start}GiB` : start
  if (sizeGiB === -1) return {start: startStr, end: '-1', next: '-1'}
  const end = typeof start === 'number' ? start + sizeGiB : sizeGiB
  return {start: startStr, end: `${end}GiB`, next: end}
}

/** mdadm's name for a level: the schema's '1+0' is mdadm's '10'. */
export function mdadmLevel(level: string): string {
  return level === '1+0' ? '10' : level
}

/** IPA's create_raid_device argv: `mdadm --create /dev/md<i> --force --run --metadata=1 --level L --name N --raid-devices n parts…`. */
export function mdadmCreateArgs(index: number, ld: PlacedLogicalDisk): string[] {
  const components = ld.block_devices.map((d) => partitionPath(d, index + RAID_PARTITION))
  return [
    '--create',
    `/dev/md${index}`,
    '--force',
    '--run',
    '--metadata=1',
    '--level',
    mdadmLevel(String(ld.raid_level)),
    '--name',
    ld.volume_name ?? `md${index}`,
    '--raid-devices',
    String(components.length),
    ...components,
  ]
}

export interface RaidPlan {
  table: TableType
  bootMode: BootMode
  holders: string[]
  /** `parted <device> -s -a optimal -- mkpart primary <start> <end>`, in order. */
  partitions: {device: string; start: string; end: string; number: number}[]
  /** mdadm argv per array, md0 first. */
  arrays: {device: string; args: string[]; components: string[]; logicalDisk: PlacedLogicalDisk}[]
}

/**
 * The whole plan for a validated config: the partition table type, the RAID partitions on every
 * holder (MAX last, md<i> on partition i+1) and the mdadm argv of every array.
 */
export function planRaid(
  node: NodeInfo | undefined,
  raidConfig: RaidConfig,
  devices: readonly BlockDevice[],
  opts: {ramdiskMode: BootMode; firstUsableSector?: (device: string) => number},
): RaidPlan {
  const bootMode = nodeBootMode(node, opts.ramdiskMode)
  const table = partitionTableType(node, opts.ramdiskMode)
  const placed = placeLogicalDisks(devices, raidConfig.logical_disks ?? [])
  const ordered = maxLast(placed.logicalDisks)
  const next = new Map<string, string | number>(placed.holders.map((h) => [h, raidStart(bootMode, table, opts.firstUsableSector?.(h) ?? 2048)]))
  const count = new Map<string, number>()
  const partitions: RaidPlan['partitions'] = []
  for (const ld of ordered) {
    const size = ld.size_gb === 'MAX' ? -1 : Math.trunc(Number(ld.size_gb))
    if (!Number.isFinite(size) || (size !== -1 && size <= 0))
      throw new SoftwareRAIDError(`Invalid size_gb ${JSON.stringify(ld.size_gb)} for a software RAID logical disk`)
    for (const dev of ld.block_devices) {
      const b = partitionBounds(size, next.get(dev)!)
      const number = (count.get(dev) ?? 0) + 1
      count.set(dev, number)
      partitions.push({device: dev, start: b.start, end: b.end, number})
      next.set(dev, b.next)
    }
  }
  const arrays = ordered.map((ld, i) => {
    const args = mdadmCreateArgs(i, ld)
    return {device: `/dev/md${i}`, args, components: ld.block_devices.map((d) => partitionPath(d, i + RAID_PARTITION)), logicalDisk: ld}
  })
  return {table, bootMode, holders: placed.holders, partitions, arrays}
}

// ------------------------------------------------------------------------------------------------
// Parsing mdadm and /proc/mdstat

export interface MdDetail {
  device: string | null
  level: string | null
  /** Array size in KiB ("Array Size : 1046528 (1022.00 MiB …)"). */
  arraySizeKiB: number | null
  state: string | null
  /** `host:name` as mdadm prints it. */
  name: string | null
  uuid: string | null
  raidDevices: number | null
  /** Component devices from the table at the end (active, spare, faulty alike). */
  components: string[]
}

/** Parse `mdadm --detail <md>` (C locale). */
export function parseMdadmDetail(text: string): MdDetail {
  const lines = text.split('\n')
  const first = lines[0]?.trim() ?? ''
  const field = (key: string): string | null => {
    const re = new RegExp(`^\\s*${key}\\s*:\\s*(.*)$`)
    for (const l of lines) {
      const m = re.exec(l)
      if (m) return m[1]!.trim()
    }
    return null
  }
  const size = field('Array Size')
  const components: string[] = []
  for (const l of lines.slice(1)) {
    // device rows: "   0     254        1        0      active sync   /dev/vda1"
    for (const m of l.matchAll(/\/dev\/[\w/.-]+/g)) components.push(m[0])
  }
  const rd = field('Raid Devices')
  return {
    device: first.endsWith(':') ? first.slice(0, -1) : null,
    level: field('Raid Level'),
    arraySizeKiB: size ? Number(/^(\d+)/.exec(size)?.[1] ?? NaN) || null : null,
    state: field('State'),
    name: field('Name')?.split(/\s+/)[0] ?? null,
    uuid: field('UUID'),
    raidDevices: rd ? Number(rd) : null,
    components,
  }
}

/** IPA's get_volume_name_of_raid_device: the part after `host:` of mdadm's Name, null when the name has no host part. */
export function volumeNameOf(detail: MdDetail): string | null {
  if (!detail.name) return null
  const parts = detail.name.split(':')
  return parts.length === 2 ? parts[1]! : null
}

export interface MdstatArray {
  name: string
  state: string
  level: string | null
  /** Member kernel names, without the [n] role and (F)/(S) flags. */
  members: string[]
  blocks: number | null
  /** "[2/2] [UU]" → {total: 2, up: 2}. */
  total: number | null
  up: number | null
}

/** Parse /proc/mdstat. */
export function parseMdstat(text: string): MdstatArray[] {
  const out: MdstatArray[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const m = /^(md\w*)\s*:\s*(\S+)\s+(.*)$/.exec(lines[i]!)
    if (!m) continue
    const [, name, state, rest] = m as unknown as [string, string, string, string]
    const words = rest.split(/\s+/).filter(Boolean)
    let level: string | null = null
    if (words[0] && !words[0].includes('[')) {
      if (words[0] === '(read-only)' || words[0] === '(auto-read-only)') words.shift()
      if (words[0] && /^(raid\d+|linear|multipath|faulty)$/.test(words[0])) level = words.shift()!
    }
    const members = words.filter((w) => /\[\d+\]/.test(w)).map((w) => w.replace(/\[\d+\].*$/, ''))
    const next = lines[i + 1] ?? ''
    const blocks = /(\d+)\s+blocks/.exec(next)
    const counts = /\[(\d+)\/(\d+)\]/.exec(next)
    out.push({
      name,
      state,
      level,
      members,
      blocks: blocks ? Number(blocks[1]) : null,
      total: counts ? Number(counts[1]) : null,
      up: counts ? Number(counts[2]) : null,
    })
  }
  return out
}

/** The whole disk a component belongs to: the parent of a partition, else the device itself. */
export function holderOf(component: string, parentOf: (kname: string) => string | null = parentDiskOf): string {
  const k = path.basename(component)
  const parent = parentOf(k)
  return parent ? `/dev/${parent}` : component
}

// ------------------------------------------------------------------------------------------------
// I/O

export interface RaidContext {
  config: AgentConfig
  log: Logger
}

async function mdadm(args: string[], opts: {allowFailure?: boolean; timeoutMs?: number} = {}): Promise<{exitCode: number; stdout: string; stderr: string}> {
  return run('mdadm', args, {env: {LC_ALL: 'C'}, timeoutMs: opts.timeoutMs ?? 120_000, allowFailure: opts.allowFailure})
}

/** Load the md personalities (best effort; only ever called from the RAID steps, which run in the ramdisk). */
async function loadMdModules(log: Logger): Promise<void> {
  if (!(await runningFromRamdisk())) return
  await run('modprobe', ['-a', 'md_mod', 'raid0', 'raid1', 'raid10', 'raid456'], {allowFailure: true, timeoutMs: 30_000}).catch((err: unknown) => {
    log.debug('modprobe of the md modules failed', {err})
  })
}

/**
 * Is `dev` a software RAID array (IPA's is_md_device)? The kernel's md directory in sysfs says so
 * (partitions on an array have none); else `mdadm --detail` answers. Ironic 21.4 never sends
 * install_bootloader's software_raid, so the bootloader code asks this of the install device.
 */
export async function isMdDevice(dev: string, sysClassBlock = '/sys/class/block'): Promise<boolean> {
  const k = path.basename(dev)
  if (existsSync(path.join(sysClassBlock, k, 'md'))) return true
  if (!/^md/.test(k) || existsSync(path.join(sysClassBlock, k, 'partition'))) return false
  try {
    return (await mdadm(['--detail', dev], {allowFailure: true, timeoutMs: 30_000})).exitCode === 0
  } catch {
    return false // mdadm not installed
  }
}

/** `mdadm --detail`, parsed; null when the device is not an md array (or mdadm fails). */
export async function mdDetail(dev: string, log?: Logger): Promise<MdDetail | null> {
  const r = await mdadm(['--detail', dev], {allowFailure: true, timeoutMs: 30_000})
  if (r.exitCode !== 0) {
    log?.debug('mdadm --detail failed', {device: dev, stderr: r.stderr.trim()})
    return null
  }
  return parseMdadmDetail(r.stdout)
}

/** md devices lsblk shows: the arrays (TYPE raid*) and, with `withMd`, TYPE md (partitions on arrays, broken arrays). */
export async function listRaidRows(allowlist: readonly string[], withMd = true): Promise<LsblkRow[]> {
  await udevSettle()
  const rows = await runLsblk()
  const allowed = resolveAllowlist(allowlist)
  const raid = selectBlockDevices(rows, {allowed, blockType: 'raid', keepEmpty: true})
  if (withMd) for (const r of selectBlockDevices(rows, {allowed, blockType: 'md', keepEmpty: true})) if (!raid.includes(r)) raid.push(r)
  return raid
}

/** Component devices of an array: mdadm's table, else the parents lsblk lists. */
export async function componentDevices(row: LsblkRow, log?: Logger): Promise<string[]> {
  const detail = await mdDetail(`/dev/${row.kname}`, log)
  const out = new Set(detail?.components.filter((c) => c !== `/dev/${row.kname}`) ?? [])
  if (row.type.includes('raid')) for (const p of row.parents) out.add(`/dev/${p}`)
  return [...out]
}

/** IPA's get_holder_disks: the whole disks under an array. */
export async function holderDisks(dev: string, log?: Logger): Promise<string[]> {
  const detail = await mdDetail(dev, log)
  const out: string[] = []
  for (const c of detail?.components ?? []) {
    if (c === dev) continue
    const h = holderOf(c)
    if (!out.includes(h)) out.push(h)
  }
  return out
}

/**
 * IPA's create_configuration for a validated software RAID config: refuse disks that still have
 * partitions, write a partition table on every holder, the RAID partitions, then `mdadm --create`
 * each array (re-adding any member mdadm left out). Returns the config, as IPA does (Ironic stores
 * it as the node's raid_config).
 */
export async function createSoftwareRaid(ctx: RaidContext & {node: NodeInfo; devices: BlockDevice[]}, raidConfig: RaidConfig): Promise<RaidConfig> {
  const {log} = ctx
  const plan = planRaid(ctx.node, raidConfig, ctx.devices, {ramdiskMode: ramdiskBootMode()})
  const withParts: string[] = []
  for (const h of plan.holders) if ((await partitionsOf(h)).length) withParts.push(h)
  if (withParts.length) throw new SoftwareRAIDError(`Partitions detected on devices ${withParts.join(', ')} during RAID config`)

  log.info('creating software RAID', {holders: plan.holders, table: plan.table, bootMode: plan.bootMode})
  await loadMdModules(log)
  for (const h of plan.holders) {
    try {
      await run('parted', ['-s', h, '--', 'mklabel', plan.table], {timeoutMs: 60_000})
    } catch (err) {
      throw new SoftwareRAIDError(`Failed to create partition table on ${h}: ${(err as Error).message}`)
    }
  }
  // BIOS + MBR: the first RAID partition starts at the first usable sector, as sgdisk -F reports it.
  if (plan.bootMode === 'bios' && plan.table === 'msdos') {
    const first = new Map<string, number>()
    for (const h of plan.holders) {
      const r = await run('sgdisk', ['-F', h], {allowFailure: true, timeoutMs: 30_000})
      const n = Number(r.stdout.trim().split('\n').pop())
      first.set(h, r.exitCode === 0 && Number.isInteger(n) && n > 0 ? n : 2048)
    }
    const again = planRaid(ctx.node, raidConfig, ctx.devices, {ramdiskMode: ramdiskBootMode(), firstUsableSector: (d) => first.get(d) ?? 2048})
    plan.partitions = again.partitions
  }
  for (const p of plan.partitions) {
    log.debug('creating a RAID partition', p)
    try {
      await run('parted', [p.device, '-s', '-a', 'optimal', '--', 'mkpart', 'primary', p.start, p.end], {timeoutMs: 60_000})
    } catch (err) {
      throw new SoftwareRAIDError(`Failed to create partitions on ${p.device}: ${(err as Error).message}`)
    }
    await rescanDevice(p.device, log)
  }
  for (const a of plan.arrays) {
    log.info('creating md device', {device: a.device, components: a.components, raid_level: a.logicalDisk.raid_level})
    try {
      await mdadm(a.args)
    } catch (err) {
      const msg = err instanceof CommandFailedError ? `${err.message}` : (err as Error).message
      throw new SoftwareRAIDError(`Failed to create md device ${a.device} on ${a.components.join(' ')}: ${msg}`)
    }
    const actual = (await mdDetail(a.device, log))?.components ?? []
    for (const missing of a.components.filter((c) => !actual.includes(c))) {
      log.warn(`Found ${missing} to be missing from ${a.device} ... re-adding!`)
      let lastErr: unknown
      for (let i = 0; i < 3; i++) {
        try {
          await mdadm(['--add', a.device, missing])
          lastErr = undefined
          break
        } catch (err) {
          lastErr = err
          await new Promise((r) => setTimeout(r, 1000))
        }
      }
      if (lastErr) throw new SoftwareRAIDError(`Failed re-add ${missing} to ${a.device}: ${(lastErr as Error).message}`)
    }
  }
  await udevSettle()
  log.info('Successfully created Software RAID')
  return raidConfig
}

/** Is there an md superblock on the device? (mdadm --examine; "No md superblock detected" → false). */
async function hasMdSuperblock(dev: string, log: Logger): Promise<boolean> {
  const r = await mdadm(['--examine', dev], {allowFailure: true, timeoutMs: 30_000})
  if (r.exitCode === 0) return true
  if (!/No md superblock detected/.test(r.stderr + r.stdout)) log.warn('Failed to examine device', {device: dev, err: r.stderr.trim()})
  return false
}

/**
 * IPA's delete_configuration: assemble what can be assembled, then per array wipefs, stop, zero the
 * members' superblocks; zero any superblock left on any disk or partition; wipe the holder disks.
 * Two passes at most; arrays still present after that fail the step.
 */
export async function deleteSoftwareRaid(ctx: RaidContext & {allDevices: () => Promise<BlockDevice[]>}): Promise<void> {
  const {log} = ctx
  const allowlist = ctx.config.deviceAllowlist
  if (!existsSync('/proc/mdstat')) await loadMdModules(log)
  if (!existsSync('/proc/mdstat')) {
    // No md driver loaded (nor loadable): there cannot be any array to delete.
    log.info('no md driver (/proc/mdstat): no software RAID to delete')
    return
  }
  const scan = async (): Promise<LsblkRow[]> => {
    await mdadm(['--assemble', '--scan'], {allowFailure: true}).catch((err: unknown) => {
      if (err instanceof ToolMissingError) throw err
    })
    return listRaidRows(allowlist)
  }
  let rows = await scan()
  for (let attempt = 1; ; attempt++) {
    await deletePass(ctx, rows)
    rows = await scan()
    if (!rows.length) break
    if (attempt >= 2) {
      const msg = `Unable to clean all softraid correctly. Remaining ${JSON.stringify(rows.map((r) => `/dev/${r.kname}`))}`
      log.error(msg)
      throw new SoftwareRAIDError(msg)
    }
  }
  log.debug('Finished deleting Software RAID(s)')
}

async function deletePass(ctx: RaidContext & {allDevices: () => Promise<BlockDevice[]>}, rows: LsblkRow[]): Promise<void> {
  const {log} = ctx
  const holders: string[] = []
  for (const row of rows) {
    const dev = `/dev/${row.kname}`
    const components = await componentDevices(row, log)
    if (!components.length) {
      log.info(`Software RAID cleaning is skipping partition ${dev}`)
      continue
    }
    for (const c of components) {
      const h = holderOf(c)
      if (!holders.includes(h)) holders.push(h)
    }
    log.info(`Deleting Software RAID device ${dev}`, {components})
    const w = await wipeSignatures(dev, {force: true})
    if (w !== null) log.warn(`Failed to wipefs ${dev}`, {err: w})
    const s = await mdadm(['--stop', dev], {allowFailure: true})
    if (s.exitCode !== 0) log.warn(`Failed to stop ${dev}`, {err: s.stderr.trim()})
    for (const c of components) {
      const r = await mdadm(['--examine', c], {allowFailure: true, timeoutMs: 30_000})
      if (r.exitCode !== 0) {
        if (/No md superblock detected/.test(r.stderr + r.stdout)) continue
        throw new SoftwareRAIDError(`Failed to examine device ${c}: ${r.stderr.trim()}`)
      }
      const z = await mdadm(['--zero-superblock', c], {allowFailure: true})
      if (z.exitCode !== 0) log.warn(`Failed to remove superblock from ${c}`, {err: z.stderr.trim()})
    }
    log.info(`Deleted Software RAID device ${dev}`)
  }
  // Any superblock left anywhere, partitions before their disks.
  const all = (await ctx.allDevices())
    .map((d) => d.name)
    .sort()
    .reverse()
  for (const dev of all) {
    if (!(await hasMdSuperblock(dev, log))) continue
    const z = await mdadm(['--zero-superblock', dev], {allowFailure: true})
    if (z.exitCode !== 0) log.warn(`Failed to remove superblock from ${dev}`, {err: z.stderr.trim()})
  }
  for (const h of holders) {
    log.info(`Removing partitions on holder disk ${h}`)
    const w = await wipeSignatures(h, {force: true})
    if (w !== null) log.warn(`Failed to remove partitions on ${h}`, {err: w})
    await rereadPartitionTable(h)
  }
}

/**
 * The md device to deploy onto when the RAID config (the node's target_raid_config, else what
 * apply_configuration made in this boot) is software RAID: the array of
 * the logical disk flagged is_root_volume (else the first one), found by its volume name (an array
 * re-assembled after a reboot may be md127), else as /dev/md<i>. null when there is no such array.
 */
export async function softRaidRootDevice(raidConfig: unknown, devices: readonly BlockDevice[], log?: Logger): Promise<string | null> {
  const cfg = softwareRaidConfig(raidConfig)
  if (!cfg) return null
  const ordered = maxLast(cfg.logical_disks ?? [])
  let index = ordered.findIndex((l) => l.is_root_volume === true || String(l.is_root_volume).toLowerCase() === 'true')
  if (index < 0) index = ordered.indexOf((cfg.logical_disks ?? [])[0]!)
  const wanted = ordered[index]?.volume_name ?? `md${index}`
  const mds = devices.filter((d) => /^md/.test(path.basename(d.name)))
  for (const d of mds) {
    const detail = await mdDetail(d.name, log)
    if (detail && volumeNameOf(detail) === wanted) return d.name
  }
  return mds.find((d) => d.name === `/dev/md${index}`)?.name ?? null
}

// ------------------------------------------------------------------------------------------------
// Bootloader on the holders (image.install_bootloader with software_raid=true)

export interface SoftRaidBootloaderArgs {
  /** The root filesystem's UUID (Ironic: instance_info image_rootfs_uuid, else the root uuid/disk id). */
  rootUuid?: string | null
  efiSystemPartUuid?: string | null
  targetBootMode: 'uefi' | 'bios'
}

/** Partitions of a device with their probed filesystem facts. */
async function probedPartitions(dev: string): Promise<{dev: string; probe: Record<string, string>}[]> {
  const out: {dev: string; probe: Record<string, string>}[] = []
  for (const p of await partitionsOf(dev)) out.push({dev: p, probe: await probeDevice(p)})
  return out
}

/** The vfat ESP inside the image written to the md device (GPT type EF00, else the first vfat partition). */
export function pickImageEsp(parts: readonly {dev: string; probe: Record<string, string>}[]): string | null {
  const esp = parts.find((p) => (p.probe.PART_ENTRY_TYPE ?? '').toLowerCase() === ESP_TYPE_GPT)
  if (esp) return esp.dev
  return parts.find((p) => p.probe.TYPE === 'vfat' && (p.probe.PART_ENTRY_TYPE ?? '').toLowerCase() === '0xef')?.dev ?? null
}

/** The image's root filesystem among the md device's partitions: by UUID, else the first ext2/3/4, xfs or btrfs one. */
export function pickImageRoot(parts: readonly {dev: string; probe: Record<string, string>}[], rootUuid?: string | null): string | null {
  if (rootUuid) {
    const byUuid = parts.find((p) => p.probe.UUID === rootUuid || p.probe.PART_ENTRY_UUID === rootUuid)
    if (byUuid) return byUuid.dev
  }
  return parts.find((p) => /^(ext[234]|xfs|btrfs)$/.test(p.probe.TYPE ?? ''))?.dev ?? null
}

/** The first free sector of a holder (`sgdisk -F`). */
async function firstFreeSector(holder: string): Promise<string> {
  const {stdout} = await run('sgdisk', ['-F', holder], {timeoutMs: 30_000})
  return `${stdout.trim().split('\n').pop()!.trim()}s`
}

/** The software RAID arrays the root device is made of, and the holders under it. */
async function rootArrayAndHolders(ctx: RaidContext & {installDevice?: () => Promise<string>}): Promise<{md: string; holders: string[]}> {
  const md = ctx.installDevice ? await ctx.installDevice() : await defaultRootArray(ctx)
  const holders = await holderDisks(md, ctx.log)
  if (!holders.length) throw new CommandExecutionError(`${md} is not a software RAID device with holder disks; cannot install a bootloader for software RAID`)
  return {md, holders}
}

/** Without an install device: the RAID array (not a vfat one) that carries partitions, else the first array. */
async function defaultRootArray(ctx: RaidContext): Promise<string> {
  const rows = await runLsblk()
  const arrays = rows.filter((r) => r.type.includes('raid'))
  const withParts = arrays.filter((a) => rows.some((r) => r.type === 'md' && r.pkname === a.kname))
  const pick = withParts[0] ?? arrays[0]
  if (!pick) throw new CommandExecutionError('No software RAID device found to install the bootloader for')
  ctx.log.debug('software RAID root device', {device: `/dev/${pick.kname}`})
  return `/dev/${pick.kname}`
}

/**
 * image.install_bootloader when Ironic says software_raid=true.
 *
 * UEFI: an ESP in the room create_configuration left on every holder, mirrored as a RAID-1 with
 * metadata 1.0 (at the end of the members, so firmware reads each member as plain vfat); the image's
 * own ESP (found on the md device's partitions) is copied block for block into it and its EFI
 * loaders get a boot entry per holder.
 * BIOS: a BIOS boot partition on GPT holders, then the image's own grub-install (in a chroot) on
 * every holder; an image without grub-install fails with a clear error.
 */
export async function installSoftRaidBootloader(ctx: RaidContext & {installDevice?: () => Promise<string>}, args: SoftRaidBootloaderArgs): Promise<void> {
  const {md, holders} = await rootArrayAndHolders(ctx)
  const parts = await probedPartitions(md)
  if (args.targetBootMode === 'uefi') {
    await uefiOnHolders(ctx, md, holders, parts)
  } else {
    await biosOnHolders(ctx, md, holders, parts, args.rootUuid)
  }
}

/** An md RAID-1 of vfat partitions: lsblk TYPE raid1 and FSTYPE vfat (IPA's find_esp_raid). */
async function findEspRaid(): Promise<string | null> {
  for (const kv of await lsblkColumns(['NAME', 'TYPE', 'FSTYPE'])) {
    if (kv.TYPE === 'raid1' && kv.FSTYPE === 'vfat') return `/dev/${kv.NAME}`
  }
  return null
}

async function nextFreeMd(): Promise<string> {
  const rows = await runLsblk()
  const names = new Set(rows.map((r) => r.kname))
  for (let i = 0; i < 128; i++) if (!names.has(`md${i}`)) return `/dev/md${i}`
  throw new SoftwareRAIDError('No free md (RAID) devices are left')
}

async function uefiOnHolders(ctx: RaidContext, md: string, holders: string[], parts: {dev: string; probe: Record<string, string>}[]): Promise<void> {
  const {log} = ctx
  const imageEsp = pickImageEsp(parts)
  let espMd = await findEspRaid()
  const espParts: {holder: string; part: string; number: number}[] = []
  if (espMd) {
    log.info(`Found RAIDed ESP ${espMd}, skip creation`)
    for (const c of (await mdDetail(espMd, log))?.components ?? []) {
      const holder = holderOf(c)
      espParts.push({holder, part: c, number: partitionNumber(c) || 0})
    }
  } else {
    log.info('Creating EFI partitions on software RAID holder disks')
    for (const [i, holder] of holders.entries()) {
      const label = `uefi-holder-${i}`
      const start = await firstFreeSector(holder)
      await run('sgdisk', ['-n', `0:${start}:+${ESP_SIZE_MIB}MiB`, '-t', '0:ef00', '-c', `0:${label}`, holder], {timeoutMs: 60_000})
      await rescanDevice(holder, log)
      let part = (await findByTag(`PARTLABEL=${label}`, holder)).pop()
      if (!part) {
        // No udev/blkid cache: the new partition is the highest-numbered one.
        const ps = await partitionsOf(holder)
        part = ps.sort((a, b) => partitionNumber(a) - partitionNumber(b)).pop()
      }
      if (!part) throw new SoftwareRAIDError(`Could not find the EFI partition created on ${holder}`)
      espParts.push({holder, part, number: partitionNumber(part)})
    }
    espMd = await nextFreeMd()
    await mdadm([
      '--create',
      espMd,
      '--force',
      '--run',
      '--metadata=1.0',
      '--level',
      '1',
      '--name',
      'esp',
      '--raid-devices',
      String(espParts.length),
      ...espParts.map((p) => p.part),
    ])
    await rescanDevice(espMd, log)
  }
  if (imageEsp) {
    log.debug(`Relocating EFI ${imageEsp} to ${espMd}`)
    await run('dd', [`if=${imageEsp}`, `of=${espMd}`, 'bs=4M', 'conv=fsync'], {timeoutMs: 600_000})
    await wipeSignatures(imageEsp)
  } else {
    await run('mkfs.vfat', ['-n', 'efi-part', espMd], {timeoutMs: 120_000})
  }
  // Boot entries: the loaders found on the mirrored ESP, one set per holder's ESP partition.
  await withMount(
    espMd,
    async (dir) => {
      const loaders = await findEfiLoaders(dir)
      if (!loaders.length) {
        throw new CommandExecutionError(
          `No EFI loader found on the image's ESP (${imageEsp ?? 'none: an empty ESP was made'}); cannot add UEFI boot entries for ${md}`,
        )
      }
      for (const p of espParts) {
        await addUefiBootEntries({disk: p.holder, partition: p.number, loaders, espDir: dir, labelSuffix: path.basename(p.holder), log})
      }
      log.info('UEFI boot entries added for the software RAID holders', {loaders, holders: espParts.map((p) => p.holder)})
    },
    {fstype: 'vfat', options: ['ro'], log},
  )
}

async function biosOnHolders(
  ctx: RaidContext,
  md: string,
  holders: string[],
  parts: {dev: string; probe: Record<string, string>}[],
  rootUuid?: string | null,
): Promise<void> {
  const {log} = ctx
  const root = pickImageRoot(parts, rootUuid)
  if (!root)
    throw new CommandExecutionError(
      `No root filesystem found on ${md} (root uuid ${rootUuid ?? 'not given'}); cannot install GRUB on the software RAID holders`,
    )
  // The image must bring grub-install: look (read-only) before touching the holders.
  const grub = await withMount(root, (mnt) => imageGrubInstall(mnt), {options: ['ro'], log})
  if (!grub) {
    throw new CommandExecutionError(
      `The image on ${md} has no grub-install or grub2-install (looked in /usr/sbin, /sbin, /usr/bin, /bin of ${root}): a BIOS boot from software RAID needs GRUB installed on every holder disk, and only the image can provide it`,
    )
  }
  for (const [i, holder] of holders.entries()) {
    if ((await probeDevice(holder)).PTTYPE === 'gpt') {
      log.debug(`Creating bios boot partition on disk holder ${holder}`)
      const start = await firstFreeSector(holder)
      await run('sgdisk', ['-n', `0:${start}:+2MiB`, '-t', '0:ef02', '-c', `0:bios-boot-part-${i}`, holder], {timeoutMs: 60_000})
      await rescanDevice(holder, log)
    }
  }
  await withMount(
    root,
    async (mnt) => {
      const binds: string[] = []
      try {
        for (const fs of ['dev', 'proc', 'sys']) {
          const target = path.join(mnt, fs)
          if (!(await stat(target).catch(() => null))?.isDirectory()) continue
          await run('mount', ['--bind', `/${fs}`, target], {timeoutMs: 30_000})
          binds.push(target)
        }
        for (const holder of holders) {
          log.info(`Installing GRUB2 on disk holder ${holder}`)
          await run('chroot', [mnt, `${grub}-install`, '--target=i386-pc', '--modules=mdraid1x part_gpt part_msdos', holder], {
            timeoutMs: 600_000,
            env: {PATH: '/usr/sbin:/usr/bin:/sbin:/bin'},
          })
        }
      } finally {
        for (const m of binds.reverse()) await run('umount', [m], {allowFailure: true, timeoutMs: 60_000})
      }
    },
    {log},
  )
}

/**
 * Partition images (image_type "partition"): IPA's partition_utils.work_on_disk and
 * disk_utils.make_partitions. The disk gets a new partition table, in IPA's order:
 *
 *   1. EFI system partition (550 MiB, vfat "efi-part")      deploy_boot_mode uefi
 *      BIOS boot partition (1 MiB, GPT bios_grub)           deploy_boot_mode bios + disk_label gpt
 *   2. ephemeral (ephemeral_mb, mkfs <ephemeral_format> "ephemeral0")
 *   3. swap (swap_mb, mkswap "swap1")
 *   4. config drive (its own size, the ISO labelled config-2 written into it)
 *   5. root (root_mb), last so cloud-init's growroot can extend it to the end of the disk
 *
 * starting at 1 MiB, each partition a whole number of MiB (parted -a optimal, unit MiB, as IPA).
 * The image is streamed into the root partition by writeImage() (raw, or qcow2 converted while it
 * streams): nothing is staged on the ramdisk. The result is IPA's: {'root uuid', 'efi system
 * partition uuid', partitions: {root, swap, ephemeral, configdrive, 'efi system partition',
 * 'BIOS Boot partition'}}.
 */
import {open} from 'node:fs/promises'
import {CommandFailedError, run} from '../../common/exec.js'
import {assertDeviceAllowed} from '../disk/allowlist.js'
import {blockDeviceBytes, partitionNumber, partitionPath, partitionTable} from '../disk/partitions.js'
import {blockUuid} from '../disk/probe.js'
import {rescanDevice, waitForBlockDevice} from '../disk/settle.js'
import {destroyDiskMetadata} from '../disk/wipe.js'
import {CommandExecutionError, ImageWriteError, InvalidCommandParamsError, RESTError} from '../errors.js'
import {getConfigDrive, MAX_CONFIG_DRIVE_SIZE_MB} from './configdrive.js'
import {downloadSettings, ImageDownload, validateImageInfo, type ImageInfo} from './download.js'
import type {PrepareContext} from './state.js'
import {afterTouch, writeImage} from './stream.js'
import {Target} from './target.js'

const MIB = 1024 * 1024
/** IPA's [disk_utils] efi_system_partition_size default. */
export const EFI_SYSTEM_PARTITION_MB = 550
/** IPA's [disk_utils] bios_boot_partition_size default. */
export const BIOS_BOOT_PARTITION_MB = 1
/** Room for the backup GPT at the end of the disk. */
const GPT_TAIL_MB = 1

export interface PartitionLayout {
  rootMb: number
  swapMb: number
  ephemeralMb: number
  ephemeralFormat: string
  preserveEphemeral: boolean
  diskLabel: 'msdos' | 'gpt'
  bootMode: 'uefi' | 'bios'
  bootOption: string
}

export interface PlannedPartition {
  role: 'efi system partition' | 'BIOS Boot partition' | 'ephemeral' | 'swap' | 'configdrive' | 'root'
  number: number
  startMb: number
  sizeMb: number
  /** parted mkpart fs-type. */
  fsType: string
  flags: string[]
}

function intField(info: ImageInfo, key: string, required: boolean): number {
  const v = info[key]
  if (v === undefined || v === null || v === '') {
    if (required) throw new InvalidCommandParamsError(`Image is missing '${key}' field, which partition images require.`)
    return 0
  }
  const n = typeof v === 'string' && /^\d+$/.test(v.trim()) ? Number(v) : v
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0)
    throw new InvalidCommandParamsError(`Image '${key}' must be a non-negative integer (MiB), got ${JSON.stringify(v)}`)
  return n
}

/** The partition-image fields of image_info, checked (InvalidCommandParamsError). */
export function partitionLayout(info: ImageInfo): PartitionLayout {
  const rootMb = intField(info, 'root_mb', true)
  if (rootMb === 0) throw new InvalidCommandParamsError(`Image 'root_mb' must be at least 1 MiB`)
  const bootMode = (info.deploy_boot_mode ?? 'bios') as string
  if (bootMode !== 'uefi' && bootMode !== 'bios')
    throw new InvalidCommandParamsError(`Image 'deploy_boot_mode' must be 'uefi' or 'bios', got ${JSON.stringify(bootMode)}`)
  const label = info.disk_label ?? (bootMode === 'uefi' ? 'gpt' : 'msdos')
  if (label !== 'msdos' && label !== 'gpt') throw new InvalidCommandParamsError(`Image 'disk_label' must be 'msdos' or 'gpt', got ${JSON.stringify(label)}`)
  const ephemeralMb = intField(info, 'ephemeral_mb', false)
  const ephemeralFormat = (info.ephemeral_format ?? 'ext4') as string
  if (ephemeralMb && (typeof ephemeralFormat !== 'string' || !/^(ext[234]|xfs|btrfs|vfat|fat)$/.test(ephemeralFormat))) {
    throw new InvalidCommandParamsError(`Image 'ephemeral_format' must be one of ext2, ext3, ext4, xfs, btrfs, vfat, got ${JSON.stringify(ephemeralFormat)}`)
  }
  return {
    rootMb,
    swapMb: intField(info, 'swap_mb', false),
    ephemeralMb,
    ephemeralFormat,
    preserveEphemeral: info.preserve_ephemeral === true || info.preserve_ephemeral === 'true',
    diskLabel: label,
    bootMode,
    bootOption: typeof info.boot_option === 'string' ? info.boot_option : 'local',
  }
}

/** IPA's make_partitions order and sizes, from 1 MiB on. */
export function planPartitions(layout: PartitionLayout, configdriveMb: number): PlannedPartition[] {
  const parts: PlannedPartition[] = []
  let start = 1
  const add = (role: PlannedPartition['role'], sizeMb: number, fsType = '', flags: string[] = []): void => {
    parts.push({role, number: parts.length + 1, startMb: start, sizeMb, fsType, flags})
    start += sizeMb
  }
  const local = layout.bootOption !== 'netboot'
  if (layout.bootMode === 'uefi' && local) {
    // IPA sets the boot flag (on GPT: the ESP type); on MBR the esp flag gives it type 0xef too.
    add('efi system partition', EFI_SYSTEM_PARTITION_MB, 'fat32', layout.diskLabel === 'gpt' ? ['boot'] : ['boot', 'esp'])
  }
  if (layout.bootMode === 'bios' && local && layout.diskLabel === 'gpt') add('BIOS Boot partition', BIOS_BOOT_PARTITION_MB, '', ['bios_grub'])
  if (layout.ephemeralMb) add('ephemeral', layout.ephemeralMb)
  if (layout.swapMb) add('swap', layout.swapMb, 'linux-swap')
  if (configdriveMb) add('configdrive', configdriveMb)
  add('root', layout.rootMb, '', layout.bootMode === 'bios' && local && layout.diskLabel === 'msdos' ? ['boot'] : [])
  if (layout.diskLabel === 'msdos' && parts.length > 4) {
    throw new InvalidCommandParamsError(`An MBR (msdos) disk label holds 4 primary partitions; this layout needs ${parts.length}: use disk_label gpt`)
  }
  return parts
}

/** parted arguments for the whole table (IPA's DiskPartitioner.commit). */
export function partedArgs(device: string, label: 'msdos' | 'gpt', parts: PlannedPartition[]): string[] {
  const args = ['-a', 'optimal', '-s', device, '--', 'unit', 'MiB', 'mklabel', label]
  for (const p of parts) {
    args.push('mkpart', 'primary', ...(p.fsType ? [p.fsType] : []), String(p.startMb), String(p.startMb + p.sizeMb))
    for (const f of p.flags) args.push('set', String(p.number), f, 'on')
  }
  return args
}

async function mkfs(fs: string, dev: string, label: string): Promise<void> {
  if (fs === 'swap') await run('mkswap', ['-L', label, dev])
  else if (fs === 'vfat' || fs === 'fat') await run('mkfs.vfat', ['-n', label, dev])
  else if (fs.startsWith('ext')) await run(`mkfs.${fs}`, ['-q', '-F', '-L', label, dev])
  else if (fs === 'xfs' || fs === 'btrfs') await run(`mkfs.${fs}`, ['-f', '-L', label, dev])
  else throw new InvalidCommandParamsError(`unsupported filesystem ${fs}`)
}

/** With preserve_ephemeral the table is kept: it must be the one this layout would create. */
async function checkExistingLayout(device: string, label: string, parts: PlannedPartition[]): Promise<void> {
  const table = await partitionTable(device)
  const want = label === 'msdos' ? 'dos' : 'gpt'
  const mismatch = (why: string): never => {
    throw new CommandExecutionError(`preserve_ephemeral: the partition table on ${device} does not match the requested layout (${why}); it cannot be preserved`)
  }
  if (!table) return mismatch('there is no partition table')
  if (table.label !== want) mismatch(`it is ${table.label}, not ${want}`)
  const sectors = MIB / table.sectorsize
  for (const p of parts) {
    const e = table.partitions.find((x) => partitionNumber(x.node) === p.number)
    if (!e || e.start !== p.startMb * sectors || Math.abs(e.size - p.sizeMb * sectors) > sectors) mismatch(`partition ${p.number} (${p.role}) differs`)
  }
}

function partitionError(device: string, err: unknown): RESTError {
  if (err instanceof RESTError) return err
  if (err instanceof CommandFailedError) return new ImageWriteError(device, err.exitCode ?? -1, err.stdout, err.stderr)
  return new ImageWriteError(device, (err as NodeJS.ErrnoException).code ?? -1, '', (err as Error).message)
}

/** standby.prepare_image / write_image for image_type "partition". */
export async function preparePartitionImage(ctx: PrepareContext, info: ImageInfo, configdrive: string | null): Promise<string> {
  const {config, log, state} = ctx
  validateImageInfo(info)
  const layout = partitionLayout(info)
  const nodeUuid = info.node_uuid ?? 'local'
  const device = await ctx.installDevice()
  assertDeviceAllowed(device, config.deviceAllowlist)
  log.info('preparing partition image', {image: info.id, device, ...layout})

  if (state.cachedImageId === info.id && state.imageType === 'partition' && state.partitionUuids) {
    log.info('image already written: not writing it again', {image: info.id})
    return resultMessage(info, device, state.partitionUuids)
  }

  const settings = downloadSettings(config, log)
  const iso = configdrive ? await getConfigDrive(configdrive, nodeUuid, {info, settings, log}) : undefined
  const configdriveMb = iso ? Math.ceil(iso.length / MIB) : 0
  if (configdriveMb > MAX_CONFIG_DRIVE_SIZE_MB) {
    throw new CommandExecutionError(
      `Config drive size exceeds maximum limit of 64MiB. Size of the given config drive is ${configdriveMb} MiB for node ${nodeUuid}.`,
    )
  }
  const parts = planPartitions(layout, configdriveMb)
  const diskBytes = await blockDeviceBytes(device)
  const last = parts[parts.length - 1]!
  const neededMb = last.startMb + last.sizeMb + (layout.diskLabel === 'gpt' ? GPT_TAIL_MB : 0)
  if (neededMb * MIB > diskBytes) {
    throw new InvalidCommandParamsError(
      `The requested partitions need ${neededMb} MiB (root_mb ${layout.rootMb}, swap_mb ${layout.swapMb}, ephemeral_mb ${layout.ephemeralMb}` +
        `${configdriveMb ? `, config drive ${configdriveMb}` : ''}${parts[0]!.role === 'efi system partition' ? `, EFI system partition ${EFI_SYSTEM_PARTITION_MB}` : ''}) ` +
        `but ${device} holds only ${Math.floor(diskBytes / MIB)} MiB`,
    )
  }

  // Connect (and resolve the checksum) before the disk is touched.
  const dl = await ImageDownload.open(info, settings)
  const path = (p: PlannedPartition): string => partitionPath(device, p.number)
  const byRole = new Map(parts.map((p) => [p.role, p]))
  const esp = byRole.get('efi system partition')
  const rootPart = byRole.get('root')!
  const root = path(rootPart)
  let touched = false
  // The disk is partitioned only at the image's first write to the root partition, once the
  // image has passed every check its first bytes and tables allow (format, qcow2 header/L1/first
  // L2, virtual size against root_mb): a refused image leaves the disk as it was.
  const partition = async (): Promise<void> => {
    if (!layout.preserveEphemeral) {
      touched = true
      await destroyDiskMetadata(device, config.deviceAllowlist, log)
      await run('parted', partedArgs(device, layout.diskLabel, parts), {env: {LC_ALL: 'C'}})
    }
    await rescanDevice(device, log)
    for (const p of parts) await waitForBlockDevice(path(p))
    log.info('disk partitioned', {device, partitions: parts.map((p) => `${p.number}:${p.role}:${p.sizeMb}MiB`)})
    if (esp) await mkfs('vfat', path(esp), 'efi-part')
    const cd = byRole.get('configdrive')
    if (cd && iso) await writeAt(path(cd), iso)
  }
  try {
    if (layout.preserveEphemeral) await checkExistingLayout(device, layout.diskLabel, parts)
    const target = Target.deferredAt(root, rootPart.sizeMb * MIB, partition)
    try {
      state.lastWrite = await writeImage(dl, target, info.disk_format, {
        permitted: config.permittedImageFormats,
        spoolDir: config.imageSpoolDir,
        reopen: () => ImageDownload.open(info, settings),
        log,
      })
      await target.open() // (an image that wrote nothing still gets its partitions)
      await target.sync()
    } catch (err) {
      if (err instanceof ImageWriteError && /holds only/.test(err.details)) {
        const m = /needs (\d+) bytes/.exec(err.details)
        throw new InvalidCommandParamsError(
          `Root partition is too small for requested image. Image virtual size: ${m ? Math.ceil(Number(m[1]) / MIB) : '?'} MB, Root size: ${layout.rootMb} MB`,
        )
      }
      throw touched ? afterTouch(err) : err
    } finally {
      await target.close()
    }

    const swap = byRole.get('swap')
    if (swap) await mkfs('swap', path(swap), 'swap1')
    const eph = byRole.get('ephemeral')
    if (eph && !layout.preserveEphemeral) await mkfs(layout.ephemeralFormat, path(eph), 'ephemeral0')
    await rescanDevice(device, log)

    const partitions: Record<string, string> = {}
    for (const p of parts) partitions[p.role] = path(p)
    const uuids: Record<string, unknown> = {
      partitions,
      'root uuid': await blockUuid(root),
      'efi system partition uuid': esp ? await blockUuid(path(esp)) : null,
    }
    state.partitionUuids = uuids
    state.cachedImageId = info.id
    state.imageType = 'partition'
    const msg = resultMessage(info, device, uuids)
    log.info(msg)
    return msg
  } catch (err) {
    dl.close()
    state.cachedImageId = undefined
    state.partitionUuids = null
    if (touched && !layout.preserveEphemeral) {
      log.error('partition image deploy failed: destroying the partial metadata', {device, err: (err as Error).message})
      await destroyDiskMetadata(device, config.deviceAllowlist, log).catch((e: unknown) =>
        log.warn('could not wipe the partial image', {err: (e as Error).message}),
      )
      await rescanDevice(device, log)
    }
    throw partitionError(device, err)
  }
}

async function writeAt(dev: string, data: Buffer): Promise<void> {
  const fh = await open(dev, 'r+')
  try {
    await fh.write(data, 0, data.length, 0)
    await fh.datasync()
  } finally {
    await fh.close()
  }
}

/** IPA's _message_format. */
function resultMessage(info: ImageInfo, device: string, uuids: Record<string, unknown>): string {
  const root = uuids['root uuid']
  const efi = uuids['efi system partition uuid']
  return info.deploy_boot_mode === 'uefi' && efi
    ? `image (${info.id}) written to device ${device} root_uuid=${String(root)} efi_system_partition_uuid=${String(efi)}`
    : `image (${info.id}) written to device ${device} root_uuid=${String(root)}`
}

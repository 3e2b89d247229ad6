/**
 * Config drive and partition facts after a whole-disk image was written (IPA's
 * partition_utils.create_config_drive_partition / get_configdrive, disk_utils helpers).
 *
 * The config drive (gzip + base64 ISO 9660 data, or an http(s) URL to it, at most 64 MiB
 * uncompressed) goes into a partition at the end of the disk: a new GPT partition made with
 * sgdisk (named config-2), or a primary MBR partition appended with sfdisk. An existing partition
 * whose filesystem is labelled config-2 is reused. The data is written at the partition's offset
 * on the disk itself, so nothing depends on the kernel creating partition device nodes.
 *
 * IPA raises ironic-lib's InstanceDeployFailure here, which reaches Ironic as a
 * CommandExecutionError with the same text; so does rdk.
 */
import {randomUUID} from 'node:crypto'
import {open} from 'node:fs/promises'
import {gunzipSync} from 'node:zlib'
import {run} from '../../common/exec.js'
import {blockDeviceBytes, isEspType, partitionNumber, partitionPath, partitionTable, type PartitionEntry} from '../disk/partitions.js'
import {probeDevice} from '../disk/probe.js'
import {rescanDevice} from '../disk/settle.js'
import {CommandExecutionError, ImageDownloadError} from '../errors.js'
import type {Logger} from '../log.js'
import {getWithRetries, redact, type DownloadSettings, type ImageInfo} from './download.js'

export const MAX_CONFIG_DRIVE_SIZE_MB = 64
const MIB = 1024 * 1024
const MAX_MBR_DISK_MB = 2097152
const CONFIGDRIVE_LABEL = 'config-2'

/**
 * standby.get_partition_uuids data for a whole-disk image: the EFI system partition's UUID (its
 * filesystem UUID, else the partition UUID, like IPA's block_uuid) and which partition is which.
 */
export async function partitionUuids(device: string, log?: Logger): Promise<Record<string, unknown>> {
  const table = await partitionTable(device).catch(() => undefined)
  const out: Record<string, unknown> = {}
  if (!table) return out
  const partitions: Record<string, string> = {}
  for (const p of table.partitions) {
    const n = partitionNumber(p.node)
    const dev = partitionPath(device, n)
    const isEsp = isEspType(table.label, p.type)
    const fs = await probeDevice(device, p.start * table.sectorsize)
    if (isEsp && !partitions['efi system partition']) {
      partitions['efi system partition'] = dev
      out['efi system partition uuid'] = fs.UUID || p.uuid?.toLowerCase() || null
    }
    if ((fs.LABEL ?? '').toLowerCase() === CONFIGDRIVE_LABEL) partitions.configdrive = dev
  }
  if (Object.keys(partitions).length) out.partitions = partitions
  log?.debug('partition uuids', {device, ...out})
  return out
}

function deployFailure(msg: string, log?: Logger): CommandExecutionError {
  log?.error(msg)
  return new CommandExecutionError(msg)
}

/** IPA's get_configdrive: the uncompressed ISO bytes from base64+gzip text or an http(s) URL. */
export async function getConfigDrive(configdrive: string, nodeUuid: string, opts: {info: ImageInfo; settings: DownloadSettings; log: Logger}): Promise<Buffer> {
  const isUrl = /^https?:\/\//i.test(configdrive)
  let data: Buffer | string = configdrive
  if (isUrl) {
    try {
      const res = await getWithRetries(configdrive, 'configdrive', {info: opts.info, settings: opts.settings})
      const parts: Buffer[] = []
      let n = 0
      for await (const c of res) {
        n += (c as Buffer).length
        if (n > 2 * MAX_CONFIG_DRIVE_SIZE_MB * MIB) throw new Error(`larger than ${2 * MAX_CONFIG_DRIVE_SIZE_MB} MiB`)
        parts.push(c as Buffer)
      }
      data = Buffer.concat(parts)
    } catch (err) {
      const reason = err instanceof ImageDownloadError ? err.details : (err as Error).message
      throw deployFailure(`Can't download the configdrive content for node ${nodeUuid} from '${redact(configdrive)}'. Reason: ${reason}`, opts.log)
    }
  }
  const text = (typeof data === 'string' ? data : data.toString('latin1')).replace(/\s+/g, '')
  let decoded: Buffer
  if (/^[A-Za-z0-9+/]*={0,2}$/.test(text) && text.length % 4 === 0 && text.length > 0) {
    decoded = Buffer.from(text, 'base64')
  } else if (typeof data !== 'string') {
    // IPA: downloaded content that is not base64 is taken as the raw ISO.
    opts.log.debug('downloaded config drive is not base64 encoded: assuming binary', {node: nodeUuid})
    if (data.length > MAX_CONFIG_DRIVE_SIZE_MB * MIB) throw sizeError(Math.ceil(data.length / MIB), nodeUuid)
    return data
  } else {
    const why = text.length === 0 ? 'empty content' : text.length % 4 !== 0 ? 'Incorrect padding' : 'characters outside the base64 alphabet'
    throw deployFailure(
      `Config drive for node ${nodeUuid} is not base64 encoded or the content is malformed. Error: ${why}.${isUrl ? ` Downloaded from "${redact(configdrive)}".` : ''}`,
      opts.log,
    )
  }
  try {
    return gunzipSync(decoded, {maxOutputLength: MAX_CONFIG_DRIVE_SIZE_MB * MIB + 1})
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) {
      throw sizeError(MAX_CONFIG_DRIVE_SIZE_MB + 1, nodeUuid)
    }
    const code = (err as NodeJS.ErrnoException).code
    const why =
      code === 'Z_DATA_ERROR'
        ? `the config drive is not gzip-compressed data (${(err as Error).message})`
        : code === 'Z_BUF_ERROR'
          ? `the gzip data is truncated (${(err as Error).message})`
          : (err as Error).message
    throw deployFailure(`Encountered error while decompressing and writing config drive for node ${nodeUuid}. Error: ${why}`, opts.log)
  }
}

function sizeError(mb: number, nodeUuid: string): CommandExecutionError {
  return new CommandExecutionError(`Config drive size exceeds maximum limit of 64MiB. Size of the given config drive is ${mb} MiB for node ${nodeUuid}.`)
}

/**
 * Put the config drive on `device` (whole-disk image already written): reuse a partition
 * labelled config-2, else create one in the last 64 MiB. Returns the partition's device path.
 */
export async function createConfigDrivePartition(
  nodeUuid: string,
  device: string,
  /** base64+gzip text or a URL (getConfigDrive), or the ISO bytes it already returned. */
  configdrive: string | Buffer,
  opts: {info: ImageInfo; settings: DownloadSettings; log: Logger},
): Promise<string> {
  const {log} = opts
  const iso = Buffer.isBuffer(configdrive) ? configdrive : await getConfigDrive(configdrive, nodeUuid, opts)
  const mb = Math.ceil(iso.length / MIB)
  if (mb > MAX_CONFIG_DRIVE_SIZE_MB) throw sizeError(mb, nodeUuid)
  const fail = (err: unknown): CommandExecutionError =>
    err instanceof CommandExecutionError
      ? err
      : deployFailure(`Failed to create config drive on disk ${device} for node ${nodeUuid}. Error: ${(err as Error).message}`, log)
  try {
    await rescanDevice(device, log)
    let table = await partitionTable(device)
    if (!table) throw new Error('the disk has no partition table')
    // An existing config-2 partition (the image brought one) is reused, as IPA does.
    const labelled: PartitionEntry[] = []
    for (const p of table.partitions) {
      const fs = await probeDevice(device, p.start * table.sectorsize)
      if ((fs.LABEL ?? '').toLowerCase() === CONFIGDRIVE_LABEL) labelled.push(p)
    }
    if (labelled.length > 1) {
      const found = labelled.map((p) => partitionPath(device, partitionNumber(p.node)))
      throw deployFailure(
        `More than one partition with label "${CONFIGDRIVE_LABEL}" exists on device ${device} for node ${nodeUuid}: ${found.join(' and ')}.`,
        log,
      )
    }
    let part: PartitionEntry | undefined = labelled[0]
    if (part) {
      log.debug('config drive partition exists', {partition: partitionPath(device, partitionNumber(part.node))})
    } else {
      log.debug('adding a config drive partition', {device, mb})
      const before = new Set(table.partitions.map((p) => p.start))
      if (table.label === 'gpt') {
        const uuid = randomUUID()
        await run('sgdisk', ['-n', `0:-${MAX_CONFIG_DRIVE_SIZE_MB}MB:0`, '-u', `0:${uuid}`, '-c', `0:${CONFIGDRIVE_LABEL}`, device])
        await rescanDevice(device, log)
        table = (await partitionTable(device))!
        part = table.partitions.find((p) => p.uuid?.toLowerCase() === uuid)
        if (!part) {
          throw deployFailure(
            `Failed to create config drive on disk ${device} for node ${nodeUuid}. Partition with UUID ${uuid} has not been found after creation.`,
            log,
          )
        }
      } else {
        const primaries = table.partitions.filter((p) => partitionNumber(p.node) <= 4).length
        if (primaries > 3) {
          throw deployFailure(
            `Config drive cannot be created for node ${nodeUuid}. Disk (${device}) uses MBR partitioning and already has ${primaries} primary partitions.`,
            log,
          )
        }
        // sfdisk --append rather than IPA's `parted mkpart`: parted gives the disk a new MBR
        // signature, which breaks images that boot by it (root=PARTUUID=<signature>-01, Windows).
        const sector = table.sectorsize
        const sectors = Math.floor((await blockDeviceBytes(device)) / sector)
        let end = sectors
        if ((sectors * sector) / MIB > MAX_MBR_DISK_MB) {
          log.warn('disk is larger than 2TB: creating the config drive at the MBR limit', {device})
          end = Math.floor(((MAX_MBR_DISK_MB - 1) * MIB) / sector)
        }
        const align = MIB / sector
        const start = Math.floor((end - (MAX_CONFIG_DRIVE_SIZE_MB * MIB) / sector) / align) * align
        await run('sfdisk', ['--append', '--no-reread', '--no-tell-kernel', '-q', device], {input: `start=${start}, size=${end - start}, type=c\n`})
        await rescanDevice(device, log)
        table = (await partitionTable(device))!
        const fresh = table.partitions.filter((p) => !before.has(p.start))
        if (fresh.length !== 1) {
          throw deployFailure(`Disk partitioning failed on device ${device}. Unable to retrieve config drive partition information.`, log)
        }
        part = fresh[0]!
      }
    }
    const sector = table.sectorsize
    if (iso.length > part.size * sector) throw new Error(`the config drive (${iso.length} bytes) does not fit its partition (${part.size * sector} bytes)`)
    const fh = await open(device, 'r+')
    try {
      await fh.write(iso, 0, iso.length, part.start * sector)
      await fh.datasync()
    } finally {
      await fh.close()
    }
    await rescanDevice(device, log)
    const path = partitionPath(device, partitionNumber(part.node))
    log.info('config drive written', {node: nodeUuid, partition: path})
    return path
  } catch (err) {
    throw fail(err)
  }
}

/**
 * The image deploy (standby.prepare_image and the write_image deploy step): the install device,
 * partition image (partition.ts) or whole disk, the config drive, the cached-image state, and what
 * IPA checks and fixes after a whole-disk image was written (backup GPT, partition table present).
 * The bytes themselves are moved by stream.ts; the disks are handled through src/agent/disk/.
 */
import {run} from '../../common/exec.js'
import type {AgentConfig} from '../config.js'
import {assertDeviceAllowed} from '../disk/allowlist.js'
import {diskIdentifier, partitionTable} from '../disk/partitions.js'
import {rescanDevice} from '../disk/settle.js'
import {destroyDiskMetadata} from '../disk/wipe.js'
import {CommandExecutionError, InvalidCommandParamsError} from '../errors.js'
import type {Logger} from '../log.js'
import {createConfigDrivePartition, getConfigDrive, partitionUuids} from './configdrive.js'
import {downloadSettings, ImageDownload, validateImageInfo, type DownloadSettings, type ImageInfo} from './download.js'
import {preparePartitionImage} from './partition.js'
import type {PrepareContext} from './state.js'
import {afterTouch, writeImage, type WriteResult} from './stream.js'
import {Target} from './target.js'

// The deploy's API for standby.*, image.install_bootloader and the write_image step.
export {validateImageInfo} from './download.js'
export {deployState, type DeployState, type PrepareContext} from './state.js'

/** The destination device and the result text, as IPA's prepare_image reports them. */
export async function prepareImage(ctx: PrepareContext, imageInfo: ImageInfo, configdrive: string | null | undefined): Promise<string> {
  const {config, log, state} = ctx
  validateImageInfo(imageInfo)
  // IPA: configdrive comes as its own argument, or (older Ironic) inside image_info.
  const cd = configdrive ?? (typeof imageInfo.configdrive === 'string' ? imageInfo.configdrive : null)
  if (cd !== null && typeof cd !== 'string') {
    throw new InvalidCommandParamsError('configdrive must be a string: gzip+base64 ISO data or an http(s) URL to it')
  }
  if (imageInfo.image_type === 'partition') return preparePartitionImage(ctx, imageInfo, cd)
  const device = await ctx.installDevice()
  assertDeviceAllowed(device, config.deviceAllowlist)
  log.info('preparing image', {image: imageInfo.id, device})
  // The config drive is fetched and decoded first: a bad one fails the step before the disk is touched.
  const nodeUuid = imageInfo.node_uuid ?? 'local'
  const iso = cd !== null && cd !== undefined ? await getConfigDrive(cd, nodeUuid, {info: imageInfo, settings: settingsOf(config, log), log}) : undefined

  if (state.cachedImageId !== imageInfo.id) {
    if (state.cachedImageId) log.debug('overwriting the image written before', {previous: state.cachedImageId})
    state.lastWrite = await writeWholeDisk(ctx, imageInfo, device)
    state.cachedImageId = imageInfo.id
  }
  state.imageType = 'whole-disk'
  await fixGpt(device, log)
  await validatePartitioning(device, log)
  if (iso) await createConfigDrivePartition(nodeUuid, device, iso, {info: imageInfo, settings: settingsOf(config, log), log})
  const uuids: Record<string, unknown> = {'root uuid': await diskIdentifier(device), ...(await partitionUuids(device, log))}
  state.partitionUuids = uuids
  const efi = uuids['efi system partition uuid']
  const msg =
    imageInfo.deploy_boot_mode === 'uefi' && efi
      ? `image (${imageInfo.id}) written to device ${device} root_uuid=${String(uuids['root uuid'])} efi_system_partition_uuid=${String(efi)}`
      : `image (${imageInfo.id}) written to device ${device} root_uuid=${String(uuids['root uuid'])}`
  log.info(msg)
  return msg
}

function settingsOf(config: AgentConfig, log: Logger): DownloadSettings {
  return downloadSettings(config, log)
}

async function writeWholeDisk(ctx: PrepareContext, info: ImageInfo, device: string): Promise<WriteResult> {
  const {config, log} = ctx
  const settings = settingsOf(config, log)
  // Connect (and resolve the checksum) first: a bad URL or checksum leaves the disk untouched.
  const dl = await ImageDownload.open(info, settings)
  let target: Target
  try {
    // The disk's partition tables are wiped only at the first write, once the image has passed
    // every check its first bytes and tables allow (format, qcow2 header/L1/first L2, size).
    target = await Target.deferred(device, () => destroyDiskMetadata(device, config.deviceAllowlist, log))
  } catch (err) {
    dl.close()
    throw err
  }
  try {
    const result = await writeImage(dl, target, info.disk_format, {
      permitted: config.permittedImageFormats,
      spoolDir: config.imageSpoolDir,
      reopen: () => ImageDownload.open(info, settings),
      log,
    })
    await target.open() // (an image that wrote nothing still replaces what was on the disk)
    await target.sync()
    return result
  } catch (err) {
    dl.close()
    await target.close()
    if (!target.touched) {
      log.error('image refused before writing: the disk is unchanged', {device, err: (err as Error).message})
      throw err
    }
    // A half-written or unverified disk must not boot: wipe its partition tables again.
    ctx.state.cachedImageId = undefined
    log.error('image writing failed: destroying the partial image metadata', {device, err: (err as Error).message})
    await destroyDiskMetadata(device, config.deviceAllowlist, log).catch((e: unknown) =>
      log.warn('could not wipe the partial image', {err: (e as Error).message}),
    )
    throw afterTouch(err)
  } finally {
    await target.close()
    if (target.touched) await rescanDevice(device, log)
  }
}

/** IPA's fix_gpt_partition: move the backup GPT to the end of a disk larger than the image. */
async function fixGpt(device: string, log: Logger): Promise<void> {
  try {
    const table = await partitionTable(device)
    if (table?.label !== 'gpt') return
    const v = await run('sgdisk', ['-v', device], {allowFailure: true})
    if (/it doesn't reside\s+at the end of the disk/.test(v.stdout)) {
      await run('sgdisk', ['-e', device])
      await rescanDevice(device, log)
      log.info('moved the backup GPT to the end of the disk', {device})
    }
  } catch (err) {
    log.error('failed to fix the GPT', {device, err: (err as Error).message})
  }
}

/** IPA's _validate_partitioning: a whole-disk image must leave a partition table with partitions. */
async function validatePartitioning(device: string, log: Logger): Promise<void> {
  let table
  try {
    table = await partitionTable(device)
  } catch (err) {
    throw new CommandExecutionError(
      `Unable to find a valid partition table on the disk after writing the image. The image may be corrupted. Error: ${(err as Error).message}`,
    )
  }
  if (!table || table.partitions.length === 0) {
    throw new CommandExecutionError(`No partitions found on the device ${device} after writing the image.`)
  }
  log.debug('partition table found after writing', {device, label: table.label, partitions: table.partitions.length})
}

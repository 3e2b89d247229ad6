/**
 * Writing an image: the byte stream from ImageDownload onto a block device (or a regular file),
 * and the whole-disk deploy around it (standby.prepare_image and the write_image deploy step).
 *
 * - raw (and gpt) images stream straight to the target; all-zero blocks are not written.
 * - qcow2 is converted while it streams (qcow2.ts), never stored anywhere first.
 * - Anything else permitted by `permitted_image_formats` (vmdk, vhd, vdi…) is downloaded to a
 *   spool file (this costs space as large as the image, in `image_spool_dir` or the temp dir) and
 *   converted with `qemu-img convert -O raw`; a qcow2 whose layout defeats streaming falls back to
 *   the same path (downloaded again).
 * - Afterwards, the parts of the virtual disk nothing was written to are made to read as zeros,
 *   rewriting only what is not zero already.
 *
 * The format comes from the bytes (format.ts), never from disk_format alone.
 *
 * The deploy paths hand writeImage() a deferred Target: the disk is wiped (or partitioned) only at
 * the first write, so every check the image's first bytes and tables allow (format, qcow2 header,
 * L1 and first L2 table, sizes, qemu-img info/check of a spool) runs while the disk is untouched.
 */
import {randomBytes} from 'node:crypto'
import {open, rm} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {CommandFailedError, run, ToolMissingError} from '../../common/exec.js'
import type {AgentConfig} from '../config.js'
import {
  CommandExecutionError,
  ImageDownloadError,
  ImageWriteError,
  InvalidCommandParamsError,
  InvalidImage,
  NotImplementedYet,
  RESTError,
} from '../errors.js'
import {assertDeviceAllowed} from '../hardware/disks.js'
import {destroyDiskMetadata} from '../hardware/erase.js'
import type {Logger} from '../log.js'
import {createConfigDrivePartition, diskIdentifier, getConfigDrive, partitionTable, partitionUuids, rescanDevice} from './configdrive.js'
import {downloadSettings, ImageDownload, type DownloadSettings, type ImageInfo} from './download.js'
import {DETECT_BYTES, detectFormat, validateFormat, type ImageFormat} from './format.js'
import {preparePartitionImage} from './partition.js'
import {Qcow2OrderError, Qcow2Stream, type Qcow2Result} from './qcow2.js'
import {BufferPool, isZero, Target, TargetFullError} from './target.js'

const ZERO_CHECK = 64 * 1024

/** IPA's _validate_image_info: id, a non-empty urls list, and a checksum it can verify. */
export function validateImageInfo(imageInfo: unknown): asserts imageInfo is ImageInfo {
  if (!imageInfo || typeof imageInfo !== 'object' || Array.isArray(imageInfo)) {
    throw new InvalidCommandParamsError('image_info must be an object')
  }
  const info = imageInfo as Record<string, unknown>
  for (const field of ['id', 'urls']) {
    if (!(field in info)) throw new InvalidCommandParamsError(`Image is missing '${field}' field.`)
  }
  if (!Array.isArray(info.urls) || info.urls.length === 0 || !info.urls.every((u) => typeof u === 'string' && u)) {
    throw new InvalidCommandParamsError(`Image 'urls' must be a list with at least one element.`)
  }
  const {checksum, os_hash_algo: algo, os_hash_value: value} = info
  let available = false
  if (checksum !== undefined && checksum !== null) {
    if (typeof checksum !== 'string' || !checksum) throw new InvalidCommandParamsError(`Image 'checksum' must be a non-empty string.`)
    available = true
  }
  if (algo || value) {
    if (typeof algo !== 'string' || !algo) throw new InvalidCommandParamsError(`Image 'os_hash_algo' must be a non-empty string.`)
    if (typeof value !== 'string' || !value) throw new InvalidCommandParamsError(`Image 'os_hash_value' must be a non-empty string.`)
    available = true
  }
  if (!available) {
    throw new InvalidCommandParamsError(
      `Image checksum is not available, either the 'checksum' field or the 'os_hash_algo' and 'os_hash_value' fields pair must be set for image verification.`,
    )
  }
}

export interface WriteOptions {
  /** permitted_image_formats. */
  permitted: readonly string[]
  /** Where non-streamable images are spooled (default: the temp dir). */
  spoolDir?: string
  /** Bound on qcow2 clusters kept while waiting for their table (default 64 MiB). */
  pendingLimit?: number
  /** A fresh download of the same image, for the spool fallback. */
  reopen: () => Promise<ImageDownload>
  log: Logger
}

export interface WriteResult {
  format: ImageFormat
  /** How the bytes got there. */
  method: 'stream-raw' | 'stream-qcow2' | 'qemu-img'
  virtualSize: number
  bytesWritten: number
  zeroed: number
  downloaded: number
  seconds: number
  /** qcow2 streaming figures (clusters by kind, the most bytes that waited for their table). */
  qcow2?: Omit<Qcow2Result, 'header'>
}

/** Pull from `it` until `n` bytes (or the end) are buffered. */
async function readHead(it: AsyncIterator<Buffer>, n: number): Promise<{head: Buffer; done: boolean}> {
  const parts: Buffer[] = []
  let len = 0
  while (len < n) {
    const r = await it.next()
    if (r.done) return {head: Buffer.concat(parts), done: true}
    parts.push(r.value)
    len += r.value.length
  }
  return {head: Buffer.concat(parts), done: false}
}

async function* rest(head: Buffer, it: AsyncIterator<Buffer>, done: boolean): AsyncGenerator<Buffer> {
  if (head.length) yield head
  if (done) return
  for (;;) {
    const r = await it.next()
    if (r.done) return
    yield r.value
  }
}

/** Raw bytes to the target at their own offsets, skipping all-zero 64 KiB pieces. */
async function streamRaw(source: AsyncIterable<Buffer>, target: Target): Promise<number> {
  const pool = new BufferPool()
  let block = await pool.get()
  let fill = 0
  let base = 0
  const flush = async (): Promise<void> => {
    const done: Promise<unknown>[] = []
    // Runs of data are written; runs of zeros are checked on the disk right away (ensureZero),
    // overlapping the download instead of a pass over all holes at the end.
    let runStart = 0
    let runZero: boolean | undefined
    const endRun = async (end: number): Promise<void> => {
      if (runZero === undefined || end <= runStart) return
      if (runZero) await target.ensureZero(base + runStart, end - runStart)
      else done.push((await target.write(block.subarray(runStart, end), base + runStart)).done)
    }
    for (let off = 0; off < fill; off += ZERO_CHECK) {
      const zero = isZero(block.subarray(off, Math.min(fill, off + ZERO_CHECK)))
      if (zero !== runZero) {
        await endRun(off)
        runStart = off
        runZero = zero
      }
    }
    await endRun(fill)
    const used = block
    void Promise.all(done).then(() => pool.release(used))
    base += fill
    fill = 0
    block = await pool.get() // the old one is released once its writes are done
  }
  for await (const chunk of source) {
    let off = 0
    while (off < chunk.length) {
      const n = Math.min(chunk.length - off, block.length - fill)
      chunk.copy(block, fill, off, off + n)
      fill += n
      off += n
      if (fill === block.length) await flush()
    }
  }
  if (fill) await flush()
  await target.drain()
  return base
}

/** Download the whole image to a spool file (removed by the caller), verifying its checksum. */
async function spool(dl: ImageDownload, source: AsyncIterable<Buffer>, dir: string, log: Logger): Promise<string> {
  const file = path.join(dir, `.rdk-spool-${dl.info.id.replace(/[^\w.-]/g, '_')}-${randomBytes(4).toString('hex')}`)
  log.warn('spooling the image before converting it: this needs free space as large as the image', {file, bytes: dl.size ?? 'unknown'})
  const fh = await open(file, 'wx')
  try {
    let pos = 0
    for await (const chunk of source) {
      await fh.write(chunk, 0, chunk.length, pos)
      pos += chunk.length
    }
  } catch (err) {
    await fh.close().catch(() => undefined)
    await rm(file, {force: true})
    if ((err as NodeJS.ErrnoException).code === 'ENOSPC') {
      throw new ImageDownloadError(dl.info.id, `no space left in ${dir} to spool the image (${dl.size ?? 'unknown'} bytes needed)`)
    }
    throw err
  }
  await fh.close()
  try {
    dl.verify(file)
  } catch (err) {
    await rm(file, {force: true})
    throw err
  }
  return file
}

/**
 * qemu-img, as IPA runs it on untrusted images: an explicit source format (never probed), a 2 GiB
 * address-space cap (prlimit) and few malloc arenas, so a hostile image cannot eat the ramdisk.
 */
async function qemuImg(args: string[], log: Logger, timeoutMs?: number): ReturnType<typeof run> {
  const opts = {env: {LC_ALL: 'C', MALLOC_ARENA_MAX: '3'}, timeoutMs}
  try {
    return await run('prlimit', [`--as=${QEMU_IMG_ADDRESS_SPACE}`, '--', 'qemu-img', ...args], opts)
  } catch (err) {
    if (err instanceof CommandFailedError && /failed to execute qemu-img/.test(err.stderr)) throw new ToolMissingError('qemu-img')
    if (!(err instanceof ToolMissingError && err.tool === 'prlimit')) throw err
    log.warn('prlimit is missing: running qemu-img without its address-space cap')
    return run('qemu-img', args, opts)
  }
}
const QEMU_IMG_ADDRESS_SPACE = 2048 * 1024 * 1024

/** Formats qemu-img's consistency check knows (for the others it answers exit code 63). */
const CHECKABLE = new Set(['qcow2', 'vdi', 'vhdx', 'vmdk'])

/**
 * qemu-img info + check of a spooled, checksum-verified image whose format was detected from its
 * bytes: no backing file, no other files, no encryption, consistent metadata, fits the target.
 * Runs before the target is touched.
 */
async function inspectSpool(file: string, format: ImageFormat, target: Target, log: Logger): Promise<number> {
  const qfmt = format === 'gpt' ? 'raw' : format
  let info: {
    'virtual-size'?: number
    'backing-filename'?: string
    encrypted?: boolean
    'format-specific'?: {data?: {extents?: {filename?: string}[]; 'data-file'?: string; encrypt?: unknown}}
  }
  try {
    info = JSON.parse((await qemuImg(['info', '--output=json', '-f', qfmt, file], log, 120_000)).stdout)
  } catch (err) {
    throw new InvalidImage(`qemu-img cannot read the ${format} image: ${(err as Error).message}`)
  }
  if (info['backing-filename']) throw new InvalidImage('Security: Image failed safety check: the image has a backing file')
  const data = info['format-specific']?.data
  if (data?.['data-file']) throw new InvalidImage('Security: Image failed safety check: the image uses an external data file')
  if (info.encrypted || data?.encrypt) throw new InvalidImage('Security: Image failed safety check: the image is encrypted')
  for (const e of data?.extents ?? []) {
    if (e.filename && path.resolve(e.filename) !== path.resolve(file)) throw new InvalidImage('Security: Image failed safety check: the image references other files')
  }
  const vsize = Number(info['virtual-size'] ?? 0)
  if (target.capacity !== undefined && vsize > target.capacity) throw new TargetFullError(target.path, vsize, target.capacity)
  if (CHECKABLE.has(qfmt)) {
    try {
      await qemuImg(['check', '-f', qfmt, file], log, 600_000)
    } catch (err) {
      // 3: leaked clusters only (harmless for a copy); 2: corruptions; 1: the check failed.
      if (!(err instanceof CommandFailedError) || err.exitCode !== 3) {
        let why = (err as Error).message
        if (err instanceof CommandFailedError) {
          const summary = /^.*(errors? were found|could not be checked|check failed).*$/im.exec(err.stdout + '\n' + err.stderr)?.[0]
          const first = err.stderr.trim().split('\n')[0]
          why = [summary, first && first !== summary ? `first: ${first}` : ''].filter(Boolean).join('; ') || `exit code ${err.exitCode}`
        }
        throw new InvalidImage(`${format} image is corrupt (qemu-img check): ${why}`)
      }
    }
  }
  return vsize
}

/** qemu-img convert of a spooled image that passed inspectSpool, onto the target. */
async function convertSpool(file: string, format: ImageFormat, target: Target, log: Logger): Promise<number> {
  const qfmt = format === 'gpt' ? 'raw' : format
  const vsize = await inspectSpool(file, format, target, log)
  await target.drain()
  // Every check passed: only now is the target prepared (a deferred target is wiped here).
  await target.open()
  log.info('converting the spooled image with qemu-img', {format, virtual_size: vsize})
  try {
    // -n: keep the device; qemu-img then writes zeros itself where the image reads as zero.
    await qemuImg(['convert', '-f', qfmt, '-O', 'raw', '-n', '-W', ...(target.isBlockDevice ? ['-t', 'none'] : []), file, target.path], log)
  } catch (err) {
    if (err instanceof CommandFailedError) throw new ImageWriteError(target.path, err.exitCode ?? -1, err.stdout, err.stderr)
    throw err
  }
  if (!target.isBlockDevice) {
    const fh = await open(target.path, 'r+')
    try {
      if ((await fh.stat()).size < vsize) await fh.truncate(vsize)
    } finally {
      await fh.close()
    }
  }
  return vsize
}

/**
 * Write the image `dl` delivers onto `target`. Verifies the checksum; throws IPA's errors
 * (InvalidImage, ImageDownloadError, ImageChecksumError, ImageWriteError).
 */
export async function writeImage(dl: ImageDownload, target: Target, declared: string | null | undefined, opts: WriteOptions): Promise<WriteResult> {
  const started = Date.now()
  const {log} = opts
  const it = dl.chunks()[Symbol.asyncIterator]()
  let result: WriteResult
  try {
    const {head, done} = await readHead(it, DETECT_BYTES)
    if (head.length === 0) throw new InvalidImage('the image is empty')
    const format = detectFormat(head)
    validateFormat(format, declared, opts.permitted)
    if (format === 'qed' || format === 'luks') {
      // Permitted or not: qed is unsafe (IPA's format_inspector refuses it too), and a LUKS image
      // cannot be opened without its key.
      throw new InvalidImage(`Security: Image failed safety check: ${format === 'qed' ? 'qed images are not supported' : 'the image is LUKS-encrypted'}`)
    }
    log.info('image format detected', {format, declared: declared ?? null})
    const source = rest(head, it, done)
    const spoolDir = opts.spoolDir ?? os.tmpdir()
    if (format === 'raw' || format === 'gpt') {
      if (dl.size !== undefined && target.capacity !== undefined && dl.size > target.capacity) throw new TargetFullError(target.path, dl.size, target.capacity)
      const size = await streamRaw(source, target)
      if (target.capacity !== undefined && size > target.capacity) throw new TargetFullError(target.path, size, target.capacity)
      dl.verify(target.path)
      const {zeroed} = await target.zeroGaps(size, log)
      result = {format, method: 'stream-raw', virtualSize: size, bytesWritten: target.bytesWritten, zeroed, downloaded: dl.stats.bytes, seconds: 0}
    } else if (format === 'qcow2') {
      const q = new Qcow2Stream(target, log, opts.pendingLimit, dl.size)
      try {
        for await (const chunk of source) await q.push(chunk)
        const r = await q.end()
        dl.verify(target.path)
        const {zeroed} = await target.zeroGaps(r.header.virtualSize, log)
        const {header, ...figures} = r
        result = {format, method: 'stream-qcow2', virtualSize: header.virtualSize, bytesWritten: target.bytesWritten, zeroed, downloaded: dl.stats.bytes, seconds: 0, qcow2: figures}
      } catch (err) {
        if (!(err instanceof Qcow2OrderError)) throw err
        await it.return?.(undefined)
        log.warn(`qcow2 image cannot be converted while streaming (${err.message}): downloading it again to a spool file and converting with qemu-img`)
        const again = await opts.reopen()
        const file = await spool(again, again.chunks(), spoolDir, log)
        try {
          const vsize = await convertSpool(file, format, target, log)
          result = {format, method: 'qemu-img', virtualSize: vsize, bytesWritten: vsize, zeroed: 0, downloaded: dl.stats.bytes + again.stats.bytes, seconds: 0}
        } finally {
          await rm(file, {force: true})
        }
      }
    } else {
      const file = await spool(dl, source, spoolDir, log)
      try {
        const vsize = await convertSpool(file, format, target, log)
        result = {format, method: 'qemu-img', virtualSize: vsize, bytesWritten: vsize, zeroed: 0, downloaded: dl.stats.bytes, seconds: 0}
      } finally {
        await rm(file, {force: true})
      }
    }
  } catch (err) {
    await it.return?.(undefined).catch(() => undefined)
    if (err instanceof TargetFullError) throw new ImageWriteError(target.path, 'ENOSPC', '', err.message)
    if (err instanceof RESTError) throw err
    const code = (err as NodeJS.ErrnoException).code
    if (code) throw new ImageWriteError(target.path, code, '', (err as Error).message)
    throw err
  }
  result.seconds = (Date.now() - started) / 1000
  log.info('image written', {target: target.path, ...result})
  return result
}

// ------------------------------------------------------------------------------------------------
// Whole-disk deploy (standby.prepare_image, deploy step write_image)

/** What IPA's StandbyExtension remembers between commands. */
export interface DeployState {
  cachedImageId?: string
  /** null until an image was written (get_partition_uuids then answers {}). */
  partitionUuids: Record<string, unknown> | null
  lastWrite?: WriteResult
  /** What the last prepare_image wrote (image.install_bootloader acts on it). */
  imageType?: 'partition' | 'whole-disk'
}

const states = new WeakMap<object, DeployState>()

/** The deploy state shared by standby.* and the write_image step (keyed by the manager registry). */
export function deployState(key: object): DeployState {
  let s = states.get(key)
  if (!s) {
    s = {partitionUuids: null}
    states.set(key, s)
  }
  return s
}

export interface PrepareContext {
  config: AgentConfig
  log: Logger
  state: DeployState
  /** get_os_install_device through the managers. */
  installDevice: () => Promise<string>
}

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
    await destroyDiskMetadata(device, config.deviceAllowlist, log).catch((e: unknown) => log.warn('could not wipe the partial image', {err: (e as Error).message}))
    throw afterTouch(err)
  } finally {
    await target.close()
    if (target.touched) await rescanDevice(device, log)
  }
}

/**
 * An image refused as invalid after writing had begun (a corrupt qcow2 L2 table after the first
 * one, a truncated qcow2, a qemu-img check failing after a streaming fallback): say what state the
 * disk was left in.
 */
export function afterTouch(err: unknown): unknown {
  if (err instanceof InvalidImage && !/partition tables have been wiped/.test(err.details)) {
    return new InvalidImage(`${err.details} (refused while writing: the disk was partly written and its partition tables have been wiped)`)
  }
  return err
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
    throw new CommandExecutionError(`Unable to find a valid partition table on the disk after writing the image. The image may be corrupted. Error: ${(err as Error).message}`)
  }
  if (!table || table.partitions.length === 0) {
    throw new CommandExecutionError(`No partitions found on the device ${device} after writing the image.`)
  }
  log.debug('partition table found after writing', {device, label: table.label, partitions: table.partitions.length})
}

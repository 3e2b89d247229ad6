/**
 * The byte streamer: the image ImageDownload delivers, onto a Target (a block device, a partition
 * or a regular file). Nothing here knows about deploys, install devices or partition tables.
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
 * The deploys (write.ts, partition.ts) hand writeImage() a deferred Target: the disk is wiped (or
 * partitioned) only at the first write, so every check the image's first bytes and tables allow
 * (format, qcow2 header, L1 and first L2 table, sizes, qemu-img info/check of a spool) runs while
 * the disk is untouched.
 */
import {randomBytes} from 'node:crypto'
import {open, rm} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {CommandFailedError, run, ToolMissingError} from '../../common/exec.js'
import {ImageDownloadError, ImageWriteError, InvalidImage, RESTError} from '../errors.js'
import type {Logger} from '../log.js'
import type {ImageDownload} from './download.js'
import {DETECT_BYTES, detectFormat, validateFormat, type ImageFormat} from './format.js'
import {Qcow2OrderError, Qcow2Stream, type Qcow2Result} from './qcow2.js'
import {BufferPool, isZero, TargetFullError, type Target} from './target.js'

const ZERO_CHECK = 64 * 1024

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
    if (e.filename && path.resolve(e.filename) !== path.resolve(file))
      throw new InvalidImage('Security: Image failed safety check: the image references other files')
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
          const summary = /^.*(errors? were found|could not be checked|check failed).*$/im.exec(`${err.stdout}\n${err.stderr}`)?.[0]
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
        result = {
          format,
          method: 'stream-qcow2',
          virtualSize: header.virtualSize,
          bytesWritten: target.bytesWritten,
          zeroed,
          downloaded: dl.stats.bytes,
          seconds: 0,
          qcow2: figures,
        }
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

/**
 * The write side of image writing: a block device or regular file opened once, written by offset
 * with a few writes in flight (so the download, the qcow2 parsing and the disk overlap), and a
 * record of which parts were written so the rest can be made to read as zeros afterwards without
 * rewriting what already is zero.
 */
import {open, stat, type FileHandle} from 'node:fs/promises'
import {blockDeviceBytes} from '../disk/partitions.js'
import type {Logger} from '../log.js'

const MAX_IN_FLIGHT = 4
const ZERO_PIECE = 1024 * 1024
const CHECK_PIECE = 1024 * 1024
const CHECK_PARALLEL = 4
/** Size of the reusable write buffers (BufferPool). */
export const BLOCK_SIZE = 2 * 1024 * 1024

/**
 * A few large buffers reused for writes, so writing gigabytes allocates (and leaves for the
 * garbage collector) almost nothing: peak RSS stays flat whatever the image size.
 */
export class BufferPool {
  private free: Buffer[] = []
  private waiters: ((b: Buffer) => void)[] = []
  private made = 0
  constructor(
    private readonly max = MAX_IN_FLIGHT + 2,
    readonly size = BLOCK_SIZE,
  ) {}

  async get(): Promise<Buffer> {
    const b = this.free.pop()
    if (b) return b
    if (this.made < this.max) {
      this.made++
      return Buffer.allocUnsafe(this.size)
    }
    return new Promise((resolve) => this.waiters.push(resolve))
  }

  release(b: Buffer): void {
    const w = this.waiters.shift()
    if (w) w(b)
    else this.free.push(b)
  }
}

/** Which `unit`-sized pieces of the target were written (a growable bitmap). */
export class Coverage {
  private bits = new Uint8Array(1024)
  constructor(readonly unit: number) {}

  /** Mark [start, end) written; only units entirely inside the range (or reaching `limit`) count. */
  mark(start: number, end: number, limit = Infinity): void {
    const first = Math.ceil(start / this.unit)
    const last = end >= limit ? Math.ceil(end / this.unit) : Math.floor(end / this.unit)
    for (let u = first; u < last; u++) this.set(u)
  }

  private set(u: number): void {
    const byte = u >> 3
    if (byte >= this.bits.length) {
      const grown = new Uint8Array(Math.max(byte + 1, this.bits.length * 2))
      grown.set(this.bits)
      this.bits = grown
    }
    this.bits[byte]! |= 1 << (u & 7)
  }

  has(u: number): boolean {
    const byte = u >> 3
    return byte < this.bits.length && (this.bits[byte]! & (1 << (u & 7))) !== 0
  }

  /** Maximal byte ranges within [0, size) with no written unit. */
  *gaps(size: number): Generator<[number, number]> {
    const units = Math.ceil(size / this.unit)
    let u = 0
    while (u < units) {
      if (this.has(u)) {
        u++
        continue
      }
      const a = u
      while (u < units && !this.has(u)) u++
      yield [a * this.unit, Math.min(size, u * this.unit)]
    }
  }
}

export function isZero(buf: Buffer): boolean {
  // Compare against a shared zero buffer piece by piece (memcmp speed).
  for (let off = 0; off < buf.length; off += ZERO.length) {
    const part = buf.subarray(off, Math.min(buf.length, off + ZERO.length))
    if (!part.equals(ZERO.subarray(0, part.length))) return false
  }
  return true
}
const ZERO = Buffer.alloc(ZERO_PIECE)

/**
 * The target of an image write. A deferred target (Target.deferred / Target.deferredAt) is not
 * opened, read or written until the image has passed every check that can be made from its first
 * bytes and tables: its `beforeFirstWrite` hook (wipe the partition tables, partition the disk…)
 * runs at the first write, zero check or explicit open(), never earlier. `touched` tells whether
 * that happened.
 */
export class Target {
  private inFlight: Promise<unknown>[] = []
  private failure: unknown
  private readonly checkPool = new BufferPool(MAX_IN_FLIGHT, ZERO_PIECE)
  private fh?: FileHandle
  private opening?: Promise<FileHandle>
  private opened: boolean
  bytesWritten = 0
  coverage: Coverage

  private constructor(
    readonly path: string,
    fh: FileHandle | undefined,
    readonly isBlockDevice: boolean,
    /** Capacity in bytes (block device), or undefined for a regular file (grows). */
    readonly capacity: number | undefined,
    private readonly beforeFirstWrite?: () => Promise<void>,
  ) {
    this.fh = fh
    this.opened = fh !== undefined
    this.coverage = new Coverage(64 * 1024)
  }

  private static async probe(path: string): Promise<{isBlock: boolean; capacity: number | undefined}> {
    const st = await stat(path)
    const isBlock = st.isBlockDevice()
    if (!isBlock && !st.isFile()) throw new Error(`${path} is neither a block device nor a regular file`)
    const capacity = isBlock ? await blockDeviceBytes(path) : undefined
    return {isBlock, capacity}
  }

  static async open(path: string): Promise<Target> {
    const {isBlock, capacity} = await Target.probe(path)
    const fh = await open(path, 'r+')
    return new Target(path, fh, isBlock, capacity)
  }

  /** An existing device or file, sized now, opened only after `beforeFirstWrite` has run. */
  static async deferred(path: string, beforeFirstWrite: () => Promise<void>): Promise<Target> {
    const {isBlock, capacity} = await Target.probe(path)
    return new Target(path, undefined, isBlock, capacity, beforeFirstWrite)
  }

  /** A device that `beforeFirstWrite` creates (a partition not made yet), of a known size. */
  static deferredAt(path: string, capacity: number, beforeFirstWrite: () => Promise<void>): Target {
    return new Target(path, undefined, true, capacity, beforeFirstWrite)
  }

  /** Whether the target has been opened (for a deferred target: whether beforeFirstWrite ran). */
  get touched(): boolean {
    return this.opened
  }

  /** Run beforeFirstWrite (once) and open the target; every read and write goes through here. */
  async open(): Promise<FileHandle> {
    if (this.fh) return this.fh
    this.opening ??= (async () => {
      this.opened = true
      await this.beforeFirstWrite?.()
      const fh = await open(this.path, 'r+')
      this.fh = fh
      return fh
    })()
    return this.opening
  }

  /** Use a different coverage granularity (the qcow2 cluster size); call before any write. */
  setUnit(unit: number): void {
    this.coverage = new Coverage(unit)
  }

  /**
   * Queue a write of `buf` at `pos`; resolves when there is room for another, with `done` settling
   * when this write has completed (then `buf` may be reused).
   */
  async write(buf: Buffer, pos: number, limit = Infinity): Promise<{done: Promise<unknown>}> {
    if (this.failure) throw this.failure
    if (this.capacity !== undefined && pos + buf.length > this.capacity) {
      throw new TargetFullError(this.path, pos + buf.length, this.capacity)
    }
    const fh = this.fh ?? (await this.open())
    const p = fh.write(buf, 0, buf.length, pos).then(
      () => {
        this.bytesWritten += buf.length
        this.coverage.mark(pos, pos + buf.length, limit)
      },
      (err: unknown) => {
        this.failure ??= err
      },
    )
    this.inFlight.push(p)
    if (this.inFlight.length >= MAX_IN_FLIGHT) await this.inFlight.shift()
    if (this.failure) throw this.failure
    return {done: p}
  }

  /**
   * Make [pos, pos+len) read as zeros (read it; rewrite only non-zero pieces), queued like a write
   * so it overlaps the download. Used for holes the stream already revealed (raw zero blocks).
   */
  async ensureZero(pos: number, len: number, limit = Infinity): Promise<void> {
    if (this.failure) throw this.failure
    const fh = this.fh ?? (await this.open())
    const p = (async () => {
      const buf = await this.checkPool.get()
      try {
        for (let off = pos; off < pos + len; off += buf.length) {
          const n = Math.min(buf.length, pos + len - off)
          const {bytesRead} = await fh.read(buf, 0, n, off)
          if (bytesRead > 0 && !isZero(buf.subarray(0, bytesRead))) await fh.write(ZERO, 0, bytesRead, off)
        }
      } finally {
        this.checkPool.release(buf)
      }
      this.coverage.mark(pos, pos + len, limit)
    })().catch((err: unknown) => {
      this.failure ??= err
    })
    this.inFlight.push(p)
    if (this.inFlight.length >= MAX_IN_FLIGHT) await this.inFlight.shift()
    if (this.failure) throw this.failure
  }

  /** Wait for every queued write. */
  async drain(): Promise<void> {
    await Promise.all(this.inFlight)
    this.inFlight = []
    if (this.failure) throw this.failure
  }

  /**
   * Make [0, size) read back as zeros wherever nothing was written: read each gap and rewrite
   * only the pieces that are not already zero (a cleaned disk costs a read, never a write).
   */
  async zeroGaps(size: number, log?: Logger): Promise<{checked: number; zeroed: number}> {
    await this.drain()
    const fh = await this.open()
    let checked = 0
    let zeroed = 0
    // Pieces of at most CHECK_PIECE bytes, CHECK_PARALLEL reads in flight (each with its buffer).
    const pieces = (function* (gaps: Iterable<[number, number]>): Generator<[number, number]> {
      for (const [a, b] of gaps) for (let off = a; off < b; off += CHECK_PIECE) yield [off, Math.min(CHECK_PIECE, b - off)]
    })(this.coverage.gaps(size))
    const worker = async (): Promise<void> => {
      const buf = Buffer.allocUnsafe(CHECK_PIECE)
      for (const [off, len] of pieces) {
        const {bytesRead} = await fh.read(buf, 0, len, off)
        checked += len
        if (bytesRead === 0) continue // past the end of a regular file: reads as zeros already
        if (!isZero(buf.subarray(0, bytesRead))) {
          for (let o = 0; o < bytesRead; o += ZERO.length) {
            const n = Math.min(ZERO.length, bytesRead - o)
            await fh.write(ZERO, 0, n, off + o)
          }
          zeroed += bytesRead
        }
      }
    }
    await Promise.all(Array.from({length: CHECK_PARALLEL}, worker))
    if (!this.isBlockDevice) {
      // A regular file shorter than the image must still be as long as the image.
      const st = await fh.stat()
      if (st.size < size) await fh.truncate(size)
    }
    log?.debug('unwritten ranges checked for zeros', {checked, zeroed})
    return {checked, zeroed}
  }

  async sync(): Promise<void> {
    await this.drain()
    await this.fh?.datasync()
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.inFlight)
    await this.opening?.catch(() => undefined)
    await this.fh?.close().catch(() => undefined)
    this.fh = undefined
  }
}

export class TargetFullError extends Error {
  constructor(
    readonly path: string,
    readonly needed: number,
    readonly capacity: number,
  ) {
    super(`the image needs ${needed} bytes but ${path} holds only ${capacity}`)
    this.name = 'TargetFullError'
  }
}

/**
 * Streaming qcow2 → raw: the image is read once, front to back, and never held in memory or on
 * tmpfs. The header names the L1 table; the L1 table names the L2 tables; each L2 table maps data
 * clusters (host offset → guest offset). As clusters stream past, metadata is parsed and every
 * data cluster whose mapping is known is written at its guest offset (pwrite). qemu-img writes a
 * cluster's L2 table before the cluster itself, so with its images nothing waits.
 *
 * Clusters that arrive before the table naming them are kept in a bounded pending area; when that
 * overflows (an image whose L1 table was moved to its end, internal snapshots…) a Qcow2OrderError
 * tells the caller to fall back to spooling + `qemu-img convert`.
 *
 * Supported: versions 2 and 3, zlib-compressed clusters (inflateRaw), zero clusters and
 * unallocated clusters (left unwritten: the caller zeroes what is not already zero). Refused:
 * backing files and external data files (security: IPA's format_inspector refuses both),
 * encryption, extended L2 entries, zstd compression, unknown incompatible features, and
 * inconsistent metadata: tables or data clusters on the header or on other metadata (a table
 * pointing at itself), unaligned or past the end of the file, an L1 table too small. The header,
 * refcount table and L1 table are checked as they arrive, and each L2 table as a whole before any
 * cluster it maps is written; nothing reaches the target (ensureZero included) before the first
 * L2 table has passed, so with qemu-img's layout every check of the first 512 MiB (64 KiB
 * clusters) precedes the first write. docs/deploy.md "Checks before the first byte".
 */
import {constants as zc, inflateRawSync} from 'node:zlib'
import {InvalidImage} from '../errors.js'
import type {Logger} from '../log.js'
import {BufferPool, isZero, TargetFullError, type Target} from './target.js'

const QCOW2_MAGIC = 0x514649fb
const MAX_L1_BYTES = 32 * 1024 * 1024
/** qemu's QCOW_MAX_REFTABLE_SIZE. */
const MAX_REFTABLE_BYTES = 8 * 1024 * 1024
const TWO32 = 2 ** 32
/** Data clusters known but not yet streamed past (~50 bytes each). */
const MAX_MAPPED_AHEAD = 1_000_000

export interface Qcow2Header {
  version: number
  clusterBits: number
  clusterSize: number
  virtualSize: number
  l1Size: number
  l1Offset: number
  refcountTableOffset: number
  refcountTableClusters: number
  nbSnapshots: number
  snapshotsOffset: number
  incompatible: number
  headerLength: number
}

/** The caller should fall back to spool + qemu-img convert (the image's layout defeats streaming). */
export class Qcow2OrderError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'Qcow2OrderError'
  }
}

function refuse(why: string): never {
  throw new InvalidImage(`Security: Image failed safety check: ${why}`)
}

/** Inconsistent metadata: the image would convert to junk (or worse), so it is refused. */
export function corrupt(why: string): never {
  throw new InvalidImage(`qcow2 image is corrupt: ${why}`)
}

function u64(buf: Buffer, off: number): number {
  const v = buf.readUInt32BE(off) * TWO32 + buf.readUInt32BE(off + 4)
  if (!Number.isSafeInteger(v)) throw new InvalidImage(`qcow2 header field at byte ${off} is out of range`)
  return v
}

/** Host offsets are 56 bits wide in qcow2 (bits 9-55 of a table entry). */
const MAX_HOST_OFFSET = 2 ** 56
/** Incompatible feature bits this converter knows: dirty, corrupt, external data file, compression type, extended L2. */
const KNOWN_INCOMPATIBLE = 0x1f
const EXT_END = 0
const EXT_DATA_FILE = 0x44415441
const EXT_CRYPTO = 0x0537be77

/**
 * Parse and check the header (`buf` = at least the first cluster, or all there is). Everything
 * the header alone can tell is checked here, before a byte of the target changes: version,
 * backing file, external data file, encryption (crypt_method and the crypto header extension),
 * compression type, unknown incompatible features, cluster_bits, refcount_order, the L1 table
 * against the virtual size, and the header, L1 table, refcount table and snapshot table not
 * overlapping each other or lying past the end of the file (`fileSize`, when the server said).
 */
export function parseQcow2Header(buf: Buffer, fileSize?: number): Qcow2Header {
  if (buf.length < 72 || buf.readUInt32BE(0) !== QCOW2_MAGIC) throw new InvalidImage('not a qcow2 image (bad magic)')
  const version = buf.readUInt32BE(4)
  if (version !== 2 && version !== 3) throw new InvalidImage(`qcow2 version ${version} is not supported (only 2 and 3)`)
  const backingOffset = u64(buf, 8)
  if (backingOffset !== 0) refuse('qcow2 image has a backing file')
  const clusterBits = buf.readUInt32BE(20)
  if (clusterBits < 9 || clusterBits > 21) throw new InvalidImage(`qcow2 cluster_bits ${clusterBits} is out of range (9-21)`)
  const virtualSize = u64(buf, 24)
  if (buf.readUInt32BE(32) !== 0) refuse('qcow2 image is encrypted')
  const l1Size = buf.readUInt32BE(36)
  const l1Offset = u64(buf, 40)
  const refcountTableOffset = u64(buf, 48)
  const refcountTableClusters = buf.readUInt32BE(56)
  const nbSnapshots = buf.readUInt32BE(60)
  const snapshotsOffset = u64(buf, 64)
  let incompatible = 0
  let headerLength = 72
  let compressionType = 0
  const clusterSize = 2 ** clusterBits
  if (version === 3) {
    if (buf.length < 104) throw new InvalidImage('qcow2 v3 header is truncated')
    if (buf.readUInt32BE(72) !== 0) throw new InvalidImage('qcow2 image uses unknown incompatible features')
    incompatible = buf.readUInt32BE(76)
    headerLength = buf.readUInt32BE(100)
    if (headerLength < 104 || headerLength > Math.min(buf.length, clusterSize)) throw new InvalidImage(`qcow2 header_length ${headerLength} is invalid`)
    if (headerLength > 104) compressionType = buf[104]!
    const refcountOrder = buf.readUInt32BE(96)
    if (refcountOrder > 6) corrupt(`refcount_order ${refcountOrder} is out of range (0-6)`)
  }
  if (incompatible & 0x4) refuse('qcow2 image uses an external data file')
  if (incompatible & ~KNOWN_INCOMPATIBLE) throw new InvalidImage(`qcow2 image uses unknown incompatible features (0x${incompatible.toString(16)})`)
  if (incompatible & 0x2) throw new InvalidImage('qcow2 image is marked corrupt')
  if (incompatible & 0x10) {
    throw new InvalidImage('qcow2 images with extended L2 entries (subclusters, extended_l2=on) are not supported: convert the image without extended_l2')
  }
  if (incompatible & 0x8 && compressionType !== 0) {
    throw new InvalidImage(
      `qcow2 compression type ${compressionType === 1 ? 'zstd' : compressionType} is not supported (only zlib): convert the image with compression_type=zlib`,
    )
  }
  if (l1Size * 8 > MAX_L1_BYTES) throw new InvalidImage(`qcow2 L1 table is too large (${l1Size} entries)`)
  const l2Coverage = clusterSize * (clusterSize / 8)
  if (l1Size < Math.ceil(virtualSize / l2Coverage)) corrupt(`the L1 table (${l1Size} entries) is too small for the virtual size ${virtualSize}`)
  // Header extensions (all inside the first cluster): refuse an external data file name even
  // without the feature bit, and the crypto header even without crypt_method.
  const extEnd = Math.min(buf.length, clusterSize)
  for (let off = version === 3 ? headerLength : 72; off + 8 <= extEnd; ) {
    const type = buf.readUInt32BE(off)
    const len = buf.readUInt32BE(off + 4)
    if (type === EXT_END) break
    if (off + 8 + len > extEnd) corrupt(`header extension 0x${type.toString(16)} at byte ${off} runs past the first cluster`)
    if (type === EXT_DATA_FILE) refuse('qcow2 image names an external data file')
    if (type === EXT_CRYPTO) refuse('qcow2 image is encrypted')
    off += 8 + Math.ceil(len / 8) * 8
  }
  // Where the header's tables lie: aligned, past the header, inside the file, apart.
  const limit = fileSize ?? MAX_HOST_OFFSET
  const ranges: {what: string; start: number; end: number}[] = [{what: 'header', start: 0, end: clusterSize}]
  const place = (what: string, off: number, bytes: number): void => {
    if (off % clusterSize !== 0) corrupt(`the ${what} offset ${off} is not cluster-aligned`)
    if (off === 0) corrupt(`the ${what} overlaps the header`)
    const end = off + Math.max(1, Math.ceil(bytes / clusterSize)) * clusterSize
    if (off >= limit || end > MAX_HOST_OFFSET) corrupt(`the ${what} at offset ${off} lies past the end of the image (${limit} bytes)`)
    for (const r of ranges) if (off < r.end && r.start < end) corrupt(`the ${what} at offset ${off} overlaps the ${r.what}`)
    ranges.push({what, start: off, end})
  }
  if (l1Size > 0) place('L1 table', l1Offset, l1Size * 8)
  if (refcountTableClusters === 0) corrupt('the image has no refcount table')
  if (refcountTableClusters * clusterSize > MAX_REFTABLE_BYTES)
    corrupt(`the refcount table (${refcountTableClusters} clusters) is larger than qemu allows (8 MiB)`)
  place('refcount table', refcountTableOffset, refcountTableClusters * clusterSize)
  if (nbSnapshots > 65536) corrupt(`${nbSnapshots} snapshots is more than qcow2 allows (65536)`)
  if (nbSnapshots > 0) place('snapshot table', snapshotsOffset, 1)
  return {
    version,
    clusterBits,
    clusterSize,
    virtualSize,
    l1Size,
    l1Offset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatible,
    headerLength,
  }
}

interface CompressedBlob {
  start: number
  end: number
  guest: number
}

interface Meta {
  kind: 'l1' | 'l2' | 'rt'
  /** l1/rt: which cluster of the L1/refcount table; l2: the L1 index it serves. */
  index: number
}

export interface Qcow2Result {
  header: Qcow2Header
  dataClusters: number
  compressedClusters: number
  zeroClusters: number
  maxPendingBytes: number
}

/**
 * Feed the image with push(), then end(). Writes go to `target` at guest offsets; the caller makes
 * the unwritten parts read as zeros (target.zeroGaps) afterwards.
 */
export class Qcow2Stream {
  header?: Qcow2Header
  private cs = 0
  /** Bytes before the header could be parsed. */
  private carry: Buffer[] = []
  private carryLen = 0
  /**
   * Clusters that straddle socket chunks are assembled in one of two reused buffers (never the
   * one `prev` points at); whole clusters inside a chunk are processed in place. Nothing per
   * byte is allocated, which keeps RSS flat.
   */
  private asm: [Buffer, Buffer] = [Buffer.alloc(0), Buffer.alloc(0)]
  private asmIdx = 0
  private asmFill = 0
  private idx = 0 // next host cluster index to process
  private readonly meta = new Map<number, Meta>()
  private readonly data = new Map<number, number>()
  private readonly compByEnd = new Map<number, CompressedBlob[]>()
  private readonly compStart = new Set<number>()
  private readonly pending = new Map<number, Buffer>()
  private pendingBytes = 0
  private l1?: Buffer
  private l1Clusters = 0
  private l1Seen = 0
  private l1Done = false
  private outstandingL2 = 0
  private prev?: {idx: number; buf: Buffer}
  private run?: {start: number; buf: Buffer; len: number}
  private direct?: {idx: number; len: number; buf: Buffer; at: number}
  private readonly pool = new BufferPool()
  private readonly stats = {dataClusters: 0, compressedClusters: 0, zeroClusters: 0, maxPendingBytes: 0}
  /** Every metadata cluster known so far (host cluster index → what it is): nothing may map data there. */
  private readonly owners = new Map<number, string>()
  /**
   * Until the first L2 table has been checked nothing touches the target: the zero checks the L1
   * table asks for wait here (a deferred target is wiped at its first write or zero check).
   */
  private zeroQueue: [number, number][] = []
  private gateOpen = false

  /** `fileSize`: the image's length when the server announced it (offsets past it are refused). */
  constructor(
    private readonly target: Target,
    private readonly log: Logger,
    private readonly pendingLimit = 64 * 1024 * 1024,
    private readonly fileSize?: number,
  ) {}

  async push(chunk: Buffer): Promise<void> {
    if (!this.header) {
      this.carry.push(chunk)
      this.carryLen += chunk.length
      if (this.carryLen < 512) return
      const head = Buffer.concat(this.carry)
      this.carry = [head]
      const bits = head.readUInt32BE(20)
      const cs = bits >= 9 && bits <= 21 ? 2 ** bits : 512
      if (head.length < cs) return
      this.start(parseQcow2Header(head.subarray(0, cs), this.fileSize))
      this.carry = []
      this.carryLen = 0
      chunk = head
    }
    await this.feed(chunk)
  }

  private async feed(chunk: Buffer): Promise<void> {
    const cs = this.cs
    let off = 0
    while (off < chunk.length) {
      if (this.asmFill === 0 && chunk.length - off >= cs) {
        await this.processCluster(this.idx++, chunk.subarray(off, off + cs))
        off += cs
        continue
      }
      if (this.asmFill === 0) await this.beginDirect(this.idx)
      const n = Math.min(cs - this.asmFill, chunk.length - off)
      const d = this.direct
      if (d) {
        const m = Math.min(n, d.len - this.asmFill)
        if (m > 0) chunk.copy(d.buf, d.at + this.asmFill, off, off + m)
      } else {
        chunk.copy(this.asm[this.asmIdx]!, this.asmFill, off, off + n)
      }
      this.asmFill += n
      off += n
      if (this.asmFill === cs) {
        if (d) {
          this.idx++
          await this.finishDirect(cs)
        } else {
          await this.processCluster(this.idx++, this.asm[this.asmIdx]!)
          this.asmIdx ^= 1
        }
        this.asmFill = 0
      }
    }
  }

  /**
   * A data cluster whose guest offset is already known (its L2 table came first, as qemu-img
   * writes them) and that nothing else refers to is assembled from the socket's chunks straight
   * into the write run, not into the assembly buffer first: one copy of the image fewer.
   */
  private async beginDirect(idx: number): Promise<void> {
    const guest = this.data.get(idx)
    if (guest === undefined || this.meta.has(idx) || this.compByEnd.has(idx) || this.compStart.has(idx)) return
    const len = Math.min(this.cs, this.header!.virtualSize - guest)
    if (len <= 0 || len > this.pool.size) return
    let run = this.run
    if (!run || run.start + run.len !== guest || run.len + len > run.buf.length) {
      await this.flushRun()
      run = this.run = {start: guest, buf: await this.pool.get(), len: 0}
    }
    this.direct = {idx, len, buf: run.buf, at: run.len}
  }

  /** The direct cluster is complete (`filled` bytes of it arrived): keep it in the run, or drop it if all zero. */
  private async finishDirect(filled: number): Promise<void> {
    const d = this.direct!
    this.direct = undefined
    this.data.delete(d.idx)
    const run = this.run!
    const len = Math.min(d.len, filled)
    if (len > 0 && !isZero(d.buf.subarray(d.at, d.at + len))) {
      run.len += len
    } else if (run.len === 0) {
      // A data cluster full of zeros: left to the zero pass, as in writeData.
      this.run = undefined
      this.pool.release(run.buf)
    } else {
      await this.flushRun()
    }
    // Its bytes are not kept: nothing may refer to this cluster again (a table that does sends
    // the image down the spool path through Qcow2OrderError).
    this.prev = undefined
    this.dropUnreferenced()
  }

  async end(): Promise<Qcow2Result> {
    if (!this.header) {
      if (this.carryLen === 0) throw new InvalidImage('the image is empty')
      const head = Buffer.concat(this.carry)
      this.start(parseQcow2Header(head, this.fileSize))
      await this.feed(head)
    }
    if (this.asmFill > 0) {
      // The file ends inside a cluster (compressed data packed to the sector).
      if (this.direct) {
        this.idx++
        await this.finishDirect(this.asmFill)
      } else {
        await this.processCluster(this.idx++, this.asm[this.asmIdx]!.subarray(0, this.asmFill))
      }
      this.asmFill = 0
    }
    // Compressed blobs whose rounded-up last sector lies past the end of the file.
    for (const [endIdx, blobs] of this.compByEnd) {
      if (endIdx < this.idx) continue
      for (const b of blobs) await this.writeCompressed(b, undefined, true)
    }
    if (this.data.size > 0) {
      const [host] = this.data.keys()
      throw new InvalidImage(`qcow2 image is truncated: data cluster at host offset ${host! * this.cs} is missing`)
    }
    if (!this.l1Done || this.outstandingL2 > 0) throw new InvalidImage('qcow2 image is truncated: an L1 or L2 table is missing')
    await this.openGate()
    await this.flushRun()
    await this.target.drain()
    return {header: this.header!, ...this.stats}
  }

  private start(h: Qcow2Header): void {
    if (this.target.capacity !== undefined && h.virtualSize > this.target.capacity) {
      throw new TargetFullError(this.target.path, h.virtualSize, this.target.capacity)
    }
    this.header = h
    this.cs = h.clusterSize
    this.asm = [Buffer.alloc(h.clusterSize), Buffer.alloc(h.clusterSize)]
    this.target.setUnit(h.clusterSize)
    this.l1Clusters = Math.max(1, Math.ceil((h.l1Size * 8) / h.clusterSize))
    // parseQcow2Header checked that these do not overlap.
    this.owners.set(0, 'header')
    if (h.l1Size === 0) {
      this.l1Done = true
      this.l1 = Buffer.alloc(0)
    } else {
      this.l1 = Buffer.alloc(h.l1Size * 8)
      const first = h.l1Offset / h.clusterSize
      for (let i = 0; i < this.l1Clusters; i++) {
        this.meta.set(first + i, {kind: 'l1', index: i})
        this.owners.set(first + i, 'L1 table')
      }
    }
    const rt = h.refcountTableOffset / h.clusterSize
    for (let i = 0; i < h.refcountTableClusters; i++) {
      this.meta.set(rt + i, {kind: 'rt', index: i})
      this.owners.set(rt + i, 'refcount table')
    }
    if (h.nbSnapshots > 0) this.owners.set(h.snapshotsOffset / h.clusterSize, 'snapshot table')
    this.log.info('qcow2 image', {version: h.version, cluster_size: h.clusterSize, virtual_size: h.virtualSize, snapshots: h.nbSnapshots})
  }

  private async processCluster(idx: number, buf: Buffer): Promise<void> {
    let known = idx === 0
    const m = this.meta.get(idx)
    if (m) {
      known = true
      this.meta.delete(idx)
      await this.handleMeta(m, buf, idx)
    }
    const guest = this.data.get(idx)
    if (guest !== undefined) {
      known = true
      this.data.delete(idx)
      await this.writeData(guest, buf)
    }
    const blobs = this.compByEnd.get(idx)
    if (blobs) {
      this.compByEnd.delete(idx)
      for (const b of blobs) await this.writeCompressed(b, {idx, buf})
    }
    if (this.compStart.delete(idx) || blobs) known = true
    if (!known && (!this.l1Done || this.outstandingL2 > 0)) {
      // Possibly data for a table not seen yet: keep it (bounded).
      this.pending.set(idx, Buffer.from(buf))
      this.pendingBytes += buf.length
      this.stats.maxPendingBytes = Math.max(this.stats.maxPendingBytes, this.pendingBytes)
      if (this.pendingBytes > this.pendingLimit) {
        throw new Qcow2OrderError(`more than ${this.pendingLimit / 1048576} MiB of qcow2 clusters arrived before the tables that map them`)
      }
    }
    this.prev = {idx, buf}
    this.dropUnreferenced()
  }

  private dropUnreferenced(): void {
    if (this.l1Done && this.outstandingL2 === 0 && this.compByEnd.size === 0 && this.pending.size > 0) {
      // Every table is known and nothing still needs old bytes: what is left is unreferenced.
      this.pending.clear()
      this.pendingBytes = 0
    }
  }

  /** Record metadata cluster `idx` (refused if it is already something else, or past the file). */
  private claim(idx: number, what: string, ref: string): void {
    const off = idx * this.cs
    if (this.fileSize !== undefined && off >= this.fileSize)
      corrupt(`${ref} points at the ${what} at offset ${off}, past the end of the image (${this.fileSize} bytes)`)
    const other = this.owners.get(idx)
    if (other) corrupt(`${ref} points at offset ${off} as a ${what}, but that cluster is the ${other}${other === what ? ' already' : ''}`)
    this.owners.set(idx, what)
  }

  /** The L1 table's zero checks run once the first L2 table has been checked (or there is none). */
  private async openGate(): Promise<void> {
    if (this.gateOpen) return
    this.gateOpen = true
    const queue = this.zeroQueue
    this.zeroQueue = []
    for (const [start, len] of queue) await this.target.ensureZero(start, len, this.header!.virtualSize)
  }

  private async handleMeta(m: Meta, buf: Buffer, _idx: number): Promise<void> {
    if (m.kind === 'rt') {
      this.parseRefcountTable(m.index, buf)
      return
    }
    if (m.kind === 'l1') {
      const start = m.index * this.cs
      buf.copy(this.l1!, start, 0, Math.min(buf.length, this.l1!.length - start))
      if (++this.l1Seen === this.l1Clusters) await this.parseL1()
      return
    }
    this.outstandingL2--
    await this.parseL2(m.index, buf)
  }

  /** Refcount blocks are metadata too: no table may map data onto them. */
  private parseRefcountTable(i: number, buf: Buffer): void {
    const per = this.cs / 8
    for (let k = 0; k * 8 + 8 <= buf.length; k++) {
      const hi = buf.readUInt32BE(k * 8)
      const lo = buf.readUInt32BE(k * 8 + 4)
      if (hi === 0 && lo === 0) continue
      if (hi >= 2 ** 24 || lo % this.cs !== 0) corrupt(`refcount table entry ${i * per + k} (${hi * TWO32 + lo}) is not a cluster-aligned offset`)
      const off = hi * TWO32 + lo
      const idx = off / this.cs
      if (this.data.has(idx)) corrupt(`refcount table entry ${i * per + k} points at offset ${off}, which an L2 table maps as data`)
      this.claim(idx, 'refcount block', `refcount table entry ${i * per + k}`)
    }
  }

  private async parseL1(): Promise<void> {
    const l1 = this.l1!
    this.l1Done = true
    const l2Coverage = this.cs * (this.cs / 8)
    const vsize = this.header!.virtualSize
    // First every entry is checked (nothing has been written yet): aligned, inside the file, not
    // the header, the L1 or refcount table, a refcount block or another L2 table.
    for (let j = 0; j < l1.length / 8 && j * l2Coverage < vsize; j++) {
      const hi = l1.readUInt32BE(j * 8)
      const lo = l1.readUInt32BE(j * 8 + 4)
      const off = (hi & 0x00ffffff) * TWO32 + (lo & 0xfffffe00)
      if (off === 0) continue
      if (off < this.cs) corrupt(`L1 entry ${j} points at offset ${off}, inside the header`)
      if (off % this.cs !== 0) corrupt(`L1 entry ${j} points at offset ${off}, which is not cluster-aligned`)
      this.claim(off / this.cs, 'L2 table', `L1 entry ${j}`)
    }
    for (let j = 0; j < l1.length / 8; j++) {
      if (j * l2Coverage >= vsize) break
      const hi = l1.readUInt32BE(j * 8)
      const lo = l1.readUInt32BE(j * 8 + 4)
      const off = (hi & 0x00ffffff) * TWO32 + (lo & 0xfffffe00)
      if (off === 0) {
        // No L2 table: the whole region reads as zeros. Check the disk (overlapping the stream)
        // once the first L2 table has passed its checks.
        const start = j * l2Coverage
        const len = Math.min(l2Coverage, vsize - start)
        if (this.gateOpen) await this.target.ensureZero(start, len, vsize)
        else this.zeroQueue.push([start, len])
        continue
      }
      const l2idx = off / this.cs
      if (l2idx >= this.idx) {
        if (this.data.has(l2idx)) corrupt(`the L2 table at offset ${off} is also mapped as data`)
        this.meta.set(l2idx, {kind: 'l2', index: j})
        this.outstandingL2++
      } else {
        const past = this.pending.get(l2idx)
        if (!past) throw new Qcow2OrderError(`the qcow2 L2 table at ${off} precedes the L1 table that names it`)
        await this.parseL2(j, past)
      }
    }
    if (this.outstandingL2 === 0) await this.openGate()
  }

  /**
   * Every entry of an L2 table, before any cluster it maps is written: data must not lie on
   * metadata (the header, the L1/refcount tables, refcount blocks, any L2 table — itself
   * included), must be cluster-aligned and inside the file.
   */
  private checkL2(j: number, table: Buffer): void {
    const cs = this.cs
    const bits = this.header!.clusterBits
    const l2Coverage = cs * (cs / 8)
    const vsize = this.header!.virtualSize
    const x = 62 - (bits - 8)
    const hiOffMask = 2 ** (x - 32) - 1
    const sectorsMask = 2 ** (bits - 8) - 1
    const limit = this.fileSize ?? MAX_HOST_OFFSET
    for (let k = 0; k < cs / 8 && k * 8 + 8 <= table.length; k++) {
      const guest = j * l2Coverage + k * cs
      if (guest >= vsize) break
      const hi = table.readUInt32BE(k * 8)
      const lo = table.readUInt32BE(k * 8 + 4)
      const where = `the L2 table for guest offset ${guest}`
      if (hi & 0x40000000) {
        const start = (hi & hiOffMask) * TWO32 + lo
        const nb = ((hi >>> (x - 32)) & sectorsMask) + 1
        const end = start + nb * 512 - (start % 512)
        if (start < cs) corrupt(`${where} maps compressed data at offset ${start}, inside the header`)
        if (start >= limit) corrupt(`${where} maps compressed data at offset ${start}, past the end of the image (${limit} bytes)`)
        for (let c = Math.floor(start / cs); c <= Math.floor((end - 1) / cs); c++) {
          const other = this.owners.get(c)
          if (other) corrupt(`${where} maps compressed data at offset ${start} onto the ${other}`)
        }
        continue
      }
      const off = (hi & 0x00ffffff) * TWO32 + (lo & 0xfffffe00)
      if (off === 0 || (lo & 1) === 1) continue
      if (off < cs) corrupt(`${where} maps data at offset ${off}, inside the header`)
      if (off % cs !== 0) corrupt(`${where} maps data at offset ${off}, which is not cluster-aligned`)
      if (off >= limit) corrupt(`${where} maps data at offset ${off}, past the end of the image (${limit} bytes)`)
      const other = this.owners.get(off / cs)
      if (other) corrupt(`${where} maps data at offset ${off}, which is the ${other}`)
    }
  }

  private async parseL2(j: number, table: Buffer): Promise<void> {
    this.checkL2(j, table)
    await this.openGate()
    const cs = this.cs
    const bits = this.header!.clusterBits
    const l2Coverage = cs * (cs / 8)
    const vsize = this.header!.virtualSize
    const x = 62 - (bits - 8) // compressed: offset bits
    const hiOffMask = 2 ** (x - 32) - 1
    const sectorsMask = 2 ** (bits - 8) - 1
    // Runs of zero/unallocated clusters are checked on the disk right away (ensureZero).
    let zeroStart = -1
    const endZeroRun = async (end: number): Promise<void> => {
      if (zeroStart < 0) return
      await this.target.ensureZero(zeroStart, Math.min(end, vsize) - zeroStart, vsize)
      zeroStart = -1
    }
    for (let k = 0; k < cs / 8 && k * 8 + 8 <= table.length; k++) {
      const guest = j * l2Coverage + k * cs
      if (guest >= vsize) break
      const hi = table.readUInt32BE(k * 8)
      const lo = table.readUInt32BE(k * 8 + 4)
      if (hi & 0x40000000) {
        await endZeroRun(guest)
        const start = (hi & hiOffMask) * TWO32 + lo
        const nb = ((hi >>> (x - 32)) & sectorsMask) + 1
        const end = start + nb * 512 - (start % 512)
        this.stats.compressedClusters++
        await this.addCompressed({start, end, guest})
        continue
      }
      const off = (hi & 0x00ffffff) * TWO32 + (lo & 0xfffffe00)
      if (off === 0 || (lo & 1) === 1) {
        // Unallocated or an explicit zero cluster (v3 bit 0): reads as zeros, never written.
        this.stats.zeroClusters++
        if (zeroStart < 0) zeroStart = guest
        continue
      }
      await endZeroRun(guest)
      const h = off / cs
      this.stats.dataClusters++
      if (h >= this.idx) {
        if (this.data.has(h) || this.meta.has(h)) throw new Qcow2OrderError(`qcow2 host cluster ${off} is mapped twice`)
        if (this.data.size >= MAX_MAPPED_AHEAD) {
          // L2 tables far ahead of their data (preallocation=metadata): the map would outgrow RAM.
          throw new Qcow2OrderError(`more than ${MAX_MAPPED_AHEAD} qcow2 data clusters are mapped ahead of the stream`)
        }
        this.data.set(h, guest)
      } else {
        const past = this.pending.get(h) ?? (this.prev?.idx === h ? this.prev.buf : undefined)
        if (!past) throw new Qcow2OrderError(`qcow2 data cluster at ${off} streamed past before its L2 table`)
        await this.writeData(guest, past)
      }
    }
    await endZeroRun((j + 1) * l2Coverage)
  }

  private async addCompressed(b: CompressedBlob): Promise<void> {
    const cs = this.cs
    const endIdx = Math.floor((b.end - 1) / cs)
    // (Inside processCluster, this.idx already names the next cluster to arrive.)
    if (endIdx >= this.idx) {
      const list = this.compByEnd.get(endIdx) ?? []
      list.push(b)
      this.compByEnd.set(endIdx, list)
      for (let c = Math.floor(b.start / cs); c < endIdx; c++) if (c >= this.idx) this.compStart.add(c)
      return
    }
    // Entirely behind us (or in the L2 cluster being parsed, which cannot hold data): from pending.
    await this.writeCompressed(b)
  }

  /** The bytes [start, end) of the file from the current/previous cluster or the pending area. */
  private bytes(start: number, end: number, current?: {idx: number; buf: Buffer}, allowShort = false): Buffer {
    const cs = this.cs
    const parts: Buffer[] = []
    for (let c = Math.floor(start / cs); c * cs < end; c++) {
      const src = current?.idx === c ? current.buf : this.prev?.idx === c ? this.prev.buf : this.pending.get(c)
      if (!src) {
        if (allowShort) break
        throw new Qcow2OrderError(`compressed qcow2 data at ${start} streamed past before its L2 table`)
      }
      const a = Math.max(start, c * cs) - c * cs
      const b = Math.min(end, c * cs + src.length) - c * cs
      if (b > a) parts.push(src.subarray(a, b))
      if (src.length < cs) break
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
  }

  private async writeCompressed(b: CompressedBlob, current?: {idx: number; buf: Buffer}, allowShort = false): Promise<void> {
    const blob = this.bytes(b.start, b.end, current, allowShort)
    let out: Buffer
    try {
      out = inflateRawSync(blob, {finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: this.cs * 2})
    } catch (err) {
      throw new InvalidImage(`qcow2 compressed cluster at ${b.start} cannot be decompressed: ${(err as Error).message}`)
    }
    const want = Math.min(this.cs, this.header!.virtualSize - b.guest)
    if (out.length < want) throw new InvalidImage(`qcow2 compressed cluster at ${b.start} decompressed to ${out.length} bytes, expected ${this.cs}`)
    await this.writeData(b.guest, out.subarray(0, want))
  }

  private async writeData(guest: number, buf: Buffer): Promise<void> {
    const len = Math.min(buf.length, this.header!.virtualSize - guest)
    if (len <= 0) return
    const piece = buf.subarray(0, len)
    if (isZero(piece)) {
      // A data cluster full of zeros: leave it to the zero pass (which skips already-zero disk).
      await this.flushRun()
      return
    }
    const run = this.run
    if (run && run.start + run.len === guest && run.len + len <= run.buf.length) {
      piece.copy(run.buf, run.len)
      run.len += len
      return
    }
    await this.flushRun()
    if (len > this.pool.size) {
      // A 2 MiB cluster cannot outgrow a 4 MiB block, but keep this safe anyway.
      await this.target.write(Buffer.from(piece), guest, this.header!.virtualSize)
      return
    }
    const block = await this.pool.get()
    piece.copy(block, 0)
    this.run = {start: guest, buf: block, len}
  }

  private async flushRun(): Promise<void> {
    const run = this.run
    if (!run) return
    this.run = undefined
    const {done} = await this.target.write(run.buf.subarray(0, run.len), run.start, this.header!.virtualSize)
    void done.then(() => this.pool.release(run.buf))
  }
}

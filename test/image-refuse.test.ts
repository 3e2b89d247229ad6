/**
 * Images that must be refused before the target changes, on a loop device this test creates (root
 * required) and fills with old data and a GPT: every refusal below goes through prepareImage() as
 * Ironic's write_image / standby.prepare_image reach it, and afterwards the WHOLE device hashes as
 * before (no wipe, no partition table written, no byte of image data). The qcow2 fixtures come from
 * the real qemu-img (backing file, external data file, LUKS encryption, a virtual size larger than
 * the disk); the metadata cases are qemu-img images with a few bytes patched (tables pointing at
 * themselves, at the header, at the refcount table; bad cluster_bits; an unknown incompatible
 * feature bit). One corruption can only be seen mid-stream (a later L2 table of a 4 KiB-cluster
 * image): that one fails clearly and leaves the documented state (partition tables wiped).
 */
import {createHash} from 'node:crypto'
import {existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {open} from 'node:fs/promises'
import os from 'node:os'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig, type AgentConfig} from '../src/agent/config.js'
import {prepareImage, type DeployState} from '../src/agent/image/write.js'
import {run} from '../src/common/exec.js'
import {join, makeRawImage, MIB, qemuImg, quiet, sha256File, startImageServer, type ImageServer} from './helpers/image.js'
import {attachLoop, detachLoop, dirtyDevice, sha256OfDevice, type LoopDevice} from './helpers/loop.js'

const DISK_MIB = 64
const IMG_MIB = 20
let dir: string
let srv: ImageServer
let A: LoopDevice
let rawSha: string
const sums = new Map<string, string>()
const COPIED = 1n << 63n
const OFFSET_MASK = 0x00fffffffffffe00n

function info(name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {id: name, urls: [`${srv.url}/${name}`], disk_format: null, os_hash_algo: 'sha256', os_hash_value: sums.get(name), node_uuid: 'node-r', ...extra}
}

function ctx(state: DeployState, overrides: Partial<AgentConfig> = {}) {
  if (!/^\/dev\/loop\d+$/.test(A.device)) throw new Error('test bug: only our loop device may be named')
  const config: AgentConfig = {
    ...defaultConfig(),
    deviceAllowlist: [A.device],
    imageDownloadConnectionRetries: 1,
    imageDownloadConnectionRetryInterval: 0.05,
    imageSpoolDir: dir,
    ...overrides,
  }
  return {config, log: quiet, state, installDevice: async () => A.device}
}

async function serve(name: string, file = join(dir, name)): Promise<void> {
  srv.files.set(`/${name}`, file)
  sums.set(name, await sha256File(file))
}

/** A copy of good.qcow2 (or `from`) with `patch` applied to its bytes. */
async function patched(name: string, patch: (b: Buffer) => void, from = 'good.qcow2'): Promise<void> {
  const b = readFileSync(join(dir, from))
  patch(b)
  writeFileSync(join(dir, name), b)
  await serve(name)
}

const l1Of = (b: Buffer): number => Number(b.readBigUInt64BE(40))
const l2Of = (b: Buffer, j = 0): number => Number(b.readBigUInt64BE(l1Of(b) + j * 8) & OFFSET_MASK)

async function table(dev: string): Promise<unknown> {
  const r = await run('sfdisk', ['--json', dev], {allowFailure: true})
  return r.exitCode === 0 ? JSON.parse(r.stdout).partitiontable : null
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (loop devices)')
  if (!existsSync('/dev/loop-control')) throw new Error('no loop device support (/dev/loop-control missing)')
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-refuse-'))
  srv = await startImageServer()
  const raw = join(dir, 'base.raw')
  await makeRawImage(raw, IMG_MIB, {dos: true})
  rawSha = await sha256File(raw)
  const q = (...args: string[]) => qemuImg(args)
  await q('convert', '-f', 'raw', '-O', 'qcow2', raw, join(dir, 'good.qcow2'))
  await q('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, join(dir, 'good-4k.qcow2'))
  await q('create', '-f', 'qcow2', '-b', raw, '-F', 'raw', join(dir, 'backed.qcow2'))
  await q('create', '-f', 'qcow2', '-o', `data_file=${join(dir, 'external.data')}`, join(dir, 'datafile.qcow2'), '16M')
  await q(
    'create',
    '-f',
    'qcow2',
    '--object',
    'secret,id=sec0,data=rdk-test-only',
    '-o',
    'encrypt.format=luks,encrypt.key-secret=sec0',
    join(dir, 'luks.qcow2'),
    '16M',
  )
  await q('create', '-f', 'qcow2', join(dir, 'huge.qcow2'), '200M')
  await q('create', '-f', 'qed', join(dir, 'disk.qed'), '16M')
  // A raw image larger than the disk (sparse on this side; the server announces its length).
  const big = await open(join(dir, 'huge.raw'), 'w')
  await big.write(readFileSync(raw).subarray(0, MIB), 0, MIB, 0)
  await big.truncate((DISK_MIB + 16) * MIB)
  await big.close()
  for (const n of ['good.qcow2', 'good-4k.qcow2', 'backed.qcow2', 'datafile.qcow2', 'luks.qcow2', 'huge.qcow2', 'disk.qed', 'huge.raw']) await serve(n)

  // Metadata patched into qemu-img's layout (header, refcount table, refcount block, L1, L2, data).
  await patched('self-l1.qcow2', (b) => b.writeBigUInt64BE(BigInt(l1Of(b)) | COPIED, l1Of(b)))
  await patched('self-l2.qcow2', (b) => b.writeBigUInt64BE(BigInt(l2Of(b)) | COPIED, l2Of(b)))
  await patched('l2-in-header.qcow2', (b) => b.writeBigUInt64BE(0x200n | COPIED, l1Of(b)))
  await patched('l2-on-refcount.qcow2', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(48) | COPIED, l1Of(b)))
  await patched('data-on-l1.qcow2', (b) => b.writeBigUInt64BE(BigInt(l1Of(b)) | COPIED, l2Of(b) + 16 * 8))
  await patched('data-past-end.qcow2', (b) => b.writeBigUInt64BE(BigInt(Math.ceil(b.length / 65536 + 100) * 65536) | COPIED, l2Of(b) + 16 * 8))
  await patched('bits.qcow2', (b) => b.writeUInt32BE(30, 20))
  await patched('feature.qcow2', (b) => (b[79] = b[79]! | 0x20))
  await patched('l1-small.qcow2', (b) => b.writeUInt32BE(0, 36))
  await patched('big-reftable.qcow2', (b) => b.writeUInt32BE(0xffffffff, 56)) // ~4 billion clusters: never iterated
  // 4 KiB clusters: an L2 table covers 2 MiB, so the image has several, spread through the file.
  // The last one that maps data is made to map a cluster onto the L1 table: only visible mid-stream.
  await patched(
    'late-l2.qcow2',
    (b) => {
      const l1 = l1Of(b)
      for (let j = Math.ceil((IMG_MIB * MIB) / (4096 * 512)) - 1; j >= 1; j--) {
        const l2 = l2Of(b, j)
        if (!l2) continue
        for (let k = 0; k < 512; k++) {
          if (b.readBigUInt64BE(l2 + k * 8) === 0n) continue
          b.writeBigUInt64BE(BigInt(l1) | COPIED, l2 + k * 8)
          return
        }
      }
      throw new Error('test bug: no late L2 entry to corrupt')
    },
    'good-4k.qcow2',
  )

  A = await attachLoop(dir, 'disk', DISK_MIB * MIB)
})

afterAll(async () => {
  if (A) {
    await run('partx', ['-d', A.device], {allowFailure: true})
    await detachLoop(A)
  }
  await srv?.close()
  if (dir) rmSync(dir, {recursive: true, force: true})
})

describe('refused before the first byte of the target changes (the whole device hashes as before)', () => {
  let before: string
  beforeAll(async () => {
    await dirtyDevice(A.device, A.size) // random bytes + a GPT with two partitions
    before = await sha256OfDevice(A.device)
  })

  const cases: [string, string, RegExp, Record<string, unknown>?][] = [
    ['backing file', 'backed.qcow2', /^Security: Image failed safety check: qcow2 image has a backing file$/],
    ['external data file', 'datafile.qcow2', /^Security: Image failed safety check: qcow2 image uses an external data file$/],
    ['LUKS-encrypted qcow2', 'luks.qcow2', /^Security: Image failed safety check: qcow2 image is encrypted$/],
    ['qed (even when permitted)', 'disk.qed', /^Security: Image failed safety check: qed images are not supported$/, {permitted: ['raw', 'qcow2', 'qed']}],
    [
      'L1 entry pointing at the L1 table itself',
      'self-l1.qcow2',
      /^qcow2 image is corrupt: L1 entry 0 points at offset \d+ as a L2 table, but that cluster is the L1 table$/,
    ],
    [
      'L2 entry pointing at its own L2 table',
      'self-l2.qcow2',
      /^qcow2 image is corrupt: the L2 table for guest offset 0 maps data at offset \d+, which is the L2 table$/,
    ],
    ['L2 table inside the header', 'l2-in-header.qcow2', /^qcow2 image is corrupt: L1 entry 0 points at offset 512, inside the header$/],
    [
      'L2 table on the refcount table',
      'l2-on-refcount.qcow2',
      /^qcow2 image is corrupt: L1 entry 0 points at offset 65536 as a L2 table, but that cluster is the refcount table$/,
    ],
    [
      'data cluster on the L1 table',
      'data-on-l1.qcow2',
      /^qcow2 image is corrupt: the L2 table for guest offset 1048576 maps data at offset \d+, which is the L1 table$/,
    ],
    [
      'data cluster past the end of the file',
      'data-past-end.qcow2',
      /^qcow2 image is corrupt: the L2 table for guest offset 1048576 maps data at offset \d+, past the end of the image \(\d+ bytes\)$/,
    ],
    ['cluster_bits out of range', 'bits.qcow2', /^qcow2 cluster_bits 30 is out of range \(9-21\)$/],
    ['unknown incompatible feature bit', 'feature.qcow2', /^qcow2 image uses unknown incompatible features \(0x20\)$/],
    [
      'refcount table larger than qemu allows',
      'big-reftable.qcow2',
      /^qcow2 image is corrupt: the refcount table \(4294967295 clusters\) is larger than qemu allows \(8 MiB\)$/,
    ],
    [
      'L1 table too small for the virtual size',
      'l1-small.qcow2',
      /^qcow2 image is corrupt: the L1 table \(0 entries\) is too small for the virtual size 20971520$/,
    ],
  ]
  for (const [what, name, details, opts] of cases) {
    it(`${what}: InvalidImage, disk unchanged`, async () => {
      const state: DeployState = {partitionUuids: null}
      const overrides = opts?.permitted ? {permittedImageFormats: opts.permitted as string[]} : {}
      await expect(prepareImage(ctx(state, overrides), info(name) as never, null)).rejects.toMatchObject({
        type: 'InvalidImage',
        details: expect.stringMatching(details),
      })
      expect(await sha256OfDevice(A.device)).toBe(before)
      expect(state.partitionUuids).toBeNull()
    })
  }

  it('virtual size larger than the disk (qcow2 header) and Content-Length larger than the disk (raw): ImageWriteError, disk unchanged', async () => {
    const state: DeployState = {partitionUuids: null}
    await expect(prepareImage(ctx(state), info('huge.qcow2') as never, null)).rejects.toMatchObject({
      type: 'ImageWriteError',
      details: expect.stringContaining(`the image needs ${200 * MIB} bytes but ${A.device} holds only ${DISK_MIB * MIB}`),
    })
    await expect(prepareImage(ctx(state), info('huge.raw') as never, null)).rejects.toMatchObject({
      type: 'ImageWriteError',
      details: expect.stringContaining(`the image needs ${(DISK_MIB + 16) * MIB} bytes but ${A.device} holds only ${DISK_MIB * MIB}`),
    })
    expect(await sha256OfDevice(A.device)).toBe(before)
  })

  it('an unknown checksum algorithm, and a partition image with a backing file: refused, disk unchanged', async () => {
    const state: DeployState = {partitionUuids: null}
    await expect(prepareImage(ctx(state), info('good.qcow2', {os_hash_algo: 'sha3-999'}) as never, null)).rejects.toMatchObject({
      details: expect.stringMatching(/os_hash_algo.*sha3-999.*is supported/),
    })
    const part = {image_type: 'partition', root_mb: 32, disk_label: 'msdos', deploy_boot_mode: 'bios', boot_option: 'local', swap_mb: 0, ephemeral_mb: 0}
    await expect(prepareImage(ctx(state), info('backed.qcow2', part) as never, null)).rejects.toMatchObject({
      type: 'InvalidImage',
      details: 'Security: Image failed safety check: qcow2 image has a backing file',
    })
    await expect(prepareImage(ctx(state), info('self-l2.qcow2', part) as never, null)).rejects.toMatchObject({
      type: 'InvalidImage',
      details: expect.stringMatching(/corrupt/),
    })
    expect(await sha256OfDevice(A.device)).toBe(before)
  })
})

describe('refused mid-stream, and good images still written', () => {
  it('a corrupt later L2 table: a clear InvalidImage naming the state the disk is in (partly written, partition tables wiped)', async () => {
    await dirtyDevice(A.device, A.size)
    expect(await table(A.device)).not.toBeNull()
    const state: DeployState = {partitionUuids: null, cachedImageId: 'an-earlier-image'}
    await expect(prepareImage(ctx(state), info('late-l2.qcow2') as never, null)).rejects.toMatchObject({
      type: 'InvalidImage',
      details: expect.stringMatching(
        /^qcow2 image is corrupt: the L2 table for guest offset \d+ maps data at offset \d+, which is the L1 table \(refused while writing: the disk was partly written and its partition tables have been wiped\)$/,
      ),
    })
    expect(await table(A.device)).toBeNull()
    expect(state.cachedImageId).toBeUndefined() // the earlier image is gone from the disk
  })

  it('the same images unpatched deploy (64 KiB and 4 KiB clusters), byte for byte', async () => {
    for (const name of ['good.qcow2', 'good-4k.qcow2']) {
      const state: DeployState = {partitionUuids: null}
      const msg = await prepareImage(ctx(state), info(name) as never, null)
      expect(msg).toBe(`image (${name}) written to device ${A.device} root_uuid=0x1234abcd`)
      const h = createHash('sha256')
      const fh = await open(A.device, 'r')
      for await (const c of fh.createReadStream({start: 0, end: IMG_MIB * MIB - 1})) h.update(c as Buffer)
      await fh.close()
      expect(h.digest('hex')).toBe(rawSha)
    }
  })
})

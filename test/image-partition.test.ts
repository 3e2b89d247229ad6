/**
 * Partition images for real, on loop devices this test creates (root required) and nothing else:
 * prepareImage() with image_type "partition" as Ironic 21.4 sends it (root_mb, swap_mb,
 * ephemeral_mb, ephemeral_format, disk_label, deploy_boot_mode, boot_option, configdrive), for
 * msdos and gpt, bios and uefi. Checked from the outside: the table (sfdisk --json), filesystem types
 * and labels (blkid -p), the root partition holding exactly the image's bytes (raw and qcow2 roots,
 * streamed), the reported UUIDs and IPA's result text. Bad input fails before the disk is touched.
 */
import {createHash, randomUUID} from 'node:crypto'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {open, readFile} from 'node:fs/promises'
import os from 'node:os'
import {gzipSync} from 'node:zlib'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig, type AgentConfig} from '../src/agent/config.js'
import {withMount} from '../src/agent/image/bootloader.js'
import {partedArgs, planPartitions, partitionLayout} from '../src/agent/image/partition.js'
import {prepareImage, type DeployState} from '../src/agent/image/write.js'
import {run} from '../src/common/exec.js'
import {join, MIB, qemuImg, quiet, sha256File, startImageServer, type ImageServer} from './helpers/image.js'
import {attachLoop, detachLoop, type LoopDevice} from './helpers/loop.js'

const ESP_GUID = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
const BIOS_BOOT_GUID = '21686148-6449-6E6F-744E-656564454649'
const SECTORS_PER_MIB = MIB / 512

let dir: string
let srv: ImageServer
let A: LoopDevice // 768 MiB: room for a 550 MiB ESP
let rootFsUuid: string
let rootSize: number
const sums = new Map<string, string>()
let configdrive: string

interface SfPart {
  node: string
  start: number
  size: number
  type: string
  uuid?: string
  name?: string
  bootable?: boolean
}

async function table(device: string): Promise<{label: string; partitions: SfPart[]}> {
  return (JSON.parse((await run('sfdisk', ['--json', device])).stdout) as {partitiontable: {label: string; partitions: SfPart[]}}).partitiontable
}

async function blk(dev: string): Promise<Record<string, string>> {
  const r = await run('blkid', ['-p', '-o', 'export', dev], {allowFailure: true})
  return Object.fromEntries(
    r.stdout
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  )
}

async function sha256Prefix(dev: string, length: number): Promise<string> {
  const h = createHash('sha256')
  const fh = await open(dev, 'r')
  try {
    for await (const c of fh.createReadStream({start: 0, end: length - 1})) h.update(c as Buffer)
  } finally {
    await fh.close().catch(() => undefined)
  }
  return h.digest('hex')
}

function info(name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: name,
    urls: [`${srv.url}/${name}`],
    disk_format: null,
    container_format: null,
    stream_raw_images: true,
    os_hash_algo: 'sha256',
    os_hash_value: sums.get(name),
    node_uuid: 'node-p',
    // What Ironic 21.4 adds for a partition image (ironic-wire.md):
    kernel: `${srv.url}/vmlinuz`,
    ramdisk: `${srv.url}/initrd`,
    root_gb: 1,
    root_mb: 40,
    swap_mb: 0,
    ephemeral_mb: 0,
    ephemeral_format: null,
    configdrive: null,
    preserve_ephemeral: false,
    image_type: 'partition',
    deploy_boot_mode: 'bios',
    boot_option: 'local',
    disk_label: 'msdos',
    ...extra,
  }
}

function ctx(state: DeployState, overrides: Partial<AgentConfig> = {}) {
  if (!/^\/dev\/loop\d+$/.test(A.device)) throw new Error('test bug: only our loop device may be named')
  const config: AgentConfig = {
    ...defaultConfig(),
    deviceAllowlist: [A.device],
    imageDownloadConnectionRetries: 1,
    imageDownloadConnectionRetryInterval: 0.05,
    ...overrides,
  }
  return {config, log: quiet, state, installDevice: async () => A.device}
}

beforeAll(async () => {
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-part-'))
  srv = await startImageServer()
  // The root filesystem image: ext4 with a known UUID and a file, made without mounting (mke2fs -d).
  const src = join(dir, 'rootfs')
  mkdirSync(join(src, 'etc'), {recursive: true})
  writeFileSync(join(src, 'etc/hostname'), 'partition-image\n')
  rootFsUuid = randomUUID()
  await run('mkfs.ext4', ['-q', '-F', '-L', 'img-root', '-U', rootFsUuid, '-d', src, join(dir, 'root.raw'), '24M'])
  await qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'root.raw'), join(dir, 'root.qcow2')])
  rootSize = statSync(join(dir, 'root.raw')).size
  for (const f of ['root.raw', 'root.qcow2']) {
    srv.files.set(`/${f}`, join(dir, f))
    sums.set(f, await sha256File(join(dir, f)))
  }
  sums.set('raw-sha', await sha256File(join(dir, 'root.raw')))
  // A config drive as Ironic makes it: an ISO 9660 labelled config-2, gzip + base64.
  mkdirSync(join(dir, 'cd/openstack/latest'), {recursive: true})
  writeFileSync(join(dir, 'cd/openstack/latest/meta_data.json'), '{"uuid": "node-p"}')
  await run('xorriso', ['-as', 'mkisofs', '-quiet', '-V', 'config-2', '-o', join(dir, 'cd.iso'), join(dir, 'cd')])
  configdrive = gzipSync(await readFile(join(dir, 'cd.iso'))).toString('base64')
  A = await attachLoop(dir, 'disk', 768 * MIB)
})

afterAll(async () => {
  if (A) await detachLoop(A)
  await srv?.close()
  rmSync(dir, {recursive: true, force: true})
})

describe('layout (IPA make_partitions order)', () => {
  it('ESP or BIOS boot first, then ephemeral, swap, config drive, root last; parted as IPA runs it', () => {
    const uefi = planPartitions(partitionLayout(info('x', {deploy_boot_mode: 'uefi', disk_label: 'gpt', swap_mb: 8, ephemeral_mb: 16}) as never), 2)
    expect(uefi.map((p) => [p.role, p.startMb, p.sizeMb])).toEqual([
      ['efi system partition', 1, 550],
      ['ephemeral', 551, 16],
      ['swap', 567, 8],
      ['configdrive', 575, 2],
      ['root', 577, 40],
    ])
    expect(partedArgs('/dev/sdx', 'gpt', uefi).join(' ')).toBe(
      '-a optimal -s /dev/sdx -- unit MiB mklabel gpt mkpart primary fat32 1 551 set 1 boot on mkpart primary 551 567 mkpart primary linux-swap 567 575 mkpart primary 575 577 mkpart primary 577 617',
    )
    const bios = planPartitions(partitionLayout(info('x', {disk_label: 'gpt'}) as never), 0)
    expect(bios.map((p) => [p.role, p.sizeMb, p.flags])).toEqual([
      ['BIOS Boot partition', 1, ['bios_grub']],
      ['root', 40, []],
    ])
    // No disk_label: gpt for uefi, msdos for bios (IPA).
    expect(partitionLayout(info('x', {disk_label: undefined, deploy_boot_mode: 'uefi'}) as never).diskLabel).toBe('gpt')
    expect(partitionLayout(info('x', {disk_label: null}) as never).diskLabel).toBe('msdos')
  })
})

describe('partition image deploys onto a loop device', () => {
  it('gpt + uefi, raw root, swap, ephemeral and a config drive', async () => {
    const state: DeployState = {partitionUuids: null}
    const msg = await prepareImage(
      ctx(state),
      info('root.raw', {deploy_boot_mode: 'uefi', disk_label: 'gpt', swap_mb: 8, ephemeral_mb: 16, ephemeral_format: 'ext4'}) as never,
      configdrive,
    )
    const t = await table(A.device)
    expect(t.label).toBe('gpt')
    expect(t.partitions.map((p) => [p.start / SECTORS_PER_MIB, Math.round(p.size / SECTORS_PER_MIB)])).toEqual([
      [1, 550],
      [551, 16],
      [567, 8],
      [575, 1],
      [576, 40],
    ])
    expect(t.partitions[0]!.type).toBe(ESP_GUID)
    const p = (n: number) => `${A.device}p${n}`
    expect(await blk(p(1))).toMatchObject({TYPE: 'vfat', LABEL: 'efi-part'})
    expect(await blk(p(2))).toMatchObject({TYPE: 'ext4', LABEL: 'ephemeral0'})
    expect(await blk(p(3))).toMatchObject({TYPE: 'swap', LABEL: 'swap1'})
    expect(await blk(p(4))).toMatchObject({TYPE: 'iso9660', LABEL: 'config-2'})
    expect(await blk(p(5))).toMatchObject({TYPE: 'ext4', LABEL: 'img-root', UUID: rootFsUuid})
    expect(await sha256Prefix(p(5), rootSize)).toBe(sums.get('raw-sha'))
    const espUuid = (await blk(p(1))).UUID
    expect(espUuid).toMatch(/^[0-9A-F]{4}-[0-9A-F]{4}$/)
    expect(state.partitionUuids).toEqual({
      'root uuid': rootFsUuid,
      'efi system partition uuid': espUuid,
      partitions: {'efi system partition': p(1), ephemeral: p(2), swap: p(3), configdrive: p(4), root: p(5)},
    })
    expect(msg).toBe(`image (root.raw) written to device ${A.device} root_uuid=${rootFsUuid} efi_system_partition_uuid=${espUuid}`)
    expect(state.imageType).toBe('partition')
  })

  it('msdos + bios, qcow2 root streamed into the partition: root bootable, last', async () => {
    const state: DeployState = {partitionUuids: null}
    const msg = await prepareImage(ctx(state), info('root.qcow2', {swap_mb: 4}) as never, null)
    const t = await table(A.device)
    expect(t.label).toBe('dos')
    expect(t.partitions.map((x) => [x.start / SECTORS_PER_MIB, Math.round(x.size / SECTORS_PER_MIB), x.type, x.bootable ?? false])).toEqual([
      [1, 4, '82', false],
      [5, 40, '83', true],
    ])
    expect(await blk(`${A.device}p1`)).toMatchObject({TYPE: 'swap'})
    expect(await sha256Prefix(`${A.device}p2`, rootSize)).toBe(sums.get('raw-sha'))
    expect(state.lastWrite?.method).toBe('stream-qcow2')
    expect(state.partitionUuids).toMatchObject({'root uuid': rootFsUuid, 'efi system partition uuid': null})
    expect(msg).toBe(`image (root.qcow2) written to device ${A.device} root_uuid=${rootFsUuid}`)
  })

  it('gpt + bios: a 1 MiB BIOS boot partition first', async () => {
    const state: DeployState = {partitionUuids: null}
    await prepareImage(ctx(state), info('root.raw', {disk_label: 'gpt'}) as never, null)
    const t = await table(A.device)
    expect(t.partitions.map((x) => [x.type, Math.round(x.size / SECTORS_PER_MIB)])).toEqual([
      [BIOS_BOOT_GUID, 1],
      ['0FC63DAF-8483-4772-8E79-3D69D8477DE4', 40],
    ])
    expect((state.partitionUuids as {partitions: Record<string, string>}).partitions).toEqual({'BIOS Boot partition': `${A.device}p1`, root: `${A.device}p2`})
  })

  it('msdos + uefi: the ESP gets type 0xef, so it is found by type later', async () => {
    const state: DeployState = {partitionUuids: null}
    await prepareImage(ctx(state), info('root.raw', {deploy_boot_mode: 'uefi', disk_label: 'msdos'}) as never, null)
    const t = await table(A.device)
    expect(t.partitions.map((x) => [x.type, Math.round(x.size / SECTORS_PER_MIB)])).toEqual([
      ['ef', 550],
      ['83', 40],
    ])
    expect(await blk(`${A.device}p1`)).toMatchObject({TYPE: 'vfat'})
  })
})

describe('preserve_ephemeral', () => {
  it('keeps the table and the ephemeral filesystem, rewrites root; a different layout is refused', async () => {
    const layout = {disk_label: 'gpt', ephemeral_mb: 16, ephemeral_format: 'ext4'}
    await prepareImage(ctx({partitionUuids: null}), info('root.raw', layout) as never, null)
    const eph = `${A.device}p2`
    await withMount(eph, async (d) => writeFileSync(join(d, 'keep-me'), 'user data'))
    const ephUuid = (await blk(eph)).UUID
    const state: DeployState = {partitionUuids: null}
    const msg = await prepareImage(ctx(state), info('root.qcow2', {...layout, preserve_ephemeral: true}) as never, null)
    expect(msg).toContain(`root_uuid=${rootFsUuid}`)
    expect((await blk(eph)).UUID).toBe(ephUuid)
    await withMount(eph, async (d) => expect(readFileSync(join(d, 'keep-me'), 'utf8')).toBe('user data'))
    expect(await sha256Prefix(`${A.device}p3`, rootSize)).toBe(sums.get('raw-sha'))
    await expect(
      prepareImage(ctx({partitionUuids: null}), info('root.raw', {...layout, ephemeral_mb: 32, preserve_ephemeral: true}) as never, null),
    ).rejects.toThrow(/preserve_ephemeral: the partition table on .* does not match the requested layout \(partition 2 \(ephemeral\) differs\)/)
    await withMount(eph, async (d) => expect(readFileSync(join(d, 'keep-me'), 'utf8')).toBe('user data'))
  })
})

describe('bad input fails before the disk is touched', () => {
  async function marker(): Promise<string> {
    return JSON.stringify(await table(A.device))
  }
  it('root_mb larger than the disk, unknown disk_label, missing root_mb, bad boot mode', async () => {
    const before = await marker()
    const state: DeployState = {partitionUuids: null}
    await expect(prepareImage(ctx(state), info('root.raw', {root_mb: 4096}) as never, null)).rejects.toMatchObject({
      type: 'InvalidCommandParamsError',
      details: expect.stringMatching(/The requested partitions need 4097 MiB \(root_mb 4096.*\) but \/dev\/loop\d+ holds only 768 MiB/),
    })
    await expect(prepareImage(ctx(state), info('root.raw', {disk_label: 'sun'}) as never, null)).rejects.toMatchObject({
      type: 'InvalidCommandParamsError',
      details: `Image 'disk_label' must be 'msdos' or 'gpt', got "sun"`,
    })
    await expect(prepareImage(ctx(state), info('root.raw', {root_mb: undefined}) as never, null)).rejects.toMatchObject({
      type: 'InvalidCommandParamsError',
      details: "Image is missing 'root_mb' field, which partition images require.",
    })
    await expect(prepareImage(ctx(state), info('root.raw', {deploy_boot_mode: 'legacy'}) as never, null)).rejects.toMatchObject({
      type: 'InvalidCommandParamsError',
    })
    await expect(prepareImage(ctx(state), info('root.raw', {swap_mb: -1}) as never, null)).rejects.toMatchObject({type: 'InvalidCommandParamsError'})
    // A bad URL fails before partitioning too.
    await expect(prepareImage(ctx(state), {...info('root.raw'), urls: [`${srv.url}/missing`]} as never, null)).rejects.toMatchObject({
      type: 'ImageDownloadError',
    })
    expect(await marker()).toBe(before)
    expect(state.partitionUuids).toBeNull()
  })

  it('an image larger than root_mb: IPA\'s "Root partition is too small", refused before the disk is partitioned (every byte unchanged)', async () => {
    const state: DeployState = {partitionUuids: null}
    const before = await sha256Prefix(A.device, A.size)
    await expect(prepareImage(ctx(state), info('root.qcow2', {root_mb: 8}) as never, null)).rejects.toMatchObject({
      type: 'InvalidCommandParamsError',
      details: 'Root partition is too small for requested image. Image virtual size: 24 MB, Root size: 8 MB',
    })
    // A raw image whose Content-Length exceeds root_mb: the same, from the announced size.
    await expect(prepareImage(ctx(state), info('root.raw', {root_mb: 8}) as never, null)).rejects.toMatchObject({
      type: 'InvalidCommandParamsError',
      details: 'Root partition is too small for requested image. Image virtual size: 24 MB, Root size: 8 MB',
    })
    expect(await sha256Prefix(A.device, A.size)).toBe(before)
    expect(state.partitionUuids).toBeNull()
  })
})

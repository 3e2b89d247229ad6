/**
 * Disk cleaning for real, on loop devices this test creates (root required; fails loudly without
 * loop support). Every manager here has a device allow-list naming only those loop devices, and
 * the host's disks are never passed to anything.
 *
 * Also: parsers for hdparm -I, nvme id-ctrl, mountinfo, swaps and the special-filesystem table.
 */
import {createHash, randomBytes} from 'node:crypto'
import {closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig, type AgentConfig} from '../src/agent/config.js'
import {BlockDeviceEraseError, ProtectedDeviceError} from '../src/agent/errors.js'
import {devicesInUse, findSpecialFilesystem, parseMountinfo, parseSwaps} from '../src/agent/disk/guard.js'
import {parseBlkidExport} from '../src/agent/disk/probe.js'
import {ataSecurityState, ataSupportsEnhancedErase, nvmeFormatMode, parseHdparmSecurity, parseNvmeIdCtrl, shredArgs} from '../src/agent/hardware/erase.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import type {NodeInfo} from '../src/agent/hardware/types.js'
import type {Logger} from '../src/agent/log.js'
import {run} from '../src/common/exec.js'

const fixture = (name: string): string => readFileSync(new URL(`./fixtures/hardware/${name}`, import.meta.url), 'utf8')
const quiet: Logger = {debug() {}, info() {}, warn() {}, error() {}, child: () => quiet}
const MIB = 1024 * 1024

describe('hdparm -I security parsing', () => {
  it('reads the Security block as IPA does', () => {
    const lines = parseHdparmSecurity(fixture('hdparm-I-sata-ssd.txt'))
    expect(lines).toEqual([
      'Master password revision code = 65534',
      'supported',
      'not enabled',
      'not locked',
      'not frozen',
      'not expired: security count',
      'supported: enhanced erase',
      '2min for SECURITY ERASE UNIT. 2min for ENHANCED SECURITY ERASE UNIT.',
    ])
    expect(ataSecurityState(lines)).toBe('disabled')
    expect(ataSupportsEnhancedErase(lines)).toBe(true)
  })

  it('frozen drive; no Security block at all (loop, virtio) means unsupported', () => {
    const frozen = parseHdparmSecurity(fixture('hdparm-I-frozen-hdd.txt'))
    expect(ataSecurityState(frozen)).toBe('frozen')
    expect(ataSupportsEnhancedErase(frozen)).toBe(false)
    expect(parseHdparmSecurity('\n/dev/loop0:\n')).toEqual([])
    expect(ataSecurityState([])).toBe('unsupported')
    expect(ataSecurityState(['supported', 'not frozen', 'locked'])).toBe('locked')
    expect(ataSecurityState(['supported', 'enabled', 'not locked', 'not frozen'])).toBe('enabled')
  })
})

describe('nvme id-ctrl parsing', () => {
  it('format support (OACS bit 1) and crypto erase (FNA bit 2) choose the ses mode', () => {
    const caps = parseNvmeIdCtrl(fixture('nvme-id-ctrl.json'))!
    expect(caps).toEqual({oacs: 23, fna: 5, sanicap: 0})
    expect(nvmeFormatMode(caps)).toBe(2)
    expect(nvmeFormatMode({oacs: 2, fna: 0, sanicap: 0})).toBe(1)
    expect(nvmeFormatMode({oacs: 0, fna: 4, sanicap: 0})).toBeNull()
    expect(parseNvmeIdCtrl('')).toBeNull()
  })
})

describe('guard parsing', () => {
  it('mountinfo (captured here) and swaps', () => {
    const mounts = parseMountinfo(fixture('mountinfo-host.txt'))
    expect(mounts.find((m) => m.mountpoint === '/')).toMatchObject({majmin: '254:0', fstype: 'ext4', source: '/dev/vda'})
    expect(parseMountinfo('36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw')[0]).toMatchObject({
      majmin: '98:0',
      mountpoint: '/mnt/my disk',
      source: '/dev/root',
    })
    expect(parseSwaps('Filename\tType\tSize\tUsed\tPriority\n/dev/sda2 partition 8388604 0 -2\n/swap\\040file file 1024 0 -3\n')).toEqual([
      '/dev/sda2',
      '/swap file',
    ])
  })

  it('special filesystems: GPFS/VMFS partition types, gfs2/VMFS/Ceph signatures; RAID members are fine', () => {
    expect(findSpecialFilesystem([{PART_ENTRY_TYPE: 'AA31E02A-400F-11DB-9590-000C2911D1B8'}])).toBe('VMware VMFS Partition (GPT)')
    expect(findSpecialFilesystem([{PART_ENTRY_TYPE: '0xfb'}])).toBe('VMware VMFS Partition (MBR)')
    expect(findSpecialFilesystem([{}, {PART_ENTRY_TYPE: '37affc90-ef7d-4e96-91c3-2d7ae055b174'}])).toBe('IBM GPFS Partition')
    expect(findSpecialFilesystem([{TYPE: 'gfs2'}])).toBe('Red Hat Global File System 2')
    expect(findSpecialFilesystem([{TYPE: 'VMFS_volume_member'}])).toBe('VMware VMFS volume')
    expect(findSpecialFilesystem([{TYPE: 'ceph_bluestore'}])).toBe('Ceph BlueStore volume')
    expect(findSpecialFilesystem([{TYPE: 'linux_raid_member'}, {TYPE: 'ext4'}, parseBlkidExport('PTTYPE=gpt\nPTUUID=abc\n')])).toBeNull()
  })

  it('shred command line', () => {
    expect(shredArgs('/dev/sdx', {iterations: 1, zeroize: true})).toEqual(['--force', '--zero', '--verbose', '--iterations', '1', '/dev/sdx'])
    expect(shredArgs('/dev/sdx', {iterations: 3, zeroize: false})).toEqual(['--force', '--verbose', '--iterations', '3', '/dev/sdx'])
  })
})

// ------------------------------------------------------------------------------------------------
// Integration on loop devices

describe('cleaning loop devices', () => {
  let dir: string
  const attached: string[] = []
  const mounted: string[] = []
  let A: string // 64 MiB, GPT + ext4 on partition 1
  let B: string // 64 MiB, GPT
  let C: string // 16 MiB, read-only
  let D: string // 16 MiB, ext4, mounted
  let cBefore: string

  async function attach(file: string, readOnly = false): Promise<string> {
    const {stdout} = await run('losetup', ['--find', '--show', ...(readOnly ? ['-r'] : []), file])
    const dev = stdout.trim()
    if (!/^\/dev\/loop\d+$/.test(dev)) throw new Error(`losetup returned '${dev}'`)
    attached.push(dev)
    return dev
  }

  /** Make sure the kernel has partition devices for `dev` (this VM's kernel parses no GPT itself). */
  async function addPartitions(dev: string, count: number): Promise<void> {
    await run('blockdev', ['--rereadpt', dev], {allowFailure: true})
    if (!existsSync(`${dev}p1`)) await run('partx', ['-a', dev])
    for (let i = 0; i < 50 && !existsSync(`${dev}p${count}`); i++) await new Promise((r) => setTimeout(r, 20))
    if (!existsSync(`${dev}p${count}`)) throw new Error(`partitions of ${dev} did not appear`)
  }

  async function writeGpt(dev: string, type1?: string): Promise<void> {
    await run('partx', ['-d', dev], {allowFailure: true})
    await run('sgdisk', ['-Z', dev], {allowFailure: true})
    await run('sgdisk', ['-n', '1:0:+8M', '-n', '2:0:0', ...(type1 ? ['-t', `1:${type1}`] : []), dev])
    await addPartitions(dev, 2)
  }

  function readAt(dev: string, pos: number, len: number): Buffer {
    const fd = openSync(dev, 'r')
    try {
      const buf = Buffer.alloc(len)
      readSync(fd, buf, 0, len, pos)
      return buf
    } finally {
      closeSync(fd)
    }
  }

  function fill(dev: string, size: number): string {
    const data = randomBytes(size)
    const fd = openSync(dev, 'r+')
    try {
      writeSync(fd, data, 0, size, 0)
    } finally {
      closeSync(fd)
    }
    return createHash('sha256').update(data).digest('hex')
  }

  function hash(dev: string): string {
    return createHash('sha256').update(readFileSync(dev)).digest('hex')
  }

  const zeroHash = (size: number): string => createHash('sha256').update(Buffer.alloc(size)).digest('hex')
  const isZero = (b: Buffer): boolean => b.every((x) => x === 0)

  function manager(allowlist: string[], overrides: Partial<AgentConfig> = {}): GenericHardwareManager {
    // Safety: these tests only ever act under an allow-list of the loop devices they created.
    if (allowlist.length === 0 || !allowlist.every((d) => attached.includes(d))) throw new Error('test bug: allow-list must name only our loop devices')
    const m = new GenericHardwareManager()
    m.attach({config: {...defaultConfig(), ...overrides, deviceAllowlist: allowlist}, log: quiet})
    return m
  }

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('these tests need root (loop devices)')
    if (!existsSync('/dev/loop-control')) throw new Error('no loop device support (/dev/loop-control missing): cannot test disk cleaning')
    dir = mkdtempSync(path.join(os.tmpdir(), 'rdk-erase-'))
    for (const [name, size] of [
      ['a.img', 64],
      ['b.img', 64],
      ['c.img', 16],
      ['d.img', 16],
    ] as const) {
      writeFileSync(path.join(dir, name), '')
      await run('truncate', ['-s', `${size}M`, path.join(dir, name)])
    }
    writeFileSync(path.join(dir, 'c.img'), randomBytes(16 * MIB))
    cBefore = createHash('sha256')
      .update(readFileSync(path.join(dir, 'c.img')))
      .digest('hex')
    A = await attach(path.join(dir, 'a.img'))
    B = await attach(path.join(dir, 'b.img'))
    C = await attach(path.join(dir, 'c.img'), true)
    D = await attach(path.join(dir, 'd.img'))
    await writeGpt(A)
    await run('mkfs.ext4', ['-q', '-F', `${A}p1`])
    await writeGpt(B)
    await run('mkfs.ext4', ['-q', '-F', D])
    mkdirSync(path.join(dir, 'mnt'))
    await run('mount', [D, path.join(dir, 'mnt')])
    mounted.push(path.join(dir, 'mnt'))
  })

  afterAll(async () => {
    for (const m of mounted.reverse()) await run('umount', [m], {allowFailure: true})
    for (const dev of attached) {
      await run('partx', ['-d', dev], {allowFailure: true})
      await run('losetup', ['-d', dev], {allowFailure: true})
    }
    if (dir) rmSync(dir, {recursive: true, force: true})
  })

  it('list_block_devices shows exactly the allow-listed devices (and their partitions), nothing of the host', async () => {
    const m = manager([A, B])
    const disks = await m.list_block_devices()
    expect(disks.map((d) => d.name)).toEqual([A, B])
    for (const d of disks) {
      expect(d).toMatchObject({size: 64 * MIB, model: '', logical_sectors: 512, wwn: null, hctl: null})
      expect(typeof d.rotational).toBe('boolean')
    }
    expect(disks.find((d) => d.name === '/dev/vda')).toBeUndefined()
    const all = await m.list_block_devices(true)
    expect(all.map((d) => d.name)).toEqual([A, B, `${A}p1`, `${A}p2`, `${B}p1`, `${B}p2`])
    expect(all.find((d) => d.name === `${A}p1`)!.size).toBe(8 * MIB)
    // the inventory sees the same
    const inv = await m.list_hardware_info()
    expect(inv.disks.map((d) => d.name)).toEqual([A, B])
    // without an allow-list, loop devices are not disks
    const plain = new GenericHardwareManager()
    plain.attach({config: defaultConfig(), log: quiet})
    expect((await plain.list_block_devices()).some((d) => d.name.startsWith('/dev/loop'))).toBe(false)
  })

  it('get_os_install_device honours the allow-list and a name hint', async () => {
    const m = manager([A, B])
    await expect(m.get_os_install_device()).rejects.toThrow(/smaller than 4GiB/)
    m.cachedNode = {properties: {root_device: {name: B}}}
    expect(await m.get_os_install_device()).toBe(B)
  })

  it('erase_devices_metadata removes every signature, primary and backup GPT included', async () => {
    expect((await run('blkid', ['-p', '-o', 'export', `${A}p1`])).stdout).toContain('TYPE=ext4')
    const m = manager([A, B])
    expect(await m.erase_devices_metadata({uuid: 'node-1'}, [])).toBeNull()
    for (const dev of [A, B]) {
      const size = 64 * MIB
      expect((await run('blkid', ['-p', dev], {allowFailure: true})).exitCode).toBe(2)
      expect((await run('wipefs', ['--no-act', dev])).stdout.trim()).toBe('')
      expect(isZero(readAt(dev, 0, 34 * 512))).toBe(true)
      expect(isZero(readAt(dev, size - 33 * 512, 33 * 512))).toBe(true)
      const sg = await run('sgdisk', ['-p', dev], {allowFailure: true})
      expect(sg.stdout + sg.stderr).toMatch(/Creating new GPT entries/)
      expect(sg.stdout + sg.stderr).not.toMatch(/backup/i)
    }
    // the ext4 superblock magic (0xEF53) on partition 1 is gone
    expect(readAt(A, MIB + 1024 + 0x38, 2)).not.toEqual(Buffer.from([0x53, 0xef]))
  })

  it('erase_devices (shred fallback: loops are neither NVMe nor ATA) leaves the devices all zeroes', async () => {
    fill(A, 64 * MIB)
    fill(B, 64 * MIB)
    const m = manager([A, B])
    const result = await m.erase_devices({driver_internal_info: {disk_erasure_concurrency: 2}}, [])
    expect(result).toEqual({[A]: null, [B]: null})
    expect(hash(A)).toBe(zeroHash(64 * MIB))
    expect(hash(B)).toBe(zeroHash(64 * MIB))
  })

  it('skip_block_devices: the named device is left alone by both erase steps', async () => {
    fill(A, 64 * MIB)
    await writeGpt(B)
    const bBefore = hash(B)
    const node: NodeInfo = {uuid: 'node-1', properties: {skip_block_devices: [{name: B}]}}
    const m = manager([A, B])
    expect(await m.erase_devices(node, [])).toEqual({[A]: null})
    expect(hash(A)).toBe(zeroHash(64 * MIB))
    await m.erase_devices_metadata(node, [])
    expect(hash(B)).toBe(bBefore)
    expect((await run('blkid', ['-p', '-o', 'export', B])).stdout).toContain('PTTYPE=gpt')
  })

  it('shred is skipped with 0 iterations and no zeroize', async () => {
    const before = fill(A, 64 * MIB)
    const m = manager([A])
    const node = {driver_internal_info: {agent_erase_devices_iterations: 0, agent_erase_devices_zeroize: false}}
    expect(await m.erase_devices(node, [])).toEqual({[A]: null})
    expect(hash(A)).toBe(before)
  })

  it('a read-only device fails erase_devices unless agent_erase_skip_read_only; metadata erase skips it', async () => {
    const m = manager([C])
    await expect(m.erase_devices({}, [])).rejects.toThrow(BlockDeviceEraseError)
    await expect(m.erase_devices({}, [])).rejects.toThrow(/flagged read-only/)
    expect(await m.erase_devices({driver_internal_info: {agent_erase_skip_read_only: true}}, [])).toEqual({[C]: null})
    expect(await m.erase_devices_metadata({}, [])).toBeNull()
    expect(
      createHash('sha256')
        .update(readFileSync(path.join(dir, 'c.img')))
        .digest('hex'),
    ).toBe(cBefore)
  })

  it('a device with a mounted filesystem is refused by every erase path, before anything is written', async () => {
    const inUse = await devicesInUse()
    expect(inUse.get(path.basename(D))).toBe('mounted filesystem')
    fill(A, 64 * MIB)
    const aBefore = hash(A)
    const m = manager([A, D])
    await expect(m.erase_devices({}, [])).rejects.toBeInstanceOf(ProtectedDeviceError)
    await expect(m.erase_devices_metadata({}, [])).rejects.toBeInstanceOf(ProtectedDeviceError)
    await expect(m.erase_devices_express({}, [])).rejects.toBeInstanceOf(ProtectedDeviceError)
    await expect(m.erase_block_device({}, D)).rejects.toThrow(/Protected mounted filesystem located on device \/dev\/loop\d+/)
    // nothing was touched, not even the unprotected device listed first
    expect(hash(A)).toBe(aBefore)
    expect((await run('blkid', ['-p', '-o', 'export', D])).stdout).toContain('TYPE=ext4')
  })

  it('a disk whose partition is mounted is refused too', async () => {
    await writeGpt(A)
    await run('mkfs.ext4', ['-q', '-F', `${A}p1`])
    const mnt = path.join(dir, 'mnt-a1')
    mkdirSync(mnt)
    await run('mount', [`${A}p1`, mnt])
    mounted.push(mnt)
    try {
      const m = manager([A])
      await expect(m.erase_devices({}, [])).rejects.toBeInstanceOf(ProtectedDeviceError)
      await expect(m.erase_devices_metadata({}, [])).rejects.toBeInstanceOf(ProtectedDeviceError)
    } finally {
      await run('umount', [mnt])
      mounted.pop()
    }
  })

  it('a device outside the allow-list is refused outright', async () => {
    const m = manager([A, B])
    await expect(m.erase_block_device({}, C)).rejects.toThrow(/not in the agent's device allow-list/)
  })

  it('special filesystems (a VMFS partition) are guarded unless the guard is off or the node allows wiping them', async () => {
    await writeGpt(A, 'AA31E02A-400F-11DB-9590-000C2911D1B8')
    await expect(manager([A]).erase_devices_metadata({}, [])).rejects.toThrow(/VMware VMFS Partition \(GPT\)/)
    expect((await run('blkid', ['-p', '-o', 'export', A])).stdout).toContain('PTTYPE=gpt')
    expect(await manager([A]).erase_devices_metadata({driver_info: {wipe_special_filesystems: true}}, [])).toBeNull()
    await writeGpt(A, 'AA31E02A-400F-11DB-9590-000C2911D1B8')
    expect(await manager([A], {guardSpecialFilesystems: false}).erase_devices_metadata({}, [])).toBeNull()
    expect((await run('blkid', ['-p', A], {allowFailure: true})).exitCode).toBe(2)
  })

  it('erase_devices_express falls back to a metadata erase on non-NVMe devices', async () => {
    await writeGpt(A)
    expect(await manager([A]).erase_devices_express({}, [])).toBeNull()
    expect((await run('blkid', ['-p', A], {allowFailure: true})).exitCode).toBe(2)
    expect(isZero(readAt(A, 64 * MIB - 33 * 512, 33 * 512))).toBe(true)
  })
})

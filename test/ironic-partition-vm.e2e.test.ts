/**
 * A real Ironic 21.4 deploys a PARTITION image in UEFI mode onto a qemu VM running the tiny ramdisk
 * (test/helpers/vm-lab.ts): instance_info with kernel, ramdisk and root_gb (what makes it a
 * partition image for 21.4), capabilities boot_mode:uefi, a config drive. Ironic sends write_image
 * with image_type "partition", get_partition_uuids, then image.install_bootloader with the root and
 * ESP UUIDs; the agent (booted under OVMF, so efibootmgr has firmware) partitions the disk, streams
 * the root filesystem into its partition, copies the image's EFI loader into the empty ESP and writes
 * the NVRAM entry. The node ends `active`; the disk is checked from the host afterwards.
 */
import {mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import {gzipSync} from 'node:zlib'
import {createHash, randomUUID} from 'node:crypto'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import type {DiskSpec} from '../src/boot/qemu.js'
import {run} from '../src/common/exec.js'
import {readAt} from './helpers/disk-files.js'
import {join, sha256File} from './helpers/image.js'
import {startLab, type Lab} from './helpers/vm-lab.js'

const MAC = '52:54:00:5e:00:21'
const MIB = 1024 * 1024

let dir: string
let lab: Lab
let uuid: string
let disks: DiskSpec[]
let rootImg: string
let rootUuid: string

beforeAll(async () => {
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-ironic-part-'))
  await run('npm', ['run', 'build'], {timeoutMs: 300_000}) // the ramdisk carries the current agent
  // No automated cleaning: this test is about the deploy (cleaning has its own VM tests).
  lab = await startLab({dir, heartbeatTimeout: 30, ironicConfig: {conductor: {automated_clean: 'false'}}})
  disks = [{path: join(dir, 'disk0.img'), size: '5G', bus: 'virtio'}]
  await run('qemu-img', ['create', '-q', '-f', 'raw', disks[0]!.path, '5G'])

  // The partition image: an ext4 root filesystem with a GRUB EFI loader under /boot/efi.
  const root = join(dir, 'rootfs')
  mkdirSync(join(root, 'boot/efi/EFI/BOOT'), {recursive: true})
  mkdirSync(join(root, 'etc'), {recursive: true})
  writeFileSync(join(root, 'etc/hostname'), 'ironic-partition\n')
  writeFileSync(join(dir, 'grub.cfg'), 'echo rdk-partition\nhalt\n')
  await run('grub-mkstandalone', [
    '-O',
    'x86_64-efi',
    '-o',
    join(root, 'boot/efi/EFI/BOOT/BOOTX64.EFI'),
    '--modules=echo halt',
    `boot/grub/grub.cfg=${join(dir, 'grub.cfg')}`,
  ])
  rootUuid = randomUUID()
  rootImg = join(dir, 'root.img')
  await run('mkfs.ext4', ['-q', '-F', '-L', 'root', '-U', rootUuid, '-d', root, rootImg, '40M'])
  writeFileSync(join(dir, 'vmlinuz'), 'not used: local boot')
  writeFileSync(join(dir, 'initrd'), 'not used: local boot')

  const node = await lab.ironic.createNode({
    name: 'rdk-vm-partition',
    properties: {root_device: {name: '/dev/vda'}, capabilities: 'boot_mode:uefi', local_gb: 4},
  })
  uuid = node.uuid
  await lab.ironic.createPort(uuid, MAC)
  await lab.ironic.setProvisionState(uuid, 'manage')
  await lab.ironic.waitForProvisionState(uuid, ['manageable'], {timeoutMs: 60_000})
  await lab.ironic.setProvisionState(uuid, 'provide')
  await lab.ironic.waitForProvisionState(uuid, ['available'], {timeoutMs: 60_000})
}, 900_000)

let passed = false
afterAll(async () => {
  await lab?.stop()
  if (dir && passed) rmSync(dir, {recursive: true, force: true})
  else if (dir) console.error(`ironic-vm-partition e2e: logs kept in ${dir}`)
})

describe('Ironic 21.4 deploys a partition image in UEFI mode (VM)', () => {
  it('write_image (partition), get_partition_uuids, install_bootloader: the node is active, the disk laid out', async () => {
    const cd = join(dir, 'cd')
    mkdirSync(join(cd, 'openstack/latest'), {recursive: true})
    writeFileSync(join(cd, 'openstack/latest/meta_data.json'), '{"uuid": "x"}')
    await run('xorriso', ['-as', 'mkisofs', '-quiet', '-V', 'config-2', '-o', join(dir, 'cd.iso'), cd])
    const iso = readFileSync(join(dir, 'cd.iso'))
    await lab.ironic.api('PATCH', `/v1/nodes/${uuid}`, [
      {op: 'add', path: '/instance_info/image_source', value: lab.serve('/root.img', rootImg)},
      {op: 'add', path: '/instance_info/image_os_hash_algo', value: 'sha256'},
      {op: 'add', path: '/instance_info/image_os_hash_value', value: await sha256File(rootImg)},
      {op: 'add', path: '/instance_info/kernel', value: lab.serve('/vmlinuz', join(dir, 'vmlinuz'))},
      {op: 'add', path: '/instance_info/ramdisk', value: lab.serve('/initrd', join(dir, 'initrd'))},
      {op: 'add', path: '/instance_info/root_gb', value: 1},
      {op: 'add', path: '/instance_info/swap_mb', value: 64},
    ])
    const r = await lab.runPhase(uuid, {
      target: 'active',
      extra: {configdrive: gzipSync(iso).toString('base64')},
      until: ['active'],
      // -no-shutdown: after standby.power_off the guest is off but qemu stays (as a powered-off
      // machine) until the phase ends, so the lab does not take the exit for a crash.
      boot: {mac: MAC, disks, uefi: true, qemuArgs: ['-no-shutdown']},
      timeoutMs: 480_000,
    })
    expect(r.node.last_error).toBeNull()
    // The agent saw what Ironic sends for a partition image, and set up UEFI boot.
    expect(r.serial).toMatch(/"msg":"preparing partition image".*"rootMb":1024.*"diskLabel":"gpt","bootMode":"uefi"/)
    expect(r.serial).toMatch(/"msg":"command succeeded","command":"image.install_bootloader"/)
    expect(r.serial).toMatch(/"msg":"adding a UEFI boot entry".*"loader":"\\\\EFI\\\\BOOT\\\\BOOTX64.EFI","label":"ironic1"/)
    expect(r.node.driver_internal_info.is_whole_disk_image).toBe(false)

    const disk = disks[0]!.path
    const table = JSON.parse((await run('sfdisk', ['--json', disk])).stdout).partitiontable
    expect(table.label).toBe('gpt')
    const parts = table.partitions as {start: number; size: number; type: string}[]
    expect(parts.map((p) => [p.start / 2048, p.size / 2048])).toEqual([
      [1, 550],
      [551, 64],
      [615, 1],
      [616, 1024],
    ])
    expect(parts[0]!.type).toBe('C12A7328-F81F-11D2-BA4B-00A0C93EC93B')
    // root (last): exactly the image; config drive: the ISO.
    const img = readFileSync(rootImg)
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
    expect(sha(await readAt(disk, 616 * MIB, img.length))).toBe(sha(img))
    expect((await readAt(disk, 615 * MIB, iso.length)).equals(iso)).toBe(true)
    // swap_mb: a swap signature made by the ramdisk's mkswap.
    expect((await run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', '-O', String(551 * MIB), disk])).stdout.trim()).toBe('swap')
    // The ESP now holds the image's loader (vfat, read with mtools: no mount needed).
    const esp = `${disk}@@${1 * MIB}`
    const listing = (await run('mdir', ['-i', esp, '-b', '::/EFI/BOOT'])).stdout
    expect(listing).toMatch(/BOOTX64\.EFI/i)
    passed = true
  }, 600_000)
})

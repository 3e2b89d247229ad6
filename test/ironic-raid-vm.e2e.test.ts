/**
 * A real Ironic 21.4 deploys onto software RAID: the tiny ramdisk in qemu with UEFI (OVMF) and two
 * virtio disks, driven through test/helpers/vm-lab.ts (fake power/boot/management, the VM booted
 * whenever Ironic waits for an agent).
 *
 * The node has capabilities boot_mode:uefi and target_raid_config RAID-1 MAX (software); the deploy
 * request (API ≥ 1.69) carries the deploy step raid.apply_configuration. The agent then builds md0
 * (GPT holders with 551 MiB of ESP room), write_image puts a whole-disk GPT image with its own ESP
 * on md0, and Ironic's configure_local_boot calls image.install_bootloader with software_raid=true:
 * an ESP on every holder, mirrored (metadata 1.0), filled from the image's ESP, one efibootmgr entry
 * per holder. The node must end `active` with Ironic's raid_config set from the step's result; the
 * host then checks both disk files (read-only): GPT with the RAID partition and an ESP holding the
 * image's loader.
 *
 * Ironic 21.4 does not send install_bootloader's software_raid (agent_client.install_bootloader
 * passes only root_uuid, efi_system_part_uuid, prep_boot_part_uuid, target_boot_mode): like IPA, the
 * agent must see that the install device is an md array (hardware/raid.ts isMdDevice).
 */
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {randomBytes} from 'node:crypto'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import type {DiskSpec} from '../src/boot/qemu.js'
import {gptPartitions, makeUefiImage, readAt} from './helpers/disk-files.js'
import {MIB, sha256File} from './helpers/image.js'
import {startLab, type Lab} from './helpers/vm-lab.js'

const MAC = '52:54:00:5e:72:01'
const IMG_MIB = 48
const ESP_MIB = 16
const RAID1_MAX = {logical_disks: [{size_gb: 'MAX', raid_level: '1', controller: 'software', is_root_volume: true}]}
const LOADER = randomBytes(64 * 1024)

describe('real Ironic: a UEFI deploy onto software RAID-1 (apply_configuration deploy step)', () => {
  let dir: string
  let lab: Lab
  let uuid: string
  let disks: DiskSpec[]
  let ok = false
  // Below the 4 GiB root-disk guess: do not make every boot wait 30 s for one.
  // At the end of the deploy Ironic powers the node off through the agent; -no-shutdown keeps qemu
  // (stopped) until Ironic's fake power-on and the node's `active`, as a real machine stays there.
  const boot = () => ({mac: MAC, disks, uefi: true, extraArgs: ['ipa-disk-wait-attempts=1'], qemuArgs: ['-no-shutdown']})

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-ironic-vm-raid-'))
    lab = await startLab({dir, heartbeatTimeout: 30})
    disks = [
      {path: join(dir, 'disk0.img'), size: '2G', bus: 'virtio'},
      {path: join(dir, 'disk1.img'), size: '2G', bus: 'virtio'},
    ]
    for (const d of disks) await run('qemu-img', ['create', '-q', '-f', 'raw', d.path, String(d.size)])
    const node = await lab.ironic.createNode({name: 'rdk-vm-raid', properties: {capabilities: 'boot_mode:uefi'}, fields: {raid_interface: 'agent'}})
    uuid = node.uuid
    await lab.ironic.createPort(uuid, MAC)
    await lab.ironic.api('PUT', `/v1/nodes/${uuid}/states/raid`, RAID1_MAX, {expect: [204]})
    await lab.ironic.setProvisionState(uuid, 'manage')
    await lab.ironic.waitForProvisionState(uuid, ['manageable'], {timeoutMs: 60_000})
  }, 900_000)

  afterAll(async () => {
    await lab?.stop()
    if (dir && ok) await rm(dir, {recursive: true, force: true})
    else if (dir) console.error(`ironic-vm-raid e2e: logs kept in ${dir}`)
  })

  it('cleans, then deploys with apply_configuration: md0 over both disks, ESP mirrored on both, node active', async () => {
    const cleaned = await lab.runPhase(uuid, {target: 'provide', until: ['available'], boot: boot(), timeoutMs: 300_000})
    expect(cleaned.node.last_error).toBeNull()

    const image = await makeUefiImage(dir, {imageMib: IMG_MIB, espMib: ESP_MIB, loader: LOADER})
    await lab.ironic.api('PATCH', `/v1/nodes/${uuid}`, [
      {op: 'add', path: '/instance_info/image_source', value: lab.serve('/uefi.raw', image)},
      {op: 'add', path: '/instance_info/image_os_hash_algo', value: 'sha256'},
      {op: 'add', path: '/instance_info/image_os_hash_value', value: await sha256File(image)},
      // Otherwise Ironic asks Glance for the image's rootfs_uuid (there is no Glance here).
      {op: 'add', path: '/instance_info/image_rootfs_uuid', value: '6f4bd1b3-2a61-4c1a-8a3e-3d1c1f0b7a10'},
    ])
    const deploySteps = [{interface: 'raid', step: 'apply_configuration', args: {raid_config: RAID1_MAX, delete_existing: true}, priority: 90}]
    const r = await lab.runPhase(uuid, {target: 'active', extra: {deploy_steps: deploySteps}, until: ['active'], boot: boot(), timeoutMs: 540_000})
    expect(r.node.last_error).toBeNull()
    expect(r.serial).toMatch(/Successfully created Software RAID/)
    expect(r.serial).toMatch(/written to device \/dev\/md0/)
    expect(r.serial).toMatch(/UEFI boot entries added for the software RAID holders/)
    // Ironic stored the agent's result of apply_configuration as the node's RAID config.
    expect(r.node.raid_config.logical_disks).toEqual([expect.objectContaining({raid_level: '1', controller: 'software', size_gb: 'MAX'})])

    for (const d of disks) {
      const parts = await gptPartitions(d.path)
      const raid = parts.find((p) => p.code === 'FD00' || p.code === '8300')
      const esp = parts.find((p) => p.code === 'EF00')
      expect(raid, `RAID partition on ${d.path}: ${JSON.stringify(parts)}`).toBeDefined()
      expect(esp, `ESP on ${d.path}: ${JSON.stringify(parts)}`).toBeDefined()
      // The RAID partition starts after the 551 MiB left for the ESP; the ESP sits in that room.
      expect(raid!.start * 512).toBe(551 * MIB)
      expect(esp!.name).toMatch(/^uefi-holder-\d$/)
      expect((esp!.end + 1) * 512).toBeLessThanOrEqual(551 * MIB)
      // metadata 1.0 keeps the superblock at the end: the member is a plain vfat the firmware can read.
      const espOffset = esp!.start * 512
      const {stdout} = await run('mdir', ['-b', '-i', `${d.path}@@${espOffset}`, '::/EFI/BOOT'])
      expect(stdout).toMatch(/BOOTX64\.EFI/i)
      const copy = join(dir, `loader-${esp!.start}-${d.path.slice(-9, -4)}.efi`)
      await run('mcopy', ['-n', '-i', `${d.path}@@${espOffset}`, '::/EFI/BOOT/BOOTX64.EFI', copy])
      expect((await readFile(copy)).equals(LOADER)).toBe(true)
      // the RAID member carries a v1.2 superblock 4 KiB in
      expect((await readAt(d.path, raid!.start * 512 + 4096, 4)).readUInt32LE(0)).toBe(0xa92b4efc)
    }
    ok = true
  }, 900_000)
})

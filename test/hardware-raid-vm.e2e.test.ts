/**
 * Software RAID for real, in a qemu VM (the host has no md driver, no UEFI): the tiny image boots
 * under OVMF with two virtio disks and the agent is driven directly over /v1/commands (standalone,
 * agent token). The node asks for UEFI (capabilities boot_mode:uefi).
 *
 *  1. clean step create_configuration, target_raid_config RAID-1 MAX → /proc/mdstat (from the
 *     log.collect_system_logs bundle) and the inventory show md0 over both disks (GPT holders, the
 *     RAID partition at 551 MiB);
 *  2. deploy step write_image of a whole-disk GPT image with its own ESP from a loopback image server
 *     → it lands on /dev/md0; the VM is powered off and the HOST reads both raw disk files: the md
 *     superblock (v1.2, 4 KiB into the RAID partition) names the array, and the image is at its data
 *     offset on both disks;
 *  3. the VM boots again: the agent re-assembles the array at start; image.install_bootloader in BIOS
 *     mode fails clearly (the image has no grub-install); with UEFI and software_raid=true it makes an ESP on each holder, mirrors them (metadata 1.0), copies the image's
 *     ESP in and adds an efibootmgr entry per holder; the host finds the image's loader in the ESP of
 *     both disk files;
 *  4. delete_configuration leaves no md device, superblock or partition table (checked on the host
 *     after power-off).
 */
import {randomBytes} from 'node:crypto'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {gunzipSync} from 'node:zlib'
import tar from 'tar-stream'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {startVm, type Vm} from '../src/boot/qemu.js'
import {gptPartitions, makeUefiImage, readAt} from './helpers/disk-files.js'
import {MIB, sha256File, startImageServer, type ImageServer} from './helpers/image.js'

const TOKEN = 'rdk-raid-token-0123456789abcdefghijklmnopqrstu'
const DISK_SIZE = 1024 * MIB
const IMAGE_MIB = 40
const ESP_MIB = 16
const RAID1_MAX = {logical_disks: [{size_gb: 'MAX', raid_level: '1', controller: 'software'}]}
const NODE = {uuid: 'raid-node', properties: {capabilities: 'boot_mode:uefi'}, instance_info: {}, driver_internal_info: {}, target_raid_config: RAID1_MAX}
const LOADER = randomBytes(64 * 1024)

interface Command {
  command_status: string
  command_error: unknown
  command_result: Record<string, any> | null
}

/** The v1.2 md superblock 4 KiB into a member, as the kernel's struct mdp_superblock_1 lays it out. */
function parseSuperblock(buf: Buffer): {
  magic: number
  major: number
  name: string
  level: number
  raidDisks: number
  dataOffset: number
  dataSize: number
  superOffset: number
} {
  return {
    magic: buf.readUInt32LE(0),
    major: buf.readUInt32LE(4),
    name: buf.subarray(32, 64).toString('latin1').replace(/\0.*$/s, ''),
    level: buf.readUInt32LE(72),
    raidDisks: buf.readUInt32LE(92),
    dataOffset: Number(buf.readBigUInt64LE(128)),
    dataSize: Number(buf.readBigUInt64LE(136)),
    superOffset: Number(buf.readBigUInt64LE(144)),
  }
}

async function untarGz(b64: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>()
  const ex = tar.extract()
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = []
      stream.on('data', (c: unknown) => chunks.push(c as Buffer))
      stream.on('end', () => {
        files.set(header.name, Buffer.concat(chunks))
        next()
      })
      stream.resume()
    })
    ex.on('finish', resolve)
    ex.on('error', reject)
  })
  ex.end(gunzipSync(Buffer.from(b64, 'base64')))
  await done
  return files
}

describe('software RAID in a VM: create_configuration, write_image onto md0, delete_configuration', () => {
  let dir: string
  let out: string
  let srv: ImageServer
  let vm: Vm | undefined
  let cmdline: string
  let imagePath: string
  const disks = () => [join(dir, 'disk0.img'), join(dir, 'disk1.img')]
  let mdSize = 0
  let partStart = 0

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-raid-vm-'))
    out = join(dir, 'out')
    // The image carries the agent in dist/ (npm run build first).
    await run(process.execPath, ['bin/run.js', 'build', '--output', out, '--json'], {timeoutMs: 900_000})
    cmdline = JSON.parse(await readFile(join(out, 'rdk-tiny.manifest.json'), 'utf8')).kernelCmdline ?? ''
    imagePath = await makeUefiImage(dir, {imageMib: IMAGE_MIB, espMib: ESP_MIB, loader: LOADER, ext4Root: true})
    srv = await startImageServer()
    srv.files.set('/uefi.raw', imagePath)
  }, 900_000)
  afterAll(async () => {
    await vm?.stop()
    await srv?.close()
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  const boot = async (): Promise<Vm> => {
    const v = await startVm({
      kernel: join(out, 'rdk-tiny.kernel'),
      initrd: join(out, 'rdk-tiny.initramfs'),
      // 1 GiB disks are below the 4 GiB a root disk guess needs: do not wait 30 s for one at start.
      append: `${cmdline} ipa-standalone=1 ipa-agent-token=${TOKEN} ipa-disk-wait-attempts=1`,
      memoryMiB: 1024,
      uefi: true,
      disks: disks().map((path) => ({path, size: DISK_SIZE, bus: 'virtio' as const})),
      portForwards: [{guestPort: 9999, hostPort: 0}],
    })
    vm = v
    expect((await v.waitForHttp(9999, '/v1/status', 240_000)).status).toBe(200)
    return v
  }

  const command = async (name: string, params: Record<string, unknown>): Promise<Command> => {
    const res = await fetch(`http://127.0.0.1:${vm!.hostPort(9999)}/v1/commands/?wait=true&agent_token=${TOKEN}`, {
      method: 'POST',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify({name, params}),
    })
    const body = (await res.json()) as Command
    expect(res.status, JSON.stringify(body)).toBe(200)
    return body
  }
  const succeeded = (c: Command): Record<string, any> => {
    expect(c.command_status, JSON.stringify(c.command_error)).toBe('SUCCEEDED')
    return c.command_result!
  }
  const mdstat = async (): Promise<string> => {
    const logs = succeeded(await command('log.collect_system_logs', {}))
    const files = await untarGz(logs.system_logs)
    const name = [...files.keys()].find((n) => n.endsWith('proc_mdstat'))
    return name ? files.get(name)!.toString('utf8') : ''
  }
  const inventoryDisks = async (): Promise<{name: string; size: number}[]> =>
    (succeeded(await command('poll.get_hardware_info', {})) as {disks: {name: string; size: number}[]}).disks
  const withSerial = async (fn: () => Promise<void>): Promise<void> => {
    try {
      await fn()
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial ---\n${vm?.serialLog().slice(-5000)}`)
    }
  }

  it('create_configuration (clean step, RAID-1 MAX, UEFI): md0 over both disks in /proc/mdstat and the inventory', async () => {
    await boot()
    await withSerial(async () => {
      const step = {step: 'create_configuration', interface: 'raid', priority: 0, reboot_requested: false, abortable: true}
      const result = succeeded(await command('clean.execute_clean_step', {step, node: NODE, ports: []}))
      expect(result.clean_result).toEqual(RAID1_MAX)
      const stat = await mdstat()
      expect(stat).toMatch(/^md0 : active (\(auto-read-only\) )?raid1 /m)
      const line = /^md0 : .*$/m.exec(stat)![0]
      expect(line).toMatch(/ vda1\[\d\]/)
      expect(line).toMatch(/ vdb1\[\d\]/)
      expect(stat).toMatch(/\[2\/2\] \[UU\]/)
      const blocks = Number(/^md0 : .*\n\s+(\d+) blocks/m.exec(stat)![1])
      const names = (await inventoryDisks()).map((d) => d.name)
      expect(names).toEqual(expect.arrayContaining(['/dev/vda', '/dev/vdb', '/dev/md0']))
      mdSize = (await inventoryDisks()).find((d) => d.name === '/dev/md0')!.size
      expect(mdSize).toBe(blocks * 1024)
      // RAID-1 over two partitions from 551 MiB (ESP room) to the end: that, less md metadata
      expect(mdSize).toBeGreaterThan(DISK_SIZE - 551 * MIB - 140 * MIB)
      expect(mdSize).toBeLessThan(DISK_SIZE - 551 * MIB)
    })
  }, 600_000)

  it('write_image (deploy step) goes to /dev/md0; powered off, both disk files hold the image at the md data offset', async () => {
    expect(vm).toBeDefined()
    await withSerial(async () => {
      const sha = await sha256File(imagePath)
      const imageInfo = {id: 'raid-image', urls: [`http://10.0.2.2:${srv.port}/uefi.raw`], os_hash_algo: 'sha256', os_hash_value: sha, disk_format: 'raw'}
      const step = {step: 'write_image', interface: 'deploy', priority: 0, args: {image_info: imageInfo, configdrive: null}}
      const result = succeeded(await command('deploy.execute_deploy_step', {step, node: NODE, ports: []}))
      expect(result.deploy_result.result).toMatch(/^prepare_image: image \(raid-image\) written to device \/dev\/md0 /)
    })
    await vm!.stop()
    vm = undefined
    const image = await readFile(imagePath)
    for (const disk of disks()) {
      const parts = await gptPartitions(disk)
      expect(parts, `GPT of ${disk}`).toHaveLength(1)
      partStart = parts[0]!.start * 512
      expect(partStart).toBe(551 * MIB)
      const sb = parseSuperblock(await readAt(disk, partStart + 4096, 4096))
      expect(sb.magic, `md superblock magic on ${disk}`).toBe(0xa92b4efc)
      expect(sb.major).toBe(1)
      expect(sb.superOffset).toBe(8) // v1.2: 4 KiB from the start of the member
      expect(sb.name).toMatch(/(^|:)md0$/)
      expect(sb.level).toBe(1)
      expect(sb.raidDisks).toBe(2)
      expect(sb.dataSize * 512).toBeGreaterThanOrEqual(mdSize)
      const data = await readAt(disk, partStart + sb.dataOffset * 512, image.length)
      // The GPT headers changed (write_image moves the backup GPT to the end of md0: sgdisk -e);
      // everything between them, the partitions, is the image byte for byte.
      expect(data.subarray(512, 520).toString('latin1')).toBe('EFI PART')
      const body = (b: Buffer) => b.subarray(MIB, image.length - 33 * 512)
      expect(body(data).equals(body(image)), `image bytes at the md data offset of ${disk}`).toBe(true)
    }
  }, 600_000)

  it('after a reboot the array is assembled again; install_bootloader: BIOS fails without grub-install in the image, UEFI mirrors an ESP with the image loader on both disks', async () => {
    await boot()
    await withSerial(async () => {
      const before = await mdstat()
      expect(before).toMatch(/^md\d+ : active .*raid1 /m)
      expect((await inventoryDisks()).some((d) => /^\/dev\/md\d+$/.test(d.name))).toBe(true)
      // BIOS needs GRUB from the image, which has none: a clear error, and the holders are left alone.
      const bios = await command('image.install_bootloader', {root_uuid: null, target_boot_mode: 'bios', software_raid: true})
      expect(bios.command_status).toBe('FAILED')
      expect(JSON.stringify(bios.command_error)).toMatch(/The image on \/dev\/md\d+ has no grub-install or grub2-install .*only the image can provide it/)
      // What Ironic's configure_local_boot asks for (Ironic 21.4 itself does not send software_raid).
      const params = {root_uuid: null, efi_system_part_uuid: null, target_boot_mode: 'uefi', software_raid: true}
      succeeded(await command('image.install_bootloader', params))
      const stat = await mdstat()
      // the mirrored ESP: a second RAID-1 over the holders' new partitions
      expect(stat.match(/^md\d+ : active .*raid1 /gm)).toHaveLength(2)
      const logs = await untarGz(succeeded(await command('log.collect_system_logs', {})).system_logs)
      const agentLog = logs.get([...logs.keys()].find((n) => n.endsWith('agent.log'))!)!.toString('utf8')
      for (const holder of ['/dev/vda', '/dev/vdb']) {
        expect(agentLog).toMatch(new RegExp(`adding a UEFI boot entry.*"disk":"${holder}".*EFI\\\\\\\\BOOT\\\\\\\\BOOTX64\\.EFI`))
      }
    })
    // Read while the VM runs (one boot less under TCG): the ESP was written with conv=fsync, so it
    // has reached the disk files.
    for (const disk of disks()) {
      const parts = await gptPartitions(disk)
      const esp = parts.find((p) => p.code === 'EF00')
      expect(esp, `ESP on ${disk}: ${JSON.stringify(parts)}`).toBeDefined()
      expect(esp!.name).toMatch(/^uefi-holder-\d$/)
      expect((esp!.end + 1) * 512).toBeLessThanOrEqual(551 * MIB)
      // metadata 1.0 keeps the md superblock at the end: the member is a plain vfat for the firmware
      const copy = join(dir, `loader-${disk.slice(-9, -4)}.efi`)
      await run('mcopy', ['-n', '-i', `${disk}@@${esp!.start * 512}`, '::/EFI/BOOT/BOOTX64.EFI', copy])
      expect((await readFile(copy)).equals(LOADER), `the image's loader in the ESP of ${disk}`).toBe(true)
    }
  }, 600_000)

  it('delete_configuration leaves no md device, superblock or partition', async () => {
    if (!vm) await boot()
    await withSerial(async () => {
      expect(await mdstat()).toMatch(/^md\d+ : active /m)
      const step = {step: 'delete_configuration', interface: 'raid', priority: 0, reboot_requested: false, abortable: true}
      const result = succeeded(await command('clean.execute_clean_step', {step, node: NODE, ports: []}))
      expect(result.clean_result).toBeNull()
      expect(await mdstat()).not.toMatch(/^md\d+ :/m)
      expect((await inventoryDisks()).map((d) => d.name).sort()).toEqual(['/dev/vda', '/dev/vdb'])
    })
    await vm!.stop()
    vm = undefined
    for (const disk of disks()) {
      expect(await gptPartitions(disk), `partition table on ${disk}`).toEqual([])
      expect(partStart).toBeGreaterThan(0)
      const sb = parseSuperblock(await readAt(disk, partStart + 4096, 4096))
      expect(sb.magic).not.toBe(0xa92b4efc)
    }
  }, 600_000)
})

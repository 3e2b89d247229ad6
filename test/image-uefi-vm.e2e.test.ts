/**
 * A partition image deployed in UEFI mode inside a qemu VM (OVMF with its own persistent variable
 * store), then booted from the disk alone: proof that the partition table, the ESP, the loader copied
 * from the image and the efibootmgr NVRAM entry all work.
 *
 * 1. The tiny ramdisk (current agent code) boots under OVMF with one 5 GiB virtio disk,
 *    ipa-standalone=1 and an agent token; /v1/commands is driven directly (no Ironic).
 * 2. standby.prepare_image: an ext4 root filesystem image (served from 127.0.0.1, which the guest
 *    reaches as 10.0.2.2) whose /boot/efi/EFI/BOOT/BOOTX64.EFI is a GRUB (grub-mkstandalone) that
 *    prints a marker; deploy_boot_mode uefi, disk_label gpt.
 * 3. image.install_bootloader: the ESP is empty, so the loader is copied from the root filesystem,
 *    and efibootmgr writes the boot entry (the agent runs it: the guest has /sys/firmware/efi).
 * 4. standby.power_off; a second VM boots the same disk with the same variable store and no
 *    kernel: OVMF starts the "ironic1" entry and the GRUB marker appears on the serial console.
 */
import {randomUUID} from 'node:crypto'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {open} from 'node:fs/promises'
import os from 'node:os'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {startVm, type Vm} from '../src/boot/qemu.js'
import {run} from '../src/common/exec.js'
import {buildTiny} from './helpers/artefacts.js'
import {join, sha256File, startImageServer, type ImageServer} from './helpers/image.js'

const TOKEN = 'rdk-uefi-partition-e2e-token-0123456789abcdef'
const MARKER = 'RDK-PARTITION-IMAGE-GRUB-BOOTED'

let dir: string
let srv: ImageServer
let kernel: string
let initrd: string
let cmdline: string
let rootUuid: string
let rootSha: string

beforeAll(async () => {
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-uefi-vm-'))
  srv = await startImageServer()
  await run('npm', ['run', 'build'], {timeoutMs: 300_000})
  const r = await buildTiny(join(dir, 'build'), ['kernel', 'initramfs'])
  const find = (suffix: string) => r.artefacts.find((a) => a.path.endsWith(suffix))!.path
  kernel = find('.kernel')
  initrd = find('.initramfs')
  cmdline = String(JSON.parse(readFileSync(find('.manifest.json'), 'utf8')).kernelCmdline ?? '')

  // The partition image: an ext4 root filesystem carrying its UEFI loader under /boot/efi.
  const grubCfg = join(dir, 'grub.cfg')
  writeFileSync(
    grubCfg,
    ['insmod serial', 'serial --unit=0 --speed=115200', 'terminal_output --append serial', `echo ${MARKER}`, 'sleep 1', 'halt', ''].join('\n'),
  )
  const root = join(dir, 'rootfs')
  mkdirSync(join(root, 'boot/efi/EFI/BOOT'), {recursive: true})
  mkdirSync(join(root, 'etc'), {recursive: true})
  writeFileSync(join(root, 'etc/hostname'), 'uefi-partition\n')
  await run('grub-mkstandalone', [
    '-O',
    'x86_64-efi',
    '-o',
    join(root, 'boot/efi/EFI/BOOT/BOOTX64.EFI'),
    '--modules=serial echo halt sleep',
    `boot/grub/grub.cfg=${grubCfg}`,
  ])
  rootUuid = randomUUID()
  await run('mkfs.ext4', ['-q', '-F', '-L', 'root', '-U', rootUuid, '-d', root, join(dir, 'root.img'), '48M'])
  srv.files.set('/root.img', join(dir, 'root.img'))
  rootSha = await sha256File(join(dir, 'root.img'))
}, 900_000)

afterAll(async () => {
  await srv?.close()
  if (dir) rmSync(dir, {recursive: true, force: true})
})

interface CommandResult {
  command_status: string
  command_result: Record<string, unknown> | null
  command_error: {type: string; details: string} | null
}

async function command(port: number, name: string, params: Record<string, unknown>): Promise<CommandResult> {
  const res = await fetch(`http://127.0.0.1:${port}/v1/commands/?wait=true&agent_token=${TOKEN}`, {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({name, params}),
    signal: AbortSignal.timeout(240_000),
  })
  const body = (await res.json()) as CommandResult
  return body
}

describe('partition image, UEFI, in a VM', () => {
  it('deploys, writes the NVRAM entry, and the disk boots on its own through it', async () => {
    const vars = join(dir, 'OVMF_VARS.fd')
    const disk = join(dir, 'disk.img')
    let vm: Vm | undefined = await startVm({
      kernel,
      initrd,
      append: `${cmdline} ipa-standalone=1 ipa-agent-token=${TOKEN}`,
      memoryMiB: 1024,
      uefiVars: vars,
      disks: [{path: disk, size: '5G'}],
      portForwards: [{guestPort: 9999, hostPort: 0}],
    })
    const vars0 = readFileSync(vars)
    try {
      await vm.waitForHttp(9999, '/v1/status', 240_000)
      expect(vm.serialLog()).not.toMatch(/could not mount efivarfs/)
      const port = vm.hostPort(9999)
      const imageInfo = {
        id: 'root.img',
        urls: [`http://10.0.2.2:${srv.port}/root.img`],
        disk_format: 'raw',
        os_hash_algo: 'sha256',
        os_hash_value: rootSha,
        node_uuid: 'uefi-node',
        image_type: 'partition',
        root_mb: 64,
        swap_mb: 0,
        ephemeral_mb: 0,
        ephemeral_format: null,
        preserve_ephemeral: false,
        deploy_boot_mode: 'uefi',
        boot_option: 'local',
        disk_label: 'gpt',
      }
      const prep = await command(port, 'standby.prepare_image', {image_info: imageInfo, configdrive: null})
      expect(prep.command_error).toBeNull()
      expect(prep.command_status).toBe('SUCCEEDED')
      const msg = String(prep.command_result?.result)
      expect(msg).toMatch(
        new RegExp(
          `^prepare_image: image \\(root\\.img\\) written to device /dev/vda root_uuid=${rootUuid} efi_system_partition_uuid=([0-9A-F]{4}-[0-9A-F]{4})$`,
        ),
      )
      const espUuid = /efi_system_partition_uuid=(\S+)/.exec(msg)![1]!

      const uuids = await command(port, 'standby.get_partition_uuids', {})
      expect(uuids.command_result).toMatchObject({
        'root uuid': rootUuid,
        'efi system partition uuid': espUuid,
        partitions: {'efi system partition': '/dev/vda1', root: '/dev/vda2'},
      })

      const bl = await command(port, 'image.install_bootloader', {
        root_uuid: rootUuid,
        efi_system_part_uuid: espUuid,
        prep_boot_part_uuid: null,
        target_boot_mode: 'uefi',
        software_raid: false,
      })
      expect(bl.command_error).toBeNull()
      expect(bl.command_status).toBe('SUCCEEDED')

      await command(port, 'standby.power_off', {}).catch(() => undefined)
      const exit = await Promise.race([vm.exited, new Promise((r) => setTimeout(() => r('timeout'), 90_000))])
      if (exit === 'timeout') await vm.stop()
      vm = undefined
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial (deploy VM) ---\n${vm?.serialLog().slice(-6000)}`)
    } finally {
      await vm?.stop()
    }

    // The root partition (after the 550 MiB ESP) holds exactly the image: install_bootloader only read it.
    const img = readFileSync(join(dir, 'root.img'))
    const fh = await open(disk, 'r')
    const onDisk = Buffer.alloc(img.length)
    await fh.read(onDisk, 0, img.length, 551 * 1024 * 1024)
    await fh.close()
    expect(onDisk.equals(img)).toBe(true)

    // The variable store now holds the agent's boot entry (labels are UTF-16 in EFI variables).
    const vars1 = readFileSync(vars)
    expect(vars1.equals(vars0)).toBe(false)
    expect(vars1.includes(Buffer.from('ironic1', 'utf16le'))).toBe(true)

    // Boot the disk alone, with the same NVRAM.
    const boot = await startVm({fromDisk: true, uefiVars: vars, disks: [{path: disk}], memoryMiB: 256, noNetwork: true})
    try {
      await boot.waitForSerial(new RegExp(MARKER), 240_000)
      const log = boot.serialLog()
      // OVMF names the entry it starts: the one efibootmgr wrote in the deploy VM.
      expect(log).toMatch(/Boot[0-9A-F]{4} "ironic1"/)
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial (disk boot) ---\n${boot.serialLog().slice(-6000)}`)
    } finally {
      await boot.stop()
    }
  }, 600_000)
})

/**
 * clean_uefi_nvram in a VM under OVMF with its own writable variable store (NVRAM), driven through
 * the agent's API directly (ipa-standalone, no Ironic):
 *
 * 1. The tiny ramdisk boots under OVMF with one virtio disk that carries a GPT with an ESP; the image
 *    has a test-only hardware manager (test/fixtures/hardware-managers-nvram) whose clean steps run
 *    efibootmgr in the guest to create boot entries and to read them back.
 * 2. Three HD() entries are created: a shim loader, a GRUB loader and another loader.
 * 3. clean_uefi_nvram with match_patterns [shim.*\.efi, GRUB.*\.EFI] (case-insensitive) removes the
 *    first two (and drops them from BootOrder); the third and OVMF's own entries (with a fresh
 *    variable store and a direct kernel boot: UiApp, an FvVol() path) stay.
 * 4. clean_uefi_nvram with IPA's default patterns (^HD\( among them) removes the third; OVMF's
 *    entries still stay.
 * 5. A bad match_patterns is refused with IPA's message before anything is removed.
 */
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import os from 'node:os'
import {join, resolve} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {startVm, type Vm} from '../src/boot/qemu.js'
import {run} from '../src/common/exec.js'
import {buildTiny} from './helpers/artefacts.js'

const TOKEN = 'rdk-nvram-e2e-token-0123456789abcdef0123'
const MANAGER = resolve('test/fixtures/hardware-managers-nvram/nvram-test-manager.mjs')

let dir: string
let kernel: string
let initrd: string
let cmdline: string

beforeAll(async () => {
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-nvram-vm-'))
  await run('npm', ['run', 'build'], {timeoutMs: 300_000})
  const r = await buildTiny(join(dir, 'build'), ['kernel', 'initramfs'], [], {}, {hardwareManagers: [MANAGER]})
  const find = (suffix: string) => r.artefacts.find((a) => a.path.endsWith(suffix))!.path
  kernel = find('.kernel')
  initrd = find('.initramfs')
  cmdline = String(JSON.parse(readFileSync(find('.manifest.json'), 'utf8')).kernelCmdline ?? '')
}, 900_000)

afterAll(() => {
  if (dir) rmSync(dir, {recursive: true, force: true})
})

interface CommandResult {
  command_status: string
  command_result: {clean_result: any; clean_step: unknown} | null
  command_error: {type: string; message: string; details: string} | null
}

async function command(port: number, name: string, params: Record<string, unknown>): Promise<CommandResult> {
  const res = await fetch(`http://127.0.0.1:${port}/v1/commands/?wait=true&agent_token=${TOKEN}`, {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({name, params}),
    signal: AbortSignal.timeout(120_000),
  })
  return (await res.json()) as CommandResult
}

const cleanStep = (port: number, step: string, args: Record<string, unknown> = {}) =>
  command(port, 'clean.execute_clean_step', {step: {step, interface: 'deploy', priority: 0, args}, node: {uuid: 'nvram-node'}, ports: []})

interface Entry {
  num: string
  label: string
  path: string
}
/** efibootmgr -v: Boot#### entries and BootOrder. */
function parse(out: string): {entries: Entry[]; order: string[]} {
  const entries: Entry[] = []
  for (const line of out.split('\n')) {
    const m = /^Boot([0-9A-F]{4})\*?\s+(.*?)\t(.*)$/.exec(line)
    if (m) entries.push({num: m[1]!, label: m[2]!.trim(), path: m[3]!})
  }
  const order = /^BootOrder: (.*)$/m.exec(out)?.[1]?.split(',') ?? []
  return {entries, order}
}

describe('clean_uefi_nvram in an OVMF VM', () => {
  it('removes exactly the entries whose device path matches, and drops them from BootOrder', async () => {
    const disk = join(dir, 'disk.img')
    await run('qemu-img', ['create', '-q', '-f', 'raw', disk, '5G'])
    await run('sgdisk', ['-n', '1:2048:+64M', '-t', '1:ef00', '-c', '1:ESP', disk])
    const vm: Vm = await startVm({
      kernel,
      initrd,
      append: `${cmdline} ipa-standalone=1 ipa-agent-token=${TOKEN}`,
      memoryMiB: 1024,
      uefiVars: join(dir, 'OVMF_VARS.fd'),
      disks: [{path: disk}],
      portForwards: [{guestPort: 9999, hostPort: 0}],
    })
    try {
      await vm.waitForHttp(9999, '/v1/status', 300_000)
      const port = vm.hostPort(9999)

      const add = await cleanStep(port, 'rdk_test_add_boot_entries', {
        disk: '/dev/vda',
        partition: 1,
        entries: [
          {label: 'rdk-shim', loader: '\\EFI\\debian\\shimx64.efi'},
          {label: 'rdk-grub', loader: '\\EFI\\rdk\\grubx64.efi'},
          {label: 'rdk-keep', loader: '\\EFI\\rdk\\keeper.efi'},
        ],
      })
      expect(add.command_error, JSON.stringify(add)).toBeNull()
      const before = parse(add.command_result!.clean_result.efibootmgr)
      const byLabel = (p: ReturnType<typeof parse>, label: string) => p.entries.find((e) => e.label === label)
      for (const l of ['rdk-shim', 'rdk-grub', 'rdk-keep']) expect(byLabel(before, l)?.path, add.command_result!.clean_result.efibootmgr).toMatch(/^HD\(1,GPT,/)
      const firmware = before.entries.filter((e) => !e.label.startsWith('rdk-'))
      expect(firmware.length).toBeGreaterThan(0)
      expect(firmware.every((e) => !/^HD\(/.test(e.path))).toBe(true)
      const shim = byLabel(before, 'rdk-shim')!.num
      const grub = byLabel(before, 'rdk-grub')!.num
      const keep = byLabel(before, 'rdk-keep')!.num
      expect(before.order).toEqual(expect.arrayContaining([shim, grub, keep]))

      // 5. a bad pattern list: refused, nothing removed
      const bad = await cleanStep(port, 'clean_uefi_nvram', {match_patterns: 'shim'})
      expect(bad.command_status).toBe('FAILED')
      expect(bad.command_error?.details).toMatch(/The match_patterns must be a list of strings/)

      // 3. shim and grub loaders only
      const first = await cleanStep(port, 'clean_uefi_nvram', {match_patterns: ['shim.*\\.efi', 'GRUB.*\\.EFI']})
      expect(first.command_error, JSON.stringify(first)).toBeNull()
      expect(first.command_result!.clean_result.removed.map((e: {boot: string}) => e.boot).sort()).toEqual([shim, grub].sort())
      const mid = parse((await cleanStep(port, 'rdk_test_boot_entries')).command_result!.clean_result.efibootmgr)
      expect(mid.entries.map((e) => e.num)).not.toContain(shim)
      expect(mid.entries.map((e) => e.num)).not.toContain(grub)
      expect(byLabel(mid, 'rdk-keep')?.num).toBe(keep)
      expect(mid.entries.filter((e) => !e.label.startsWith('rdk-'))).toEqual(firmware)
      expect(mid.order).not.toContain(shim)
      expect(mid.order).not.toContain(grub)
      expect(mid.order).toContain(keep)

      // 4. IPA's defaults: every HD() entry goes, the firmware's own stay
      const second = await cleanStep(port, 'clean_uefi_nvram')
      expect(second.command_error, JSON.stringify(second)).toBeNull()
      expect(second.command_result!.clean_result.removed).toEqual([expect.objectContaining({boot: keep, label: 'rdk-keep', pattern: '^HD\\('})])
      const after = parse((await cleanStep(port, 'rdk_test_boot_entries')).command_result!.clean_result.efibootmgr)
      expect(after.entries.filter((e) => e.label.startsWith('rdk-'))).toEqual([])
      expect(after.entries).toEqual(firmware)
      expect(after.order).not.toContain(keep)
      console.log(`nvram-vm: before ${JSON.stringify(before)}\nafter ${JSON.stringify(after)}`)
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial ---\n${vm.serialLog().slice(-6000)}`)
    } finally {
      await vm.stop()
    }
  }, 600_000)
})

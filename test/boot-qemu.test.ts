/**
 * The parts of `rdk boot` and the tiny flavor's agent pieces that need no VM: the qemu command
 * line, flag parsing, the bzImage → PVH kernel extraction, the accelerator probe's firmware, the
 * element manifests, the agent.json template, and Node's runtime closure.
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it, vi} from 'vitest'
import {resolveConfig} from '../src/agent/config.js'
import {bootFromCli, vmOptionsFromCli, type BootCliOptions} from '../src/boot/cli.js'
import {
  BootError,
  bzImagePayload,
  formatCommand,
  guestUrl,
  hasPvhNote,
  kernelAppend,
  normaliseMac,
  parsePortForward,
  parseSize,
  probeFirmware,
  qemuArgs,
  resolveVm,
  startVm,
  type ResolvedVm,
  type VmOptions,
} from '../src/boot/qemu.js'
import {renderTemplate, templateSpec} from '../src/builder/assemble.js'
import {loadElement} from '../src/builder/elements.js'
import {finishSpec} from '../src/builder/spec.js'
import {run, ToolMissingError, which} from '../src/common/exec.js'
import {addNodeRuntime, NODE_IMAGE_PATH} from '../src/flavors/tiny/node.js'

const REPO = fileURLToPath(new URL('..', import.meta.url))

function resolved(over: Partial<ResolvedVm> = {}): ResolvedVm {
  return {
    qemu: 'qemu-system-x86_64',
    kernel: '/k/vmlinuz',
    pvh: false,
    accel: 'tcg',
    accelReason: 'test',
    forwards: [{guestPort: 9999, hostPort: 40000}],
    disks: [],
    ...over,
  }
}

function args(opts: Partial<VmOptions> = {}, r: Partial<ResolvedVm> = {}): string[] {
  return qemuArgs({kernel: '/k/vmlinuz', initrd: '/k/initrd', ...opts}, resolved(r))
}

const valuesAfter = (a: string[], flag: string) => a.filter((_, i) => a[i - 1] === flag)

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rdk-boot-unit-'))
})
afterAll(async () => {
  await rm(dir, {recursive: true, force: true})
})

describe('qemu command line', () => {
  it('forwards guest ports from 127.0.0.1 only, with user networking and a fixed MAC', () => {
    const a = args(
      {},
      {
        forwards: [
          {guestPort: 9999, hostPort: 40000},
          {guestPort: 22, hostPort: 2222},
        ],
      },
    )
    expect(valuesAfter(a, '-netdev')).toEqual(['user,id=n0,hostfwd=tcp:127.0.0.1:40000-:9999,hostfwd=tcp:127.0.0.1:2222-:22'])
    expect(valuesAfter(a, '-device')).toContain('virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile=')
    expect(a.join(' ')).not.toMatch(/hostfwd=tcp::|0\.0\.0\.0/)
  })

  it('restricted networking, no network, a chosen MAC', () => {
    expect(valuesAfter(args({restrictNetwork: true}), '-netdev')[0]).toMatch(/^user,id=n0,restrict=on,/)
    expect(args({noNetwork: true}, {forwards: []})).not.toContain('-netdev')
    expect(valuesAfter(args({mac: 'AA-BB-CC-DD-EE-F0'.replace('AA', '02')}), '-device')[0]).toContain('mac=02:bb:cc:dd:ee:f0')
  })

  it('always puts the console on ttyS0, once', () => {
    expect(kernelAppend(undefined)).toBe('console=ttyS0')
    expect(kernelAppend(' ipa-debug=1 ')).toBe('ipa-debug=1 console=ttyS0')
    expect(kernelAppend('console=ttyS1,115200')).toBe('console=ttyS1,115200')
    expect(valuesAfter(args({append: 'BOOTIF=01-52-54-00-12-34-56'}), '-append')).toEqual(['BOOTIF=01-52-54-00-12-34-56 console=ttyS0'])
  })

  it('disks: virtio by default, nvme on request, format from the name', () => {
    const a = args(
      {},
      {
        disks: [
          {path: '/d/a.qcow2', format: 'qcow2', bus: 'virtio', size: 0},
          {path: '/d/b,c.raw', format: 'raw', bus: 'nvme', size: 0},
        ],
      },
    )
    expect(valuesAfter(a, '-drive')).toEqual([
      'file=/d/a.qcow2,if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap',
      'file=/d/b,,c.raw,if=none,id=disk1,format=raw,cache=unsafe,discard=unmap',
    ])
    expect(valuesAfter(a, '-device')).toEqual(expect.arrayContaining(['virtio-blk-pci,drive=disk0,serial=rdk-disk0', 'nvme,drive=disk1,serial=rdk-disk1']))
  })

  it('UEFI firmware, accelerator and CPU, memory, reboot behaviour, serial', () => {
    const a = args({memoryMiB: 512, cpus: 2}, {firmware: '/usr/share/ovmf/OVMF.fd', accel: 'kvm'})
    expect(valuesAfter(a, '-bios')).toEqual(['/usr/share/ovmf/OVMF.fd'])
    expect(valuesAfter(a, '-accel')).toEqual(['kvm'])
    expect(valuesAfter(a, '-cpu')).toEqual(['host'])
    expect(valuesAfter(a, '-m')).toEqual(['512'])
    expect(valuesAfter(a, '-smp')).toEqual(['2'])
    expect(a).toContain('-no-reboot')
    expect(args({allowReboot: true})).not.toContain('-no-reboot')
    expect(valuesAfter(args(), '-cpu')).toEqual(['max'])
    expect(valuesAfter(args(), '-chardev')).toEqual(['stdio,id=con0,signal=off'])
    const i = args({interactive: true, serialLogFile: '/tmp/s.log'})
    expect(valuesAfter(i, '-chardev')).toEqual(['stdio,id=con0,mux=on,signal=off,logfile=/tmp/s.log'])
    expect(valuesAfter(i, '-mon')).toEqual(['chardev=con0,mode=readline'])
  })

  it('boots the kernel it resolved (the PVH ELF) and quotes the command line for a shell', () => {
    expect(valuesAfter(args({}, {kernel: '/cache/vmlinux/x.elf', pvh: true}), '-kernel')).toEqual(['/cache/vmlinux/x.elf'])
    expect(formatCommand(['qemu', '-append', 'a b', "it's"])).toBe(`qemu -append 'a b' 'it'\\''s'`)
  })
})

describe('firmware boots: ISO, PXE tree, iPXE URL', () => {
  const fw = (boot: VmOptions['boot'], extra: Partial<VmOptions> = {}) => qemuArgs({boot, ...extra}, resolved({kernel: undefined}))

  it('an ISO as a CD (ide-cd) or as a disk (virtio-blk), first boot device, no -kernel', () => {
    const cd = fw({kind: 'iso', path: '/o/x,y.iso', as: 'cdrom'})
    expect(cd).not.toContain('-kernel')
    expect(cd).not.toContain('-append')
    expect(valuesAfter(cd, '-drive')).toContain('file=/o/x,,y.iso,media=cdrom,if=none,id=boot0,readonly=on')
    expect(valuesAfter(cd, '-device')).toContain('ide-cd,drive=boot0,bootindex=0')
    const disk = fw({kind: 'iso', path: '/o/x.iso', as: 'disk'}, {uefi: true})
    expect(valuesAfter(disk, '-drive')).toContain('file=/o/x.iso,format=raw,if=none,id=boot0,readonly=on')
    expect(valuesAfter(disk, '-device')).toContain('virtio-blk-pci,drive=boot0,bootindex=0,serial=rdk-boot')
    // No network boot: the NIC keeps romfile= (no option ROM).
    expect(valuesAfter(disk, '-device').find((d) => d.startsWith('virtio-net-pci'))).toMatch(/,romfile=$/)
  })

  it("PXE through qemu's TFTP server and iPXE by DHCP boot-file URL; the NIC keeps its iPXE ROM", () => {
    const pxe = fw({kind: 'tftp', dir: '/o/rdk-pxe', bootfile: 'grubx64.efi'})
    expect(valuesAfter(pxe, '-netdev')[0]).toBe('user,id=n0,tftp=/o/rdk-pxe,bootfile=grubx64.efi,hostfwd=tcp:127.0.0.1:40000-:9999')
    expect(valuesAfter(pxe, '-device')).toContain('virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,bootindex=0')
    const ipxe = fw({kind: 'ipxe', url: 'http://10.0.2.2:8080/a.ipxe'})
    expect(valuesAfter(ipxe, '-netdev')[0]).toBe('user,id=n0,bootfile=http://10.0.2.2:8080/a.ipxe,hostfwd=tcp:127.0.0.1:40000-:9999')
  })

  it('the guest sees the host loopback as 10.0.2.2; other URLs stay as they are', () => {
    expect(guestUrl('http://127.0.0.1:8080/x.ipxe')).toBe('http://10.0.2.2:8080/x.ipxe')
    expect(guestUrl('http://localhost/x.ipxe')).toBe('http://10.0.2.2/x.ipxe')
    expect(guestUrl('https://images.example/x.ipxe')).toBe('https://images.example/x.ipxe')
    expect(guestUrl('http://127.0.0.10/x')).toBe('http://127.0.0.10/x')
  })

  it('refuses ambiguous or impossible boots before starting qemu', async () => {
    await writeFile(join(dir, 'a.iso'), 'iso')
    const r = (o: VmOptions) => resolveVm({accel: 'tcg', ...o}, {dryRun: true})
    await expect(r({})).rejects.toThrow(/nothing to boot/)
    await expect(r({kernel: join(dir, 'a.iso'), boot: {kind: 'iso', path: join(dir, 'a.iso'), as: 'cdrom'}})).rejects.toThrow(
      /either a kernel or an ISO, not both/,
    )
    await expect(r({boot: {kind: 'iso', path: join(dir, 'missing.iso'), as: 'cdrom'}})).rejects.toThrow(/ISO .*missing\.iso does not exist/)
    await expect(r({boot: {kind: 'tftp', dir, bootfile: 'pxelinux.0'}})).rejects.toThrow(/has no pxelinux\.0 \(make it with rdk build --format pxe\)/)
    await expect(r({boot: {kind: 'ipxe', url: 'http://10.0.2.2/x.ipxe'}, uefi: '/fw.fd'})).rejects.toThrow(/cannot be combined with --uefi/)
    await expect(r({boot: {kind: 'ipxe', url: 'tftp://x'}})).rejects.toThrow(/must be an http/)
    await expect(r({boot: {kind: 'iso', path: join(dir, 'a.iso'), as: 'cdrom'}, append: 'x=1'})).rejects.toThrow(/only apply to a kernel boot/)
    const ok = await r({boot: {kind: 'iso', path: join(dir, 'a.iso'), as: 'cdrom'}})
    expect(ok.kernel).toBeUndefined()
    expect(ok.pvh).toBe(false)
  })

  it("UEFI with a persistent variable store (uefiVars): plain OVMF code + the caller's store as pflash, created once and kept; disk boots", async () => {
    const vars = join(dir, 'vm.vars')
    const r = await resolveVm({accel: 'tcg', fromDisk: true, uefiVars: vars, disks: [{path: join(dir, 'd.img'), size: '1M'}]})
    expect(r.pflash).toEqual({code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars, plain: true})
    expect(await readFile(vars)).toEqual(await readFile('/usr/share/OVMF/OVMF_VARS_4M.fd'))
    await writeFile(vars, Buffer.concat([await readFile(vars), Buffer.from('guest wrote this')]))
    await resolveVm({accel: 'tcg', fromDisk: true, uefiVars: vars, disks: [{path: join(dir, 'd.img')}]})
    expect((await readFile(vars)).subarray(-16).toString()).toBe('guest wrote this') // not replaced
    const a = qemuArgs({fromDisk: true, uefiVars: vars}, r)
    expect(valuesAfter(a, '-machine')).toEqual(['q35'])
    expect(a).not.toContain('driver=cfi.pflash01,property=secure,value=on')
    expect(valuesAfter(a, '-drive').slice(0, 2)).toEqual([
      `if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd`,
      `if=pflash,format=raw,unit=1,file=${vars}`,
    ])
    expect(a).not.toContain('-kernel')
    expect(a).not.toContain('-bios')
    const rr = (o: VmOptions) => resolveVm({accel: 'tcg', ...o}, {dryRun: true})
    await expect(rr({fromDisk: true})).rejects.toThrow(/booting from disk needs at least one disk/)
    await expect(rr({fromDisk: true, kernel: join(dir, 'a.iso'), disks: [{path: 'x'}]})).rejects.toThrow(/not both/)
    await expect(rr({kernel: join(dir, 'a.iso'), uefiVars: vars, secureBoot: true})).rejects.toThrow(/cannot be combined with Secure Boot/)
  })

  it('rdk boot --iso/--pxe/--ipxe flags: one at a time, never with --kernel; PXE boot file by firmware', async () => {
    const base: BootCliOptions = {
      output: dir,
      name: 'none',
      memory: 1024,
      cpus: 1,
      disks: [],
      diskBus: 'virtio',
      portForwards: [],
      uefi: false,
      accel: 'auto',
      pvh: true,
      restrictNetwork: false,
      reboot: false,
      qemuArgs: [],
      dryRun: false,
      say: () => undefined,
    }
    expect((await vmOptionsFromCli({...base, iso: 'a.iso'})).boot).toEqual({kind: 'iso', path: join(process.cwd(), 'a.iso'), as: 'cdrom'})
    expect((await vmOptionsFromCli({...base, iso: 'a.iso', isoAs: 'disk'})).boot).toMatchObject({as: 'disk'})
    expect((await vmOptionsFromCli({...base, pxe: dir})).boot).toEqual({kind: 'tftp', dir, bootfile: 'pxelinux.0'})
    expect((await vmOptionsFromCli({...base, pxe: dir, uefi: true})).boot).toEqual({kind: 'tftp', dir, bootfile: 'grubx64.efi'})
    expect((await vmOptionsFromCli({...base, ipxe: 'http://127.0.0.1:81/a.ipxe'})).boot).toEqual({kind: 'ipxe', url: 'http://10.0.2.2:81/a.ipxe'})
    await expect(vmOptionsFromCli({...base, iso: 'a.iso', pxe: dir})).rejects.toThrow(/--iso and --pxe cannot be combined/)
    await expect(vmOptionsFromCli({...base, iso: 'a.iso', kernel: 'k'})).rejects.toThrow(/--kernel\/--initrd\/--append do not apply/)
    await expect(vmOptionsFromCli({...base, isoAs: 'disk'})).rejects.toThrow(/--iso-as needs --iso/)
  })
})

describe('flags', () => {
  it('port forwards', () => {
    expect(parsePortForward('9999')).toEqual({hostPort: 0, guestPort: 9999})
    expect(parsePortForward('2222:22')).toEqual({hostPort: 2222, guestPort: 22})
    expect(() => parsePortForward('0.0.0.0:80:80')).toThrow(BootError)
    expect(() => parsePortForward('1:70000')).toThrow(/not a port/)
    expect(() => parsePortForward('80:0')).toThrow(/must not be 0/)
  })

  it('sizes and MACs', () => {
    expect(parseSize('10G')).toBe(10 * 1024 ** 3)
    expect(parseSize('512M')).toBe(512 * 1024 ** 2)
    expect(parseSize('1.5k')).toBe(1536)
    expect(parseSize(4096)).toBe(4096)
    expect(() => parseSize('lots')).toThrow(/not a size/)
    expect(normaliseMac('52-54-00-AB-CD-EF')).toBe('52:54:00:ab:cd:ef')
    expect(() => normaliseMac('01:00:5e:00:00:01')).toThrow(/multicast/)
    expect(() => normaliseMac('52:54:00')).toThrow(/not a MAC/)
  })

  it('rdk boot finds <output>/<name>.kernel and .initramfs, and says how to make them', async () => {
    const base: BootCliOptions = {
      output: dir,
      name: 'rdk-tiny',
      memory: 1024,
      cpus: 1,
      disks: [],
      diskBus: 'virtio',
      portForwards: [],
      uefi: false,
      accel: 'auto',
      pvh: true,
      restrictNetwork: false,
      reboot: false,
      qemuArgs: [],
      dryRun: false,
      say: () => undefined,
    }
    await expect(vmOptionsFromCli(base)).rejects.toThrow(/no kernel at .*rdk-tiny\.kernel: run 'rdk build' first/)
    await writeFile(join(dir, 'rdk-tiny.kernel'), 'k')
    await expect(vmOptionsFromCli(base)).rejects.toThrow(/no initramfs at .*rdk-tiny\.initramfs/)
    await writeFile(join(dir, 'rdk-tiny.initramfs'), 'i')
    const o = await vmOptionsFromCli({...base, portForwards: ['2222:22'], disks: ['d.qcow2'], diskSize: '1G', diskBus: 'nvme'})
    expect(o.kernel).toBe(join(dir, 'rdk-tiny.kernel'))
    expect(o.portForwards).toEqual([{hostPort: 2222, guestPort: 22}])
    expect(o.disks?.[0]).toMatchObject({size: '1G', bus: 'nvme'})
    expect((await vmOptionsFromCli(base)).portForwards).toEqual([{guestPort: 9999}])
    await expect(vmOptionsFromCli({...base, memory: 16})).rejects.toThrow(/at least 64/)
    // The build's own boot arguments (manifest kernelCmdline) come first, then --append; not for --kernel.
    expect((await vmOptionsFromCli({...base, append: 'x=1'})).append).toBe('x=1')
    await writeFile(join(dir, 'rdk-tiny.manifest.json'), JSON.stringify({kernelCmdline: 'root=/dev/ram0 ipa-debug=1'}))
    expect((await vmOptionsFromCli({...base, append: 'x=1'})).append).toBe('root=/dev/ram0 ipa-debug=1 x=1')
    expect((await vmOptionsFromCli(base)).append).toBe('root=/dev/ram0 ipa-debug=1')
    expect((await vmOptionsFromCli({...base, kernel: join(dir, 'rdk-tiny.kernel'), initrd: join(dir, 'rdk-tiny.initramfs')})).append).toBeUndefined()
    await writeFile(join(dir, 'rdk-tiny.manifest.json'), '{broken')
    await expect(vmOptionsFromCli(base)).rejects.toThrow(/manifest\.json is not valid JSON/)
    await rm(join(dir, 'rdk-tiny.manifest.json'))

    // --dry-run prints the command line and creates nothing (the disk stays missing).
    const said: string[] = []
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true)
    try {
      const code = await bootFromCli({...base, accel: 'tcg', dryRun: true, disks: [join(dir, 'new.qcow2')], diskSize: '1G', say: (l) => said.push(l)})
      expect(code).toBe(0)
      const printed = String(out.mock.calls[0]?.[0])
      expect(printed).toMatch(
        /^qemu-system-x86_64 .*-accel tcg .*-kernel \S+rdk-tiny\.kernel .*hostfwd=tcp:127\.0\.0\.1:0-:9999 .*file=\S+new\.qcow2,if=none,id=disk0,format=qcow2/,
      )
    } finally {
      out.mockRestore()
    }
    expect(said.join('\n')).toMatch(/booting the bzImage \(no PVH: not a bzImage/)
    await expect(readFile(join(dir, 'new.qcow2'))).rejects.toThrow(/ENOENT/)
  })

  it('a missing qemu names its Debian package', async () => {
    const path = process.env.PATH
    process.env.PATH = dir
    try {
      const err = await startVm({kernel: join(dir, 'rdk-tiny.kernel'), accel: 'tcg'}).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(ToolMissingError)
      expect((err as ToolMissingError).debianPackage).toBe('qemu-system-x86')
    } finally {
      process.env.PATH = path
    }
  })
})

describe('PVH kernel extraction and the KVM probe', () => {
  /** A minimal bzImage header around `payload` (setup_sects 1, protocol 2.15). */
  function fakeBzImage(payload: Buffer): Buffer {
    const img = Buffer.alloc(1024 + payload.length)
    img[0x1f1] = 1
    img.writeUInt16LE(0xaa55, 0x1fe)
    img.write('HdrS', 0x202, 'latin1')
    img.writeUInt16LE(0x020f, 0x206)
    img.writeUInt32LE(0, 0x248)
    img.writeUInt32LE(payload.length, 0x24c)
    payload.copy(img, 1024)
    return img
  }

  it('finds the compressed payload and recognises its format', () => {
    const xz = Buffer.from('fd377a585a000000', 'hex')
    expect(bzImagePayload(fakeBzImage(xz))).toEqual({format: 'xz', data: xz})
    expect(bzImagePayload(fakeBzImage(Buffer.from('1f8b0800', 'hex'))).format).toBe('gzip')
    expect(bzImagePayload(fakeBzImage(Buffer.from('28b52ffd', 'hex'))).format).toBe('zstd')
    expect(() => bzImagePayload(Buffer.alloc(2048))).toThrow(/not a bzImage/)
  })

  it('detects the PVH ELF note', () => {
    const note = Buffer.concat([Buffer.from([4, 0, 0, 0, 8, 0, 0, 0, 0x12, 0, 0, 0]), Buffer.from('Xen\0', 'latin1'), Buffer.alloc(8)])
    const elf = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.alloc(100), note])
    expect(hasPvhNote(elf)).toBe(true)
    expect(hasPvhNote(Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.alloc(200)]))).toBe(false)
    expect(hasPvhNote(Buffer.concat([Buffer.alloc(4), Buffer.alloc(100), note]))).toBe(false)
  })

  it("the probe firmware's reset vector writes 'K' to COM1 and halts", () => {
    const rom = probeFirmware()
    expect(rom.length).toBe(65536)
    expect(rom.subarray(65520, 65529).toString('hex')).toBe('baf803b04bee' + 'f4ebfd')
  })
})

describe('tiny elements', () => {
  it('tiny-init and tiny-agent manifests load', async () => {
    const init = await loadElement({name: 'tiny-init', dir: join(REPO, 'elements/tiny-init'), searchPath: join(REPO, 'elements'), builtin: true})
    expect(init.manifest.packages).toEqual([{name: 'busybox'}])
    expect(init.manifest.files.map((f) => [f.path, f.mode])).toEqual([
      ['/init', 0o755],
      ['/etc/udhcpc/default.script', 0o755],
    ])
    expect(init.manifest.devices).toEqual([
      {path: '/dev/console', kind: 'char', major: 5, minor: 1, mode: 0o600},
      {path: '/dev/null', kind: 'char', major: 1, minor: 3, mode: 0o666},
    ])
    const agent = await loadElement({name: 'tiny-agent', dir: join(REPO, 'elements/tiny-agent'), searchPath: join(REPO, 'elements'), builtin: true})
    expect(agent.manifest.depends).toEqual(['tiny-init'])
    expect(agent.manifest.templates.map((t) => t.path)).toEqual(['/etc/rdk/agent.json'])
    expect(agent.manifest.dirs.map((d) => d.path)).toContain('/usr/share/rdk/hardware-managers')
  })

  it('/init and the udhcpc script parse as POSIX sh (dash -n; shellcheck too when installed); /init never exits', async () => {
    const init = await readFile(join(REPO, 'elements/tiny-init/init'), 'utf8')
    expect(init.startsWith('#!/bin/busybox sh\n')).toBe(true)
    expect(init).not.toMatch(/^\s*exit\b/m)
    const scripts = [join(REPO, 'elements/tiny-init/init'), join(REPO, 'elements/tiny-init/udhcpc.script')]
    for (const f of scripts) await run('dash', ['-n', f])
    if (await which('shellcheck')) await run('shellcheck', ['-s', 'sh', ...scripts])
  })

  it('agent.json carries the ipa-* kernel arguments, which the agent accepts as its config file', async () => {
    const spec = await finishSpec({
      flavor: 'tiny',
      output: join(dir, 'out'),
      cacheDir: dir,
      debianMirror: 'http://deb.debian.org/debian',
      kernelArgs: {
        'ipa-api-url': 'http://10.0.2.2:6385',
        'ipa-lookup-timeout': '120',
        'ipa-debug': null,
        console: 'ttyS0,115200',
        BOOTIF: '01-52-54-00-12-34-56',
      },
    })
    const file = join(REPO, 'elements/tiny-agent/agent.json.ejs')
    const text = renderTemplate(await readFile(file, 'utf8'), file, {
      spec: templateSpec(spec),
      element: {name: 'tiny-agent', dir: join(REPO, 'elements/tiny-agent'), description: ''},
      elements: ['tiny-init', 'tiny-agent'],
      kernelCmdline: '',
      authorizedKeys: [],
    })
    const data = JSON.parse(text) as Record<string, string>
    expect(data).toEqual({'ipa-api-url': 'http://10.0.2.2:6385', 'ipa-lookup-timeout': '120'})
    const cfg = resolveConfig({file: {path: '/etc/rdk/agent.json', data}, cmdline: 'ipa-lookup-timeout=30'})
    expect(cfg.apiUrl).toEqual(['http://10.0.2.2:6385'])
    expect(cfg.lookupTimeout).toBe(30) // the kernel command line wins over the baked file
    const empty = renderTemplate(await readFile(file, 'utf8'), file, {
      spec: templateSpec({...spec, kernelArgs: {}}),
      element: {name: 'tiny-agent', dir: '', description: ''},
      elements: [],
      kernelCmdline: '',
      authorizedKeys: [],
    })
    expect(JSON.parse(empty)).toEqual({})
  })
})

describe('Node in the ramdisk', () => {
  it('adds node and exactly the libraries the loader opens, with version and hashes', async () => {
    const added: {kind: string; path: string; target?: string; host?: string; mode?: number}[] = []
    const sink = {
      addFileFromHost: (path: string, host: string, o?: {mode?: number}) =>
        void added.push({kind: 'file', path: `/${path.replace(/^\//, '')}`, host, mode: o?.mode}),
      addFile: (path: string) => void added.push({kind: 'data', path}),
      addSymlink: (path: string, target: string) => void added.push({kind: 'symlink', path: `/${path.replace(/^\//, '')}`, target}),
      addDir: (path: string) => void added.push({kind: 'dir', path}),
    }
    const info = await addNodeRuntime(sink, {cacheDir: dir, strip: false, icu: 'full', node: process.execPath})
    expect(info.version).toBe(process.version)
    expect(info.sha256).toMatch(/^[0-9a-f]{64}$/)
    expect(info.sha256).toBe(info.sourceSha256)
    expect(added.find((a) => a.path === NODE_IMAGE_PATH)).toMatchObject({kind: 'file', mode: 0o755})
    const names = added.map((a) => a.path.split('/').pop())
    expect(names).toEqual(expect.arrayContaining(['libc.so.6', 'libstdc++.so.6', 'ld-linux-x86-64.so.2']))
    // The interpreter path in the binary resolves in the image: /lib64 → usr/lib64 → … → a file.
    expect(added).toContainEqual(expect.objectContaining({kind: 'symlink', path: '/lib64'}))
    for (const lib of info.libraries.filter((l) => l.type === 'file')) expect(lib.sha256).toMatch(/^[0-9a-f]{64}$/)
  })
})

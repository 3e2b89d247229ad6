// The Debian kernel package: vmlinuz, module selection with dependency closure from .modinfo (pure TS),
// firmware lookup, depmod output checked with the host's modprobe. The kernel .deb (~70 MB) is
// downloaded once into the shared test cache ($RDK_TEST_CACHE or node_modules/.cache/rdk-test).
import {mkdtemp, open, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {
  DEFAULT_MODULES,
  EXTRA_MODULE_SETS,
  moduleList,
  installKernelModules,
  KernelModuleError,
  moduleIndex,
  prepareKernel,
  type PreparedKernel,
} from '../src/debian/kernel.js'
import {DirSink} from '../src/debian/sink.js'
import {sharedTestCache} from './fixtures/debian/cache.js'

let work: string
let kernel: PreparedKernel
const cacheDir = sharedTestCache()

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rdk-kernel-'))
  const t0 = Date.now()
  kernel = await prepareKernel({cacheDir, modules: ['virtio_net', 'virtio-pci', 'ext4', 'iso9660', 'af_packet', 'isci']})
  console.log(`prepareKernel ${kernel.package.name} ${kernel.package.version}: ${Date.now() - t0} ms`, kernel.timings)
}, 900_000)
afterAll(async () => {
  await rm(work, {recursive: true, force: true})
})

describe('Debian kernel', () => {
  it('takes the real image package behind linux-image-amd64 and its bzImage', async () => {
    expect(kernel.package.name).toMatch(/^linux-image-6\.1\.0-\d+-amd64$/)
    expect(kernel.kernelVersion).toBe(kernel.package.name.slice('linux-image-'.length))
    const fh = await open(kernel.vmlinuz, 'r')
    const hdr = Buffer.alloc(4)
    await fh.read(hdr, 0, 4, 0x202)
    await fh.close()
    expect(hdr.toString('latin1')).toBe('HdrS') // x86 boot protocol header
    expect(kernel.sizes.vmlinuz).toBeGreaterThan(5e6)
    expect(await readFile(kernel.config, 'utf8')).toMatch(/^CONFIG_MODULE_COMPRESS_NONE=y$/m)
  })

  it('closes virtio_net over depends= (virtio, virtio_ring, failover, net_failover) and softdeps', () => {
    const names = kernel.modules.map((m) => m.name)
    for (const n of ['virtio_net', 'virtio', 'virtio_ring', 'failover', 'net_failover', 'virtio_pci', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev']) {
      expect(names).toContain(n)
    }
    // ext4: depends jbd2, mbcache, crc16; softdep pre: crypto-crc32c (an alias)
    for (const n of ['ext4', 'jbd2', 'mbcache', 'crc16']) expect(names).toContain(n)
    expect(names.some((n) => n === 'crc32c_generic' || n === 'crc32c_intel')).toBe(true)
    // iso9660 is an alias of isofs; af_packet is built in
    expect(names).toContain('isofs')
    expect(kernel.builtin).toEqual(['af_packet'])
    // nothing that was not asked for
    expect(names).not.toContain('e1000e')
    expect(kernel.sizes.modules).toBe(kernel.modules.reduce((n, m) => n + m.size, 0))
  })

  it('reads .modinfo like modinfo(8) does', async () => {
    const index = await moduleIndex(kernel.modulesDir)
    expect(index.length).toBeGreaterThan(3000)
    for (const name of ['virtio_net', 'ext4', 'raid456', 'mlx5_core', 'nvme']) {
      const m = index.find((x) => x.name === name)!
      const {stdout} = await run('modinfo', ['-F', 'depends', join(kernel.modulesDir, m.path)])
      expect(m.depends.sort(), name).toEqual(
        stdout
          .trim()
          .split(',')
          .filter(Boolean)
          .map((d) => d.replace(/-/g, '_'))
          .sort(),
      )
    }
  })

  it('takes declared firmware from firmware-linux-free and reports what is missing', () => {
    expect(kernel.firmware.map((f) => f.name)).toEqual(['isci/isci_firmware.bin'])
    expect(kernel.firmware[0]!.package).toBe('firmware-linux-free')
  })

  it('installs the modules and depmod output that modprobe understands', async () => {
    const root = join(work, 'root')
    const r = await installKernelModules(kernel, new DirSink(root), {compress: false})
    const kdir = `usr/lib/modules/${kernel.kernelVersion}`
    expect(r.depmodFiles).toEqual(
      expect.arrayContaining(['modules.dep', 'modules.dep.bin', 'modules.alias', 'modules.alias.bin', 'modules.softdep', 'modules.symbols']),
    )
    const line = r.modulesDep.split('\n').find((l) => l.startsWith('kernel/drivers/net/virtio_net.ko:'))!
    for (const dep of ['virtio_ring.ko', 'virtio.ko', 'net_failover.ko', 'failover.ko']) expect(line).toContain(dep)
    expect(await readFile(join(root, kdir, 'modules.alias'), 'utf8')).toMatch(/^alias virtio:d00000001v\* virtio_net$/m)
    expect(r.files).toContain('usr/lib/firmware/isci/isci_firmware.bin')
    expect(r.files.filter((f) => f.endsWith('.ko')).length).toBe(kernel.modules.length)

    // the host's modprobe, pointed at the staged tree, resolves the load order from our depmod output
    const {stdout} = await run('modprobe', ['-d', root, '-S', kernel.kernelVersion, '--show-depends', 'virtio_net'])
    const order = stdout
      .trim()
      .split('\n')
      .map((l) => l.replace(/^insmod \S*\/([^/]+)\.ko.*$/, '$1'))
    expect(order[order.length - 1]).toBe('virtio_net')
    expect(order.indexOf('failover')).toBeLessThan(order.indexOf('net_failover'))
    expect(order).toEqual(expect.arrayContaining(['virtio', 'virtio_ring', 'failover', 'net_failover']))
    const fs = await run('modprobe', ['-d', root, '-S', kernel.kernelVersion, '--show-depends', 'fs-iso9660'])
    expect(fs.stdout).toMatch(/isofs\.ko/)
  })

  it('refuses unknown module names, and selects the default set', async () => {
    const err = await prepareKernel({cacheDir, modules: ['virtio_net', 'no_such_module_rdk'], firmwarePackages: []}).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(KernelModuleError)
    expect(String(err)).toMatch(/no such kernel module \(or alias\) in linux-image-.*: no_such_module_rdk$/)
    const all = await prepareKernel({cacheDir})
    expect(all.unknown).toEqual([])
    expect(all.modules.length).toBeGreaterThan(DEFAULT_MODULES.length / 2)
    // drivers whose firmware is non-free (not in main) are reported, not fatal
    expect(all.missingFirmware.map((m) => m.module)).toContain('tg3')
    console.log(
      `default modules: ${all.modules.length} modules, ${(all.sizes.modules / 1e6).toFixed(1)} MB raw; vmlinuz ${(all.sizes.vmlinuz / 1e6).toFixed(1)} MB; ` +
        `missing firmware for ${[...new Set(all.missingFirmware.map((m) => m.module))].join(', ')}`,
    )
  })
})

describe('moduleList (the kernelModules setting)', () => {
  it('adds names and @sets to the defaults, once each, and names the sets when one is unknown', () => {
    expect(moduleList()).toEqual([...new Set(DEFAULT_MODULES)])
    expect(DEFAULT_MODULES).not.toContain('mlx4_en')
    const more = moduleList(['@networkExtra', 'xfs', 'virtio_net'])
    expect(more).toEqual(expect.arrayContaining([...EXTRA_MODULE_SETS.networkExtra, 'xfs']))
    expect(more.filter((m) => m === 'virtio_net')).toHaveLength(1)
    expect(() => moduleList(['@nope'])).toThrow(KernelModuleError)
    expect(() => moduleList(['@nope'])).toThrow(/no module set '@nope': the sets are .*@networkExtra/)
  })
})

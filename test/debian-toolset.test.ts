// The deploy toolset from real Debian packages: only the wanted executables, their library closure
// and declared data files end up in the tree, and (as root) every tool actually runs in a chroot of
// that tree alone.
import {lstat, mkdtemp, readlink, rm, writeFile} from 'node:fs/promises'
import {existsSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {DirSink} from '../src/debian/sink.js'
import {buildToolset, DEPLOY_TOOLSET, PRUNED_DEPENDENCIES, ToolsetError, type ToolsetReport} from '../src/debian/toolset.js'
import {isRoot, sharedTestCache} from './fixtures/debian/cache.js'

let work: string
let root: string
let report: ToolsetReport
const cacheDir = sharedTestCache()

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rdk-toolset-'))
  root = join(work, 'root')
  const t0 = Date.now()
  report = await buildToolset(new DirSink(root), {cacheDir, compress: false})
  console.log(
    `toolset: ${Date.now() - t0} ms, ${report.packages.length} packages, ${report.paths.length} paths, ${(report.total.raw / 1e6).toFixed(1)} MB raw`,
    report.timings,
    report.fetch,
  )
}, 900_000)
afterAll(async () => {
  await rm(work, {recursive: true, force: true})
})

/** Every program src/agent runs (and init's shell), with arguments that only print a version or help. */
const SMOKE: [string, string[]][] = [
  ['qemu-img', ['--version']],
  ['sgdisk', ['--version']],
  ['parted', ['--version']],
  ['partprobe', ['--version']],
  ['lsblk', ['--version']],
  ['blkid', ['--version']],
  ['wipefs', ['--version']],
  ['blockdev', ['--version']],
  ['lscpu', ['--version']],
  ['mount', ['--version']],
  ['umount', ['--version']],
  ['losetup', ['--version']],
  ['sfdisk', ['--version']],
  ['hdparm', ['-V']],
  ['nvme', ['version']],
  ['smartctl', ['--version']],
  ['mdadm', ['--version']],
  ['ipmitool', ['-V']],
  ['dmidecode', ['--version']],
  ['efibootmgr', ['--version']],
  ['mkfs.ext4', ['-V']],
  ['e2fsck', ['-V']],
  ['mkfs.vfat', ['--help']],
  ['fsck.vfat', ['--help']],
  ['ip', ['-V']],
  ['udevadm', ['--version']],
  ['/usr/lib/systemd/systemd-udevd', ['--version']],
  ['tcpdump', ['--version']],
  ['shred', ['--version']],
  ['dd', ['--version']],
  ['sync', ['--version']],
  ['modprobe', ['--version']],
  ['busybox', ['true']],
  ['sh', ['-c', 'echo ok']],
  ['udhcpc', ['--help']],
]

describe('deploy toolset', () => {
  it('contains every executable the agent runs, found in its package', () => {
    for (const t of DEPLOY_TOOLSET) for (const e of t.executables) expect(report.executables[e], e).toBeTruthy()
    expect(report.executables.sgdisk).toBe('usr/sbin/sgdisk')
    expect(report.executables.mdadm).toBe('usr/sbin/mdadm') // shipped as /sbin/mdadm: usr-merged
    expect(report.executables.busybox).toBe('usr/bin/busybox')
    for (const p of report.paths) expect(p).not.toMatch(/^usr\/share\/(doc|man|locale|info)\//)
    const names = report.packages.map((p) => p.name)
    for (const pruned of PRUNED_DEPENDENCIES) expect(names).not.toContain(pruned)
  })

  it('keeps only the wanted programs, their libraries and declared data', async () => {
    // util-linux ships dozens of programs; only the wanted ones are here
    expect(report.paths).toContain('usr/bin/lsblk')
    expect(report.paths).not.toContain('usr/bin/lslogins')
    expect(report.paths).not.toContain('usr/sbin/mkfs.minix')
    expect(report.paths).toContain('usr/lib/udev/rules.d/60-persistent-storage.rules')
    expect(report.paths).toContain('usr/lib/udev/rules.d/64-md-raid-assembly.rules')
    expect(report.paths).not.toContain('usr/lib/udev/rules.d/80-net-setup-link.rules')
    expect(report.paths).toContain('etc/mke2fs.conf')
    expect(report.paths.some((p) => p.startsWith('usr/lib/udev/hwdb.d/'))).toBe(false)
    expect(await readlink(join(root, 'bin'))).toBe('usr/bin')
    expect(await readlink(join(root, 'usr/sbin/mkfs.ext4'))).toBe('mke2fs')
    // busybox fills the gaps only
    expect(await readlink(join(root, 'usr/bin/sh'))).toBe('busybox')
    expect((await lstat(join(root, 'usr/bin/mount'))).isFile()).toBe(true)
    expect(report.busyboxLinks).not.toContain('usr/bin/dd')
    expect(report.busyboxLinks).not.toContain('usr/bin/init')
    // sizes are accounted to the package each file came from
    const sum = report.contributions.reduce((n, c) => n + c.sizes.raw, 0)
    expect(sum).toBe(report.total.raw)
    expect(report.contributions.find((c) => c.name === 'libc6')!.files).toBeGreaterThan(0)
  })

  it.skipIf(!isRoot)('every tool runs in a chroot holding only the toolset', async () => {
    const failures: string[] = []
    for (const [tool, args] of SMOKE) {
      const path = tool.startsWith('/') ? tool : `/${report.executables[tool] ?? `usr/bin/${tool}`}`
      const r = await run('chroot', [root, path, ...args], {allowFailure: true, env: {PATH: '/usr/sbin:/usr/bin'}})
      const out = r.stdout + r.stderr
      if (r.exitCode === 127 || r.exitCode === 126 || /error while loading shared libraries|not found/i.test(out))
        failures.push(`${tool}: exit ${r.exitCode} ${out.trim().slice(0, 300)}`)
    }
    expect(failures).toEqual([])
  })

  it.skipIf(!isRoot)("shred takes the agent's long options; there is no openssl (the agent hashes rescue passwords itself)", async () => {
    await writeFile(join(root, 'victim'), Buffer.alloc(64 * 1024, 0xaa))
    const s = await run('chroot', [root, '/usr/bin/shred', '--force', '--zero', '--verbose', '--iterations', '1', '/victim'])
    expect(s.stderr).toMatch(/pass 2\/2 \(000000\)/)
    expect(existsSync(join(root, 'usr/bin/openssl'))).toBe(false)
  })

  it('reuses the unpacked package set the second time', async () => {
    const t0 = Date.now()
    const again = await buildToolset(new DirSink(join(work, 'again')), {cacheDir, compress: false})
    console.log(`toolset again: ${Date.now() - t0} ms`, again.timings)
    expect(again.stagingHit).toBe(true)
    expect(again.fetch.downloaded).toBe(0)
    expect(again.paths).toEqual(report.paths)
    expect(again.total.raw).toBe(report.total.raw)
  })

  it('names a package that lacks a wanted executable', async () => {
    const err = await buildToolset(new DirSink(join(work, 'bad')), {
      cacheDir,
      compress: false,
      tools: [{package: 'hdparm', executables: ['hdparm', 'no-such-tool'], why: 'test'}],
      busyboxApplets: [],
    }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ToolsetError)
    expect(String(err)).toMatch(/package hdparm does not ship the executable 'no-such-tool'.*\/usr\/sbin\/hdparm/)
  })
})

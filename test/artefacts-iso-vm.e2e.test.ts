/**
 * The hybrid ISO, end to end: `rdk build --format iso` with kernel args that point the agent at a
 * real Ironic (on 127.0.0.1; the guest reaches it as 10.0.2.2), booted in qemu four ways — BIOS CD,
 * UEFI CD, BIOS disk, UEFI disk (the isohybrid USB-stick path). Each boot has its own node and MAC,
 * so each lookup is independent; the agent must answer /v1/status and heartbeat to the Ironic the
 * baked ipa-api-url names. Then `rdk iso` on a kernel + busybox initramfs rdk did not build boots
 * and shows the baked command line. A sixth boot: an ISO with Debian's signed shim + GRUB under
 * OVMF with Secure Boot enforced.
 */
import {mkdir, mkdtemp, readdir, rm, stat} from 'node:fs/promises'
import {request} from 'node:https'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {makeIso} from '../src/artefacts/iso.js'
import {startVm, type Vm} from '../src/boot/qemu.js'
import {run} from '../src/common/exec.js'
import {buildTiny, busyboxInitrd, packageVersion, waitForHeartbeat} from './helpers/artefacts.js'
import {freePort, startIronic, type Ironic} from './helpers/ironic.js'

/** GET https://127.0.0.1:<port><path> (the agent's auto-TLS certificate is self-signed). */
function httpsGet(port: number, path: string): Promise<{status: number; body: string}> {
  return new Promise((resolve, reject) => {
    const req = request({host: '127.0.0.1', port, path, rejectUnauthorized: false, timeout: 10_000}, (res) => {
      let body = ''
      res.on('data', (c) => (body += c))
      res.on('end', () => resolve({status: res.statusCode ?? 0, body}))
    })
    req.on('error', reject)
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.end()
  })
}

const times: Record<string, number> = {}

describe('ISO from rdk build: boots as CD and disk under BIOS and UEFI, agent heartbeats to the baked Ironic', () => {
  let dir: string
  let ironic: Ironic
  let hostPort: number
  let iso: string
  let kernel: string

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-iso-e2e-'))
    ironic = await startIronic({dir: join(dir, 'ironic'), fastTrack: true, heartbeatTimeout: 30})
    // One forwarded port for every boot (they run one after the other), baked into the ISO.
    hostPort = await freePort()
    const out = join(dir, 'out')
    const t0 = Date.now()
    const r = await buildTiny(
      out,
      ['kernel', 'iso'],
      [`ipa-api-url=http://10.0.2.2:${ironic.port}`, 'ipa-advertise-host=127.0.0.1', `ipa-advertise-port=${hostPort}`, 'rdk.test=iso-baked'],
    )
    times.build = Date.now() - t0
    iso = join(out, 'rdk-tiny.iso')
    kernel = join(out, 'rdk-tiny.kernel')
    expect(r.artefacts.map((a) => a.file)).toContain('rdk-tiny.iso')
    expect(r.stages.find((s) => s.name === 'make-iso')?.note).toMatch(/label RDK_TINY/)
  }, 900_000)

  afterAll(async () => {
    await ironic?.stop()
    if (dir) await rm(dir, {recursive: true, force: true})
    console.log(`artefacts-iso e2e times (ms): ${JSON.stringify(times)}`)
  })

  const ways = [
    {fw: 'BIOS', as: 'cdrom', uefi: false, mac: '52:54:00:a4:01:01'},
    {fw: 'UEFI', as: 'cdrom', uefi: true, mac: '52:54:00:a4:01:02'},
    {fw: 'BIOS', as: 'disk', uefi: false, mac: '52:54:00:a4:01:03'},
    {fw: 'UEFI', as: 'disk', uefi: true, mac: '52:54:00:a4:01:04'},
  ] as const

  for (const w of ways) {
    it(`${w.fw} ${w.as === 'cdrom' ? 'CD' : 'disk'}: the agent answers /v1/status and heartbeats to the baked ipa-api-url`, async () => {
      const node = await ironic.createNode({name: `iso-${w.fw}-${w.as}`.toLowerCase()})
      await ironic.createPort(node.uuid, w.mac)
      await ironic.setProvisionState(node.uuid, 'manage')
      await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
      let vm: Vm | undefined
      try {
        // A (sparse) disk, as a real node has: without one the agent waits up to 27 s for a root device.
        vm = await startVm({
          boot: {kind: 'iso', path: iso, as: w.as},
          uefi: w.uefi,
          mac: w.mac,
          memoryMiB: 1024,
          disks: [{path: join(dir, `disk-${w.mac.slice(-2)}.img`), size: '2G'}],
          portForwards: [{guestPort: 9999, hostPort}],
        })
        const dii = await waitForHeartbeat(ironic, node.uuid, 300_000)
        times[`${w.fw}-${w.as}`] = Date.now() - vm.startedAt
        expect(dii.agent_url).toBe(`https://127.0.0.1:${hostPort}`)
        expect(dii.agent_last_heartbeat).toBeTruthy()
        expect(dii.agent_version).toBe(await packageVersion())
        const status = await httpsGet(hostPort, '/v1/status')
        expect(status.status).toBe(200)
        expect(JSON.parse(status.body).version).toBe(await packageVersion())
        // The boot loader of this path (ISOLINUX or GRUB) passed the baked command line.
        const cmdline = /Command line: (.*)/.exec(vm.serialLog())?.[1] ?? ''
        expect(cmdline).toMatch(/boot_method=vmedia/)
        expect(cmdline).toMatch(/rdk\.test=iso-baked/)
        expect(cmdline).toContain(`ipa-api-url=http://10.0.2.2:${ironic.port}`)
        expect(vm.serialLog()).toMatch(w.uefi ? /rdk: booting rdk-tiny/ : /rdk: booting rdk-tiny|ISOLINUX/)
      } catch (err) {
        throw new Error(`${(err as Error).message}\n--- serial ---\n${vm?.serialLog().slice(-3000)}\n--- ironic ---\n${await ironic.logTail(30)}`)
      } finally {
        await vm?.stop()
      }
    }, 420_000)
  }

  it("Secure Boot: Debian's signed shim + GRUB (unpacked from the .debs) boot the signed kernel under enforcing OVMF", async () => {
    // Unpacked, not installed: shim-signed's postinst may run grub-install on an EFI host.
    const sb = join(dir, 'sb')
    await mkdir(sb, {recursive: true})
    await run('apt-get', ['download', 'shim-signed', 'grub-efi-amd64-signed'], {cwd: sb, timeoutMs: 300_000})
    for (const deb of (await readdir(sb)).filter((f) => f.endsWith('.deb'))) await run('dpkg-deb', ['-x', join(sb, deb), join(sb, 'root')])
    const shim = join(sb, 'root/usr/lib/shim/shimx64.efi.signed')
    const grub = join(sb, 'root/usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed')
    const sbIso = join(dir, 'sb.iso')
    const baked = [`ipa-api-url=http://10.0.2.2:${ironic.port}`, 'ipa-advertise-host=127.0.0.1', `ipa-advertise-port=${hostPort}`, 'rdk.test=secure-boot']
    const r = await makeIso({
      kernel,
      initrd: join(dir, 'out', 'rdk-tiny.initramfs'),
      output: sbIso,
      kernelArgs: baked,
      label: 'RDK_SB',
      secureBoot: {shim, grub},
    })
    expect(r.secureBoot).toBe(true)
    const mac = '52:54:00:a4:01:05'
    const node = await ironic.createNode({name: 'iso-secure-boot'})
    await ironic.createPort(node.uuid, mac)
    await ironic.setProvisionState(node.uuid, 'manage')
    await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
    let vm: Vm | undefined
    try {
      vm = await startVm({
        boot: {kind: 'iso', path: sbIso, as: 'cdrom'},
        secureBoot: true,
        mac,
        memoryMiB: 1024,
        disks: [{path: join(dir, 'disk-sb.img'), size: '2G'}],
        portForwards: [{guestPort: 9999, hostPort}],
      })
      const dii = await waitForHeartbeat(ironic, node.uuid, 360_000)
      times['UEFI-secure-boot'] = Date.now() - vm.startedAt
      expect(dii.agent_url).toBe(`https://127.0.0.1:${hostPort}`)
      expect(vm.serialLog()).toMatch(/Secure boot enabled/)
      // the whole kernel command line in the failure message (vitest cuts the received string short)
      const cmdline = /Command line: (.*)/.exec(vm.serialLog())?.[1] ?? '(no "Command line:" on the serial console)'
      expect(cmdline, `kernel command line: ${cmdline}`).toMatch(/boot_method=vmedia .*rdk\.test=secure-boot/)
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial ---\n${vm?.serialLog().slice(-3000)}`)
    } finally {
      await vm?.stop()
    }
  }, 600_000)

  it('rdk iso makes a bootable ISO from a kernel + busybox initramfs rdk did not build', async () => {
    const initrd = await busyboxInitrd(dir)
    const out = join(dir, 'busybox.iso')
    const r = await run(process.execPath, [
      'bin/run.js',
      'iso',
      '--kernel',
      kernel,
      '--initrd',
      initrd,
      '--output',
      out,
      '--kernel-arg',
      'rdk.test=busybox',
      '--label',
      'BUSYBOX',
    ])
    expect(r.stdout).toMatch(/busybox\.iso .* sha256:[0-9a-f]{64}/)
    expect((await stat(out)).size).toBeGreaterThan(1e6)
    const vm = await startVm({boot: {kind: 'iso', path: out, as: 'cdrom'}, memoryMiB: 512, noNetwork: true})
    try {
      const m = await vm.waitForSerial(/RDK-BUSYBOX-UP cmdline=\[([^\]]*)\]/, 180_000)
      times.busybox = Date.now() - vm.startedAt
      expect(m[1]).toMatch(/boot_method=vmedia/)
      expect(m[1]).toMatch(/rdk\.test=busybox/)
      expect(m[1]).toMatch(/console=ttyS0,115200n8/)
    } finally {
      await vm.stop()
    }
  }, 300_000)
})

/**
 * Network boot, end to end: `rdk build --format pxe,ipxe` with kernel args that point the agent at a
 * real Ironic, then
 * - the PXE tree through qemu's own TFTP server: BIOS (the NIC's iPXE ROM → pxelinux.0) and UEFI
 *   (OVMF → grubx64.efi, GRUB's own TFTP client),
 * - the iPXE script over HTTP from a server on 127.0.0.1 (the guest sees it as 10.0.2.2), handed out
 *   as the DHCP boot file so the BIOS iPXE ROM chains it; kernel + initramfs URLs are relative.
 * Each boot has its own node and MAC; the agent must heartbeat to the baked ipa-api-url and carry
 * the BOOTIF the boot loader appended.
 */
import {createReadStream} from 'node:fs'
import {mkdtemp, readFile, rm, stat} from 'node:fs/promises'
import {createServer, type Server} from 'node:http'
import {tmpdir} from 'node:os'
import {join, normalize} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {guestUrl, startVm, type FirmwareBoot, type Vm} from '../src/boot/qemu.js'
import {buildTiny, packageVersion, waitForHeartbeat} from './helpers/artefacts.js'
import {freePort, startIronic, type Ironic} from './helpers/ironic.js'

const times: Record<string, number> = {}

/** A static file server for `root` on 127.0.0.1 (what an existing iPXE setup's web server would be). */
async function serve(root: string): Promise<{server: Server; port: number; requests: string[]}> {
  const requests: string[] = []
  const server = createServer((req, res) => {
    const rel = normalize(decodeURIComponent((req.url ?? '/').split('?')[0]!)).replace(/^(\.\.(\/|$))+/, '')
    requests.push(rel)
    const file = join(root, rel)
    stat(file)
      .then(
        (s) => {
          if (!s.isFile()) throw new Error('not a file')
          res.writeHead(200, {'content-length': s.size})
          createReadStream(file).pipe(res)
        },
        () => {
          res.writeHead(404)
          res.end()
        },
      )
      .catch(() => {
        res.writeHead(404)
        res.end()
      })
  })
  await new Promise<void>((r) => server.listen({host: '127.0.0.1', port: 0}, r))
  return {server, port: (server.address() as {port: number}).port, requests}
}

describe('PXE tree and iPXE script from rdk build: network boots reach a real Ironic', () => {
  let dir: string
  let out: string
  let ironic: Ironic
  let hostPort: number
  let http: Awaited<ReturnType<typeof serve>>

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-pxe-e2e-'))
    ironic = await startIronic({dir: join(dir, 'ironic'), fastTrack: true, heartbeatTimeout: 30})
    hostPort = await freePort()
    out = join(dir, 'out')
    const t0 = Date.now()
    const r = await buildTiny(
      out,
      ['kernel', 'initramfs', 'pxe', 'ipxe'],
      [`ipa-api-url=http://10.0.2.2:${ironic.port}`, 'ipa-advertise-host=127.0.0.1', `ipa-advertise-port=${hostPort}`, 'rdk.test=net-baked'],
    )
    times.build = Date.now() - t0
    expect(r.artefacts.map((a) => a.file)).toEqual(expect.arrayContaining(['rdk-tiny-pxe', 'rdk-tiny.ipxe']))
    http = await serve(out)
  }, 900_000)

  afterAll(async () => {
    http?.server.close()
    await ironic?.stop()
    if (dir) await rm(dir, {recursive: true, force: true})
    console.log(`artefacts-pxe e2e times (ms): ${JSON.stringify(times)}`)
  })

  async function bootAndHeartbeat(name: string, mac: string, boot: FirmwareBoot, uefi: boolean): Promise<string> {
    const node = await ironic.createNode({name})
    await ironic.createPort(node.uuid, mac)
    await ironic.setProvisionState(node.uuid, 'manage')
    await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
    let vm: Vm | undefined
    try {
      // A (sparse) disk, as a real node has: without one the agent waits up to 27 s for a root device.
      vm = await startVm({
        boot,
        uefi,
        mac,
        memoryMiB: 1024,
        disks: [{path: join(dir, `disk-${name}.img`), size: '2G'}],
        portForwards: [{guestPort: 9999, hostPort}],
      })
      const dii = await waitForHeartbeat(ironic, node.uuid, 360_000)
      times[name] = Date.now() - vm.startedAt
      expect(dii.agent_url).toBe(`https://127.0.0.1:${hostPort}`)
      expect(dii.agent_last_heartbeat).toBeTruthy()
      expect(dii.agent_version).toBe(await packageVersion())
      const cmdline = /Command line: (.*)/.exec(vm.serialLog())?.[1] ?? ''
      expect(cmdline).toMatch(/rdk\.test=net-baked/)
      expect(cmdline).not.toMatch(/boot_method=vmedia/)
      // pxelinux (IPAPPEND 2), GRUB ($net_default_mac) and iPXE (${netX/mac}) name the boot NIC.
      expect(cmdline.replace(/[-:]/g, '').toLowerCase()).toContain(`bootif=01${mac.replace(/:/g, '')}`)
      return vm.serialLog()
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial ---\n${vm?.serialLog().slice(-3000)}\n--- ironic ---\n${await ironic.logTail(30)}`)
    } finally {
      await vm?.stop()
    }
  }

  it('BIOS PXE: pxelinux.0 over qemu TFTP boots the tree', async () => {
    const serial = await bootAndHeartbeat('pxe-bios', '52:54:00:a4:02:01', {kind: 'tftp', dir: join(out, 'rdk-tiny-pxe'), bootfile: 'pxelinux.0'}, false)
    expect(serial).toMatch(/PXELINUX 6\.\d+ PXE/)
    expect(serial).toMatch(/Loading rdk-tiny\.kernel\.\.\. ?ok\r?\nLoading rdk-tiny\.initramfs\.\.\. ?ok/)
  }, 480_000)

  it('UEFI PXE: grubx64.efi over qemu TFTP boots the tree', async () => {
    const serial = await bootAndHeartbeat('pxe-uefi', '52:54:00:a4:02:02', {kind: 'tftp', dir: join(out, 'rdk-tiny-pxe'), bootfile: 'grubx64.efi'}, true)
    expect(serial).toMatch(/rdk: booting rdk-tiny/)
  }, 480_000)

  it('iPXE: the script chains over HTTP from a loopback server, kernel and initramfs by relative URL', async () => {
    const script = await readFile(join(out, 'rdk-tiny.ipxe'), 'utf8')
    expect(script).toMatch(/^#!ipxe\n/)
    const url = guestUrl(`http://127.0.0.1:${http.port}/rdk-tiny.ipxe`)
    expect(url).toBe(`http://10.0.2.2:${http.port}/rdk-tiny.ipxe`)
    await bootAndHeartbeat('ipxe-bios', '52:54:00:a4:02:03', {kind: 'ipxe', url}, false)
    expect(http.requests).toEqual(expect.arrayContaining(['/rdk-tiny.ipxe', '/rdk-tiny.kernel', '/rdk-tiny.initramfs']))
  }, 480_000)
})

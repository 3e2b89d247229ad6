/**
 * `rdk build` from scratch (empty cache: real Debian packages, kernel, host Node, the agent bundle),
 * twice with separate caches → byte-identical artefacts; then the built ramdisk boots in qemu (TCG)
 * and the agent inside answers /v1/status through a 127.0.0.1 port forward.
 */
import {createHash} from 'node:crypto'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {startVm} from '../src/boot/qemu.js'
import {freePort, startIronic} from './helpers/ironic.js'

const sha = async (f: string) =>
  createHash('sha256')
    .update(await readFile(f))
    .digest('hex')
const TOKEN = 'rdk-e2e-token-0123456789abcdefghijklmnopqrstuv'

async function build(dir: string, tag: string): Promise<{result: {artefacts: {path: string; sha256: string; size: number}[]}; out: string}> {
  const out = join(dir, `out-${tag}`)
  const r = await run(process.execPath, ['bin/run.js', 'build', '--output', out, '--cache-dir', join(dir, `cache-${tag}`), '--json'], {timeoutMs: 600_000})
  return {result: JSON.parse(r.stdout), out}
}

describe('tiny flavor: build from scratch and boot', () => {
  let dir: string
  let first: Awaited<ReturnType<typeof build>>

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-tiny-e2e-'))
  })
  afterAll(async () => {
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('builds reproducibly: two cold builds give byte-identical kernel and initramfs', async () => {
    first = await build(dir, 'a')
    const second = await build(dir, 'b')
    for (const name of ['rdk-tiny.kernel', 'rdk-tiny.initramfs']) {
      const a = await sha(join(first.out, name))
      expect(a).toBe(await sha(join(second.out, name)))
      expect(first.result.artefacts.find((x) => x.path.endsWith(name))?.sha256).toBe(a)
    }
    const manifest = JSON.parse(await readFile(join(first.out, 'rdk-tiny.manifest.json'), 'utf8'))
    expect(JSON.stringify(manifest)).toMatch(/linux-image-6\.1\.0-[0-9]+-amd64/)
    expect(JSON.stringify(manifest)).toMatch(/qemu-utils/)
  }, 900_000)

  it('boots in qemu and the agent answers /v1/status', async () => {
    const vm = await startVm({
      kernel: join(first.out, 'rdk-tiny.kernel'),
      initrd: join(first.out, 'rdk-tiny.initramfs'),
      append: `ipa-standalone=1 ipa-agent-token=${TOKEN}`,
      memoryMiB: 1024,
      restrictNetwork: true,
      disks: [{path: join(dir, 'disk0.img'), size: '5G'}],
      portForwards: [{guestPort: 9999, hostPort: 0}],
    })
    try {
      const res = await vm.waitForHttp(9999, '/v1/status', 180_000)
      expect(res.status).toBe(200)
      expect(JSON.parse(res.body).version).toBe(JSON.parse(await readFile('package.json', 'utf8')).version)
      expect(vm.serialLog()).toMatch(/rdk-init: agent: starting/)
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial ---\n${vm.serialLog().slice(-4000)}`)
    } finally {
      await vm.stop()
    }
  }, 300_000)

  it('looks up and heartbeats to a real Ironic on the host (fast track, manageable node)', async () => {
    const ironic = await startIronic({dir: join(dir, 'ironic'), fastTrack: true, heartbeatTimeout: 30})
    const mac = '52:54:00:12:34:56'
    const hostPort = await freePort()
    let vm: Awaited<ReturnType<typeof startVm>> | undefined
    try {
      const node = await ironic.createNode({name: 'tiny-vm'})
      await ironic.createPort(node.uuid, mac)
      await ironic.setProvisionState(node.uuid, 'manage')
      await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
      // The guest reaches the host's loopback as 10.0.2.2 (qemu user networking); Ironic reaches the
      // agent through the 127.0.0.1 port forward the agent advertises. No host process talks to 10.0.2.2.
      vm = await startVm({
        kernel: join(first.out, 'rdk-tiny.kernel'),
        initrd: join(first.out, 'rdk-tiny.initramfs'),
        append: `ipa-api-url=http://10.0.2.2:${ironic.port} ipa-advertise-host=127.0.0.1 ipa-advertise-port=${hostPort} BOOTIF=01-${mac.replace(/:/g, '-')}`,
        memoryMiB: 1024,
        mac,
        disks: [{path: join(dir, 'disk1.img'), size: '5G'}],
        portForwards: [{guestPort: 9999, hostPort}],
      })
      const deadline = Date.now() + 240_000
      let dii: Record<string, unknown> = {}
      while (Date.now() < deadline) {
        dii = (await ironic.getNode(node.uuid)).driver_internal_info
        if (dii.agent_url && dii.agent_last_heartbeat) break
        await new Promise((r) => setTimeout(r, 1000))
      }
      expect(dii.agent_url).toBe(`https://127.0.0.1:${hostPort}`)
      expect(dii.agent_last_heartbeat).toBeTruthy()
      expect(dii.agent_version).toBe(JSON.parse(await readFile('package.json', 'utf8')).version)
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial ---\n${vm?.serialLog().slice(-4000)}\n--- ironic ---\n${await ironic.logTail(40)}`)
    } finally {
      await vm?.stop()
      await ironic.stop()
    }
  }, 420_000)
})

/**
 * The agent against a REAL Ironic 21.4 (Debian python3-ironic, API + conductor in one process on
 * 127.0.0.1, fake power/boot): lookup, heartbeats and automated cleaning that really erases two
 * allow-listed loop devices; then Ironic wipes the agent token (it does on every power action) and
 * the agent must look up again and go through a second cleaning. No fake Ironic anywhere here.
 */
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {RDK_VERSION} from '../src/common/version.js'
import {defaultConfig} from '../src/agent/config.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {log} from '../src/agent/log.js'
import {startAgentProcess} from './helpers/agent-process.js'
import {freePort, startIronic, type Ironic} from './helpers/ironic.js'
import {attachLoop, detachLoop, dirtyDevice, sha256OfDevice, sha256OfZeroes, type LoopDevice} from './helpers/loop.js'

const SIZE = 32 * 1024 * 1024

async function agentMac(): Promise<string> {
  const m = new GenericHardwareManager()
  m.attach({config: defaultConfig(), log})
  const ifaces = await m.list_network_interfaces()
  const mac = ifaces.map((i) => i.mac_address).find((x) => x && x !== '00:00:00:00:00:00')
  if (!mac) throw new Error('this machine has no network interface with a MAC: the agent could not look up')
  return mac
}

async function hasNoPartitionTable(device: string): Promise<boolean> {
  const r = await run('blkid', ['-p', device], {allowFailure: true})
  // blkid exits 2 when it finds no signature at all
  return r.exitCode === 2 && r.stdout.trim() === ''
}

async function waitForDii(ironic: Ironic, uuid: string, ok: (d: Record<string, unknown>) => boolean, timeoutMs = 120_000): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const node = await ironic.getNode(uuid)
    if (ok(node.driver_internal_info)) return node.driver_internal_info
    if (Date.now() > deadline) throw new Error(`driver_internal_info never matched: ${JSON.stringify(node.driver_internal_info)}\n${await ironic.logTail(60)}`)
    await new Promise((r) => setTimeout(r, 250))
  }
}

describe('agent driven by a real Ironic', () => {
  let dir: string
  let ironic: Ironic
  let loops: LoopDevice[] = []
  let agent: Awaited<ReturnType<typeof startAgentProcess>> | undefined

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-ironic-e2e-'))
    loops = [await attachLoop(dir, 'disk0', SIZE), await attachLoop(dir, 'disk1', SIZE)]
    ironic = await startIronic({dir, heartbeatTimeout: 30})
  }, 180_000)

  afterAll(async () => {
    await agent?.stop()
    await ironic?.stop()
    for (const l of loops) await detachLoop(l)
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('cleans through Ironic, survives the token wipe and cleans again', async () => {
    for (const l of loops) await dirtyDevice(l.device, l.size)
    expect(await hasNoPartitionTable(loops[0]!.device)).toBe(false)

    const mac = await agentMac()
    const node = await ironic.createNode({name: 'rdk-e2e'})
    await ironic.createPort(node.uuid, mac)
    await ironic.setProvisionState(node.uuid, 'manage')
    await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
    await ironic.setProvisionState(node.uuid, 'provide')
    await ironic.waitForProvisionState(node.uuid, ['clean wait'], {timeoutMs: 60_000})

    const listenPort = await freePort()
    agent = await startAgentProcess({
      standalone: false,
      args: [
        '--api-url',
        ironic.url,
        '--listen-host',
        '127.0.0.1',
        '--listen-port',
        String(listenPort),
        '--advertise-host',
        '127.0.0.1',
        '--device-allowlist',
        loops.map((l) => l.device).join(','),
        '--lookup-interval',
        '1',
      ],
    })

    // While cleaning runs Ironic has recorded our callback: auto-TLS means https, and it keeps the
    // certificate we sent (agent_verify_ca) to verify us with.
    const during = await waitForDii(ironic, node.uuid, (d) => typeof d.agent_url === 'string')
    expect(during.agent_url).toBe(`https://127.0.0.1:${listenPort}`)
    expect(String(during.agent_verify_ca)).toMatch(/BEGIN CERTIFICATE|\.crt$|\.pem$/)
    expect(during.agent_version).toBe(RDK_VERSION)

    const clean1 = await ironic.waitForProvisionState(node.uuid, ['available'], {timeoutMs: 240_000})
    expect(clean1.last_error).toBeNull()
    // Ironic wiped token, URL and certificate when it powered the node off at the end of cleaning.
    expect(clean1.driver_internal_info.agent_secret_token).toBeUndefined()
    expect(clean1.driver_internal_info.agent_url).toBeUndefined()
    expect(clean1.driver_internal_info.clean_steps ?? null).toBeNull()
    for (const l of loops) {
      expect(await sha256OfDevice(l.device)).toBe(sha256OfZeroes(l.size))
      expect(await hasNoPartitionTable(l.device)).toBe(true)
    }

    // Second round: dirty the disks again; the agent has to notice its token is gone, look up
    // again when the node is back in cleaning, and erase them once more.
    for (const l of loops) await dirtyDevice(l.device, l.size)
    await ironic.setProvisionState(node.uuid, 'manage')
    await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
    await ironic.setProvisionState(node.uuid, 'provide')
    const clean2 = await ironic.waitForProvisionState(node.uuid, ['available'], {timeoutMs: 300_000})
    expect(clean2.last_error).toBeNull()
    for (const l of loops) expect(await sha256OfDevice(l.device)).toBe(sha256OfZeroes(l.size))

    const logs = agent.logs()
    expect(logs).toMatch(/Ironic refused our agent token/)
    expect(logs.match(/"msg":"agent token received from lookup"/g)?.length).toBeGreaterThanOrEqual(2)
    // The agent never saw or touched anything but the allow-listed loop devices.
    expect(logs).not.toMatch(/\/dev\/(vd|sd|nvme|xvd)[a-z0-9]/)
  }, 600_000)
})

/**
 * The agent on the host (no VM) against a REAL Ironic 29.0.5 (OpenStack 2025.1, Debian trixie's
 * python3-ironic from the chroot .ci/install-deps builds; test/helpers/ironic.ts), in the fast-track
 * flow Metal3 uses: built-in inspection, then cleaning by the SAME running agent without a reboot.
 *
 * This is where the agent token from /v1/continue_inspection matters: the agent posts at API 1.84
 * and Ironic hands it a token in the answer; with fast track the node stays powered on, so Ironic
 * never wipes that token, and every later lookup answers only "******". An agent that did not keep
 * the token would take that for another agent holding it and lock down. Cleaning then erases two
 * allow-listed loop devices; Ironic 29 also requires TLS (the agent's auto-TLS). fake power/boot;
 * fast track is enabled per node (driver_info fast_track = true). System actions are simulated
 * (the agent runs on the host: no NIC is ever taken down).
 */
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig} from '../src/agent/config.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {log} from '../src/agent/log.js'
import {startAgentProcess} from './helpers/agent-process.js'
import {sleep} from './helpers/http.js'
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

describe('agent and a real Ironic 29: built-in inspection, then fast-track cleaning by the same agent', () => {
  let dir: string
  let ironic: Ironic
  let loops: LoopDevice[] = []
  let agent: Awaited<ReturnType<typeof startAgentProcess>> | undefined

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-ironic29-agent-'))
    loops = [await attachLoop(dir, 'disk0', SIZE), await attachLoop(dir, 'disk1', SIZE)]
    ironic = await startIronic({dir, heartbeatTimeout: 30, ironic: '29'})
  }, 180_000)

  afterAll(async () => {
    await agent?.stop()
    await ironic?.stop()
    for (const l of loops) await detachLoop(l)
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('keeps the token from continue_inspection through "******" lookups and cleans without a reboot', async () => {
    for (const l of loops) await dirtyDevice(l.device, l.size)
    const mac = await agentMac()
    const node = await ironic.createNode({name: 'rdk-ironic29-agent', driverInfo: {fast_track: 'true'}})
    expect(node.inspect_interface).toBe('agent')
    await ironic.createPort(node.uuid, mac)
    await ironic.setProvisionState(node.uuid, 'manage')
    await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
    await ironic.setProvisionState(node.uuid, 'inspect')
    await ironic.waitForProvisionState(node.uuid, ['inspect wait'], {timeoutMs: 60_000})

    const listenPort = await freePort()
    agent = await startAgentProcess({
      standalone: false,
      args: [
        '--api-url',
        ironic.url,
        '--inspection-callback-url',
        `${ironic.url}/v1/continue_inspection`,
        '--inspection-collectors',
        'default',
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
        // 32 MiB loops are no root device candidates (< 4 GiB): do not wait 27 s for one.
        '--disk-wait-attempts',
        '1',
        '--system-actions',
        'simulate',
      ],
    })

    const inspected = await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 120_000})
    expect(inspected.last_error).toBeNull()
    const inv = (await ironic.api('GET', `/v1/nodes/${node.uuid}/inventory`)).body.inventory
    expect(inv.interfaces.map((i: {mac_address: string}) => i.mac_address)).toContain(mac)
    expect(inv.disks.map((d: {name: string}) => d.name).sort()).toEqual(loops.map((l) => l.device).sort())
    expect(inspected.properties.memory_mb).toBe(inv.memory.physical_mb)

    // Fast track: the node stayed on, the agent looked up ("******") and heartbeats over https.
    const deadline = Date.now() + 60_000
    let dii: Record<string, unknown> = {}
    while (Date.now() < deadline) {
      dii = (await ironic.getNode(node.uuid)).driver_internal_info
      if (typeof dii.agent_url === 'string' && dii.agent_last_heartbeat) break
      await sleep(500)
    }
    expect(dii.agent_url).toBe(`https://127.0.0.1:${listenPort}`)
    expect(agent.logs()).toMatch(/"msg":"agent token received from inspection"/)
    expect(agent.logs()).toMatch(/"msg":"lookup succeeded"/)

    await ironic.setProvisionState(node.uuid, 'provide')
    const cleaned = await ironic.waitForProvisionState(node.uuid, ['available'], {timeoutMs: 240_000})
    expect(cleaned.last_error).toBeNull()
    for (const l of loops) expect(await sha256OfDevice(l.device)).toBe(sha256OfZeroes(l.size))

    const logs = agent.logs()
    expect(agent.exitStatus()).toBeNull()
    // One token for the whole life: from inspection; no lookup ever handed out another, Ironic
    // never refused it, and the agent never locked down.
    expect(logs).not.toMatch(/"msg":"agent token received from lookup"/)
    expect(logs).not.toMatch(/Ironic refused our agent token/)
    expect(logs).not.toMatch(/masked agent token/)
    expect(logs.match(/rdk agent starting/g)?.length).toBe(1)
    // Cleaning ran on this agent (no reboot, fake power): its erase went to the loop devices only.
    expect(logs).not.toMatch(/\/dev\/(vd|sd|nvme|xvd)[a-z0-9]/)
  }, 600_000)
})

/**
 * The build benchmark's Ironic stand-in (bench/lib/ironic-stub.js) answers the ramdisk API with
 * Ironic 21.4's shapes and status codes (../shared/reference/ironic-wire.md), and the real agent
 * bundle (dist/agent.mjs, run on loopback) looks up and heartbeats to it: what bench/build.js times
 * in qemu is the agent's ordinary conversation, not a short cut.
 */
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
// @ts-expect-error -- plain ESM JavaScript (bench/), no type declarations
import {startIronicStub} from '../../bench/lib/ironic-stub.js'
import {GenericHardwareManager} from '../../src/agent/hardware/generic.js'
import {defaultConfig} from '../../src/agent/config.js'
import {log} from '../../src/agent/log.js'
import {startAgentProcess} from '../helpers/agent-process.js'

async function call(url: string, init: {method?: string; version?: string; body?: unknown} = {}) {
  const res = await fetch(url, {
    method: init.method ?? 'GET',
    headers: {Accept: 'application/json', 'Content-Type': 'application/json', ...(init.version ? {'X-OpenStack-Ironic-API-Version': init.version} : {})},
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  })
  return {status: res.status, text: await res.text(), headers: res.headers}
}
const fault = (text: string) => JSON.parse(JSON.parse(text).error_message).faultstring

describe('bench Ironic stub', () => {
  let stub: any // the stub is plain JavaScript
  beforeAll(async () => {
    stub = await startIronicStub()
  })
  afterAll(async () => {
    await stub?.close()
  })

  it('answers version discovery, lookup and heartbeat as Ironic 21.4 does', async () => {
    expect(stub.guestUrl).toBe(`http://10.0.2.2:${stub.port}`)
    const root = await call(`${stub.url}/`)
    expect(root.status).toBe(200)
    expect(JSON.parse(root.text).default_version).toMatchObject({id: 'v1', version: '1.82', min_version: '1.1'})
    expect((await call(`${stub.url}/v1/`)).status).toBe(200)

    const node = stub.addNode({mac: '52:54:00:AA:BB:01'})
    const lookup = `${stub.url}/v1/lookup?addresses=52:54:00:aa:bb:01`
    // No version header, unknown MAC, no parameters: Ironic's 404/400 with a faultstring inside error_message.
    const noVersion = await call(lookup)
    expect([noVersion.status, fault(noVersion.text)]).toEqual([404, 'Resource could not be found.'])
    expect((await call(`${stub.url}/v1/lookup?addresses=52:54:00:aa:bb:02`, {version: '1.62'})).status).toBe(404)
    const noParams = await call(`${stub.url}/v1/lookup`, {version: '1.62'})
    expect([noParams.status, fault(noParams.text)]).toEqual([400, "At least one of 'addresses' and 'node_uuid' parameters is required"])

    const first = await call(lookup, {version: '1.62'})
    expect(first.status).toBe(200)
    const body = JSON.parse(first.text)
    expect(Object.keys(body.node).sort()).toEqual(['driver_internal_info', 'instance_info', 'links', 'properties', 'uuid'])
    expect(body.node.uuid).toBe(node.uuid)
    expect(body.config).toMatchObject({heartbeat_timeout: 300, agent_token_required: true})
    expect(body.config.agent_token).toMatch(/^[A-Za-z0-9_-]{43}$/)
    // The token is handed out once; later lookups see it masked.
    expect(JSON.parse((await call(lookup, {version: '1.62'})).text).config.agent_token).toBe('******')

    const hb = `${stub.url}/v1/heartbeat/${node.uuid}`
    const noAgentVersion = await call(hb, {
      method: 'POST',
      version: '1.68',
      body: {callback_url: 'http://127.0.0.1:9999', agent_token: body.config.agent_token},
    })
    expect([noAgentVersion.status, fault(noAgentVersion.text)]).toEqual([
      400,
      'Agent did not transmit a version, and a version is required. Please update the agent being used.',
    ])
    const badToken = await call(hb, {
      method: 'POST',
      version: '1.68',
      body: {callback_url: 'http://127.0.0.1:9999', agent_token: 'x'.repeat(43), agent_version: '1.0'},
    })
    expect([badToken.status, fault(badToken.text)]).toEqual([400, 'Invalid or missing agent token received.'])
    expect(node.heartbeats).toHaveLength(0)

    const waiting = stub.waitForHeartbeat(node, 5000)
    const ok = await call(hb, {
      method: 'POST',
      version: '1.68',
      body: {callback_url: 'http://127.0.0.1:9999', agent_token: body.config.agent_token, agent_version: '1.0'},
    })
    expect([ok.status, ok.text]).toEqual([202, ''])
    expect(ok.headers.get('x-openstack-ironic-api-maximum-version')).toBe('1.82')
    expect(await waiting).toBe(node.heartbeats[0])

    // A baseline (busybox wget) node takes a bare POST; a removed node is gone.
    const bb = stub.addNode({baseline: true})
    expect((await call(`${stub.url}/v1/heartbeat/${bb.uuid}`, {method: 'POST', body: {}})).status).toBe(202)
    stub.removeNode(bb)
    expect((await call(`${stub.url}/v1/heartbeat/${bb.uuid}`, {method: 'POST', body: {}})).status).toBe(404)
    await expect(stub.waitForHeartbeat(stub.addNode({mac: '52:54:00:aa:bb:03'}), 200)).rejects.toThrow(/no heartbeat/)
  })

  it('the real agent bundle looks up and heartbeats to it (auto-TLS callback)', async () => {
    const m = new GenericHardwareManager()
    m.attach({config: defaultConfig(), log})
    const mac = (await m.list_network_interfaces()).map((i) => i.mac_address).find((x) => x && x !== '00:00:00:00:00:00')
    if (!mac) throw new Error('this machine has no network interface with a MAC: the agent could not look up')
    const node = stub.addNode({mac})
    const agent = await startAgentProcess({
      standalone: false,
      args: ['--api-url', stub.url, '--advertise-host', '127.0.0.1', '--lookup-interval', '1', '--disk-wait-attempts', '1'],
    })
    try {
      const at = await stub.waitForHeartbeat(node, 30_000)
      expect(at).toBeGreaterThanOrEqual(node.lookups[0])
      expect(node.callbackUrl).toBe(`https://127.0.0.1:${agent.port}`)
      expect(node.agentVersion).toMatch(/^\d+\.\d+\.\d+/)
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- agent log ---\n${agent.logs().slice(-3000)}`)
    } finally {
      await agent.stop()
    }
  }, 60_000)
})

/**
 * The agent's side of Ironic 29's built-in inspection, against a small loopback HTTP server that
 * records what it gets (the real Ironic 29 conversation is in test/ironic29-*.e2e.test.ts): the
 * version header goes only to Ironic's /v1/continue_inspection, and its lookup-style answer (with
 * the agent token) comes back to the caller; ironic-inspector's /v1/continue is posted as before.
 */
import http from 'node:http'
import type {AddressInfo} from 'node:net'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig} from '../src/agent/config.js'
import {runInspection} from '../src/agent/inspector.js'
import {IronicClient, isContinueInspectionUrl, parseLookupBody} from '../src/agent/ironic-client.js'
import {log} from '../src/agent/log.js'
import type {AgentRuntime} from '../src/agent/runtime.js'

const TOKEN = 'x'.repeat(43)
const UUID = '1be26c0b-03f2-4d2e-ae87-c02d7f33c123'

describe('isContinueInspectionUrl / parseLookupBody', () => {
  it('tells Ironic’s endpoint from ironic-inspector’s', () => {
    expect(isContinueInspectionUrl('http://10.0.2.2:6385/v1/continue_inspection')).toBe(true)
    expect(isContinueInspectionUrl('https://ironic.example/baremetal/v1/continue_inspection/')).toBe(true)
    expect(isContinueInspectionUrl('http://10.0.2.2:5050/v1/continue')).toBe(false)
    expect(isContinueInspectionUrl('http://10.0.2.2:6385/v1/continue_inspection?x=1')).toBe(true)
    expect(isContinueInspectionUrl('not a url')).toBe(false)
  })
  it('reads a lookup answer (new and old form), rejects others', () => {
    expect(parseLookupBody({node: {uuid: UUID}, config: {agent_token: TOKEN}})).toEqual({node: {uuid: UUID}, config: {agent_token: TOKEN}})
    expect(parseLookupBody({node: {uuid: UUID}, heartbeat_timeout: 300})?.config).toEqual({heartbeat_timeout: 300})
    expect(parseLookupBody({uuid: UUID})).toBeUndefined()
    expect(parseLookupBody({node: {}})).toBeUndefined()
    expect(parseLookupBody(null)).toBeUndefined()
  })
})

describe('runInspection', () => {
  let server: http.Server
  let base: string
  const seen: {path: string; version: string | undefined; body: unknown}[] = []
  beforeAll(async () => {
    server = http.createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const version = req.headers['x-openstack-ironic-api-version'] as string | undefined
        seen.push({path: req.url ?? '', version, body: JSON.parse(Buffer.concat(chunks).toString('utf8'))})
        res.writeHead(202, {'Content-Type': 'application/json'})
        // As Ironic 29: the lookup-style answer only at ≥ 1.84, else the inspector-compatible one.
        if (req.url === '/v1/continue_inspection' && version === '1.84')
          res.end(JSON.stringify({node: {uuid: UUID}, config: {agent_token: TOKEN, heartbeat_timeout: 30}}))
        else res.end(JSON.stringify({uuid: UUID}))
      })
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  afterAll(() => new Promise<void>((r) => server.close(() => r())))

  const runtime = () => ({config: {...defaultConfig(), inspectionCollectors: []}, log}) as unknown as AgentRuntime

  it('asks Ironic’s /v1/continue_inspection for API 1.84 and returns its token-carrying answer', async () => {
    const rt = runtime()
    const out = await runInspection(rt, new IronicClient({...rt.config, apiUrl: []}, log), `${base}/v1/continue_inspection`)
    expect(out.uuid).toBe(UUID)
    expect(out.lookup?.config.agent_token).toBe(TOKEN)
    expect(seen.at(-1)).toMatchObject({path: '/v1/continue_inspection', version: '1.84', body: {error: null}})
  })

  it('posts to ironic-inspector’s /v1/continue without a version, as IPA', async () => {
    const rt = runtime()
    const out = await runInspection(rt, new IronicClient({...rt.config, apiUrl: []}, log), `${base}/v1/continue`)
    expect(out).toEqual({uuid: UUID, lookup: undefined})
    expect(seen.at(-1)).toMatchObject({path: '/v1/continue', version: undefined})
  })
})

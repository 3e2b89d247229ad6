/**
 * The agent's REST API against the behaviour measured on the REAL IPA 9.4.3
 * (shared/reference/ipa-error-matrix.md beside the checkout): one test per row, same request, same status and
 * the same faultstring. Rows 15, 25, 27–29 and 49–51 are IPA bugs (unserialisable 500s) that the
 * agent answers cleanly instead (400, or 200 with a FAILED result whose command_error.type is
 * "TypeError", which Ironic's agent_client looks for).
 *
 * Then what the matrix does not cover: 409 while an async command runs, ?wait=true on POST and
 * on GET /v1/commands/<id>, HEAD, 405 + Allow, 413 for a declared body > 128 MiB, and a few
 * parser edge cases (bad percent-encoding, `//host` request targets, OPTIONS).
 *
 * Everything runs against the real agent bundle (dist/agent.mjs) as a child process on 127.0.0.1.
 */
import {copyFile, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {fileURLToPath} from 'node:url'
import net from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {agentRequest, startAgentProcess, type AgentProcess, type RawResponse} from './helpers/agent-process.js'

/** The test-only blocking hardware manager (step rdk_test_block waits for args.release). */
const BLOCKING_MANAGER = fileURLToPath(new URL('./fixtures/hardware-managers-blocking/blocking.mjs', import.meta.url))

const JSON_CT = {'Content-Type': 'application/json'}
const DECODE_PREFIX = '400 Bad Request: Failed to decode JSON object: '
const MISSING = '400 Bad Request: Missing or invalid name or params'
const TOKEN_INVALID = '401 Unauthorized: Token invalid.'
const NOT_FOUND_URL = '404 Not Found: The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.'
const NOT_ALLOWED = '405 Method Not Allowed: The method is not allowed for the requested URL.'
// The allow-list names no real disk, so the generic manager would wait 9 × 3 s for a root device
// (as IPA does) before listening: skip that wait.
const FAST_START = ['--disk-wait-attempts', '0']
const RESULT_KEYS = ['command_error', 'command_name', 'command_result', 'command_status', 'id']

function expectFault(res: RawResponse, status: number, faultstring: string | {prefix: string}): void {
  expect(res.status, res.text).toBe(status)
  expect(res.headers['content-type']).toMatch(/^application\/json/)
  expect(res.json, res.text).toBeTypeOf('object')
  expect(Object.keys(res.json).sort()).toEqual(['faultcode', 'faultstring'])
  expect(res.json.faultcode).toBe(status >= 500 ? 'Server' : 'Client')
  expect(res.json.faultstring).toBeTypeOf('string')
  if (typeof faultstring === 'string') expect(res.json.faultstring).toBe(faultstring)
  else expect(res.json.faultstring.startsWith(faultstring.prefix), res.json.faultstring).toBe(true)
}

function expectCommandResult(body: any, name: string, status: string): void {
  expect(body).toBeTypeOf('object')
  expect(Object.keys(body).sort()).toEqual(RESULT_KEYS)
  expect(body).not.toHaveProperty('command_params')
  expect(body.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  expect(body.command_name).toBe(name)
  expect(body.command_status).toBe(status)
  if (status === 'SUCCEEDED') expect(body.command_error).toBeNull()
}

function expectHardwareInfo(body: any): void {
  expectCommandResult(body, 'get_hardware_info', 'SUCCEEDED')
  expect(body.command_result).toBeTypeOf('object')
  for (const k of ['interfaces', 'cpu', 'disks', 'memory']) expect(body.command_result).toHaveProperty(k)
}

function expectTypeErrorFailure(res: RawResponse, detailsMention: string): void {
  expect(res.status, res.text).toBe(200)
  expect(Object.keys(res.json).sort()).toEqual(RESULT_KEYS)
  expect(res.json.command_status).toBe('FAILED')
  expect(res.json.command_result).toBeNull()
  expect(res.json.command_error).toMatchObject({type: 'TypeError'})
  expect(res.json.command_error.code).toBeTypeOf('number')
  expect(res.json.command_error.message).toBeTypeOf('string')
  expect(res.json.command_error.details).toContain(detailsMention)
}

/** Send raw bytes on a fresh TCP connection; resolve with everything read until the server closes or `ms` pass. */
function rawExchange(port: number, data: string | Buffer, ms = 3000, closeWhen?: (got: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({host: '127.0.0.1', port})
    let got = ''
    const done = () => {
      clearTimeout(timer)
      sock.destroy()
      resolve(got)
    }
    const timer = setTimeout(done, ms)
    sock.on('data', (c) => {
      got += c.toString('latin1')
      if (closeWhen?.(got)) done()
    })
    sock.on('end', done)
    sock.on('close', done)
    sock.on('error', (err) => {
      clearTimeout(timer)
      if (got) resolve(got)
      else reject(err)
    })
    sock.write(data)
  })
}

/** Parse "HTTP/1.1 <status> ...\r\nheaders\r\n\r\nbody" (one response, Content-Length framed). */
function parseRaw(text: string): {status: number; headers: Record<string, string>; body: string} {
  const end = text.indexOf('\r\n\r\n')
  const head = end >= 0 ? text.slice(0, end) : text
  const [statusLine, ...lines] = head.split('\r\n')
  const headers: Record<string, string> = {}
  for (const l of lines) {
    const i = l.indexOf(':')
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
  }
  const len = Number(headers['content-length'] ?? NaN)
  const rest = end >= 0 ? text.slice(end + 4) : ''
  return {status: Number(statusLine!.split(' ')[1]), headers, body: Number.isFinite(len) ? rest.slice(0, len) : rest}
}

describe('REST API matches the IPA 9.4.3 error matrix', () => {
  let agent: AgentProcess
  const req = (method: string, path: string, opts: {headers?: Record<string, string>; body?: string | Buffer; timeoutMs?: number} = {}) =>
    agentRequest(agent.url, {method, path, ...opts})
  const withToken = (path: string, token = agent.token) => `${path}?agent_token=${encodeURIComponent(token)}`
  const hwInfoBody = JSON.stringify({name: 'poll.get_hardware_info', params: {}})
  // ids the later rows refer to
  let row33Id = ''

  beforeAll(async () => {
    agent = await startAgentProcess({args: FAST_START})
  })
  afterAll(async () => {
    await agent?.stop()
  })

  it('row 1: GET / describes the API', async () => {
    const res = await req('GET', '/')
    expect(res.status).toBe(200)
    expect(res.headers['content-type']).toMatch(/^application\/json/)
    expect(res.json).toMatchObject({
      name: 'OpenStack Ironic Python Agent API',
      description: 'Ironic Python Agent is a provisioning agent for OpenStack Ironic',
    })
    expect(Object.keys(res.json).sort()).toEqual(['default_version', 'description', 'name', 'versions'])
    expect(res.json.versions).toHaveLength(1)
    expect(res.json.versions[0].id).toBe('v1')
    expect(res.json.versions[0].links[0]).toEqual({href: `${agent.url}/v1/`, rel: 'self'})
    expect(res.json.default_version).toEqual(res.json.versions[0])
  })

  it('row 2: GET /v1 redirects (308) to /v1/', async () => {
    const res = await req('GET', '/v1')
    expect(res.status).toBe(308)
    expect(res.headers.location).toBe(`${agent.url}/v1/`)
  })

  it('row 3: GET /v1/ describes v1', async () => {
    const res = await req('GET', '/v1/')
    expect(res.status).toBe(200)
    expect(Object.keys(res.json).sort()).toEqual(['commands', 'id', 'links', 'media_types', 'status'])
    expect(res.json.id).toBe('v1')
    expect(res.json.commands).toEqual([
      {href: `${agent.url}/v1/commands`, rel: 'self'},
      {href: `${agent.url}/commands`, rel: 'bookmark'},
    ])
    expect(res.json.status[0]).toEqual({href: `${agent.url}/v1/status`, rel: 'self'})
    expect(res.json.media_types).toEqual([{base: 'application/json', type: 'application/vnd.openstack.ironic-python-agent.v1+json'}])
    expect(Array.isArray(res.json.links)).toBe(true)
  })

  it('row 4: GET /v1/status', async () => {
    const res = await req('GET', '/v1/status')
    expect(res.status).toBe(200)
    expect(Object.keys(res.json).sort()).toEqual(['started_at', 'version'])
    expect(res.json.started_at).toBeTypeOf('number')
    expect(res.json.started_at).toBeGreaterThan(1.6e9)
    expect(res.json.started_at).toBeLessThanOrEqual(Date.now() / 1000)
    expect(res.json.version).toBeTypeOf('string')
  })

  it('row 5: GET /status (no version prefix)', async () => {
    const res = await req('GET', '/status')
    expect(res.status).toBe(200)
    const v1 = await req('GET', '/v1/status')
    expect(res.json).toEqual(v1.json)
  })

  it('row 6: GET /v1/commands/ lists nothing yet (no token needed)', async () => {
    const res = await req('GET', '/v1/commands/')
    expect(res.status).toBe(200)
    expect(res.json).toEqual({commands: []})
  })

  it('row 7: GET /v1/commands redirects (308) to /v1/commands/', async () => {
    const res = await req('GET', '/v1/commands')
    expect(res.status).toBe(308)
    expect(res.headers.location).toBe(`${agent.url}/v1/commands/`)
  })

  it('row 8: POST without a body', async () => {
    expectFault(await req('POST', withToken('/v1/commands/')), 400, {prefix: DECODE_PREFIX})
  })

  it('row 9: POST invalid JSON', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: '{bad json'}), 400, {prefix: DECODE_PREFIX})
  })

  it('row 10: POST {}', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: '{}'}), 400, MISSING)
  })

  it('row 11: POST name without params', async () => {
    const body = JSON.stringify({name: 'poll.get_hardware_info'})
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body}), 400, MISSING)
  })

  it('row 12: POST a name without a dot', async () => {
    const body = JSON.stringify({name: 'get_hardware_info', params: {}})
    expectFault(
      await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body}),
      400,
      'Invalid command: Command name must be of the form <extension>.<name>',
    )
  })

  it('row 13: POST an unknown extension', async () => {
    const body = JSON.stringify({name: 'nosuch.get_hardware_info', params: {}})
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body}), 404, 'Not found: Extension with id nosuch not found.')
  })

  it('row 14: POST an unknown command of a known extension', async () => {
    const body = JSON.stringify({name: 'poll.nosuch', params: {}})
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body}), 400, 'Invalid command: Unknown command: nosuch')
  })

  it('row 15 (IPA bug, 500 there): POST a numeric name → 400', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: '{"name":42,"params":{}}'}), 400, MISSING)
  })

  it('row 16: POST params as a list', async () => {
    const body = JSON.stringify({name: 'poll.get_hardware_info', params: []})
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body}), 400, MISSING)
  })

  it('row 17: POST params as a string', async () => {
    const body = JSON.stringify({name: 'poll.get_hardware_info', params: 'x'})
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body}), 400, MISSING)
  })

  it('row 18: POST params null', async () => {
    const body = JSON.stringify({name: 'poll.get_hardware_info', params: null})
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body}), 400, MISSING)
  })

  it('row 19: POST with a wrong token', async () => {
    expectFault(
      await req('POST', withToken('/v1/commands/', 'wrongwrongwrongwrongwrongwrongwrongwrong'), {headers: JSON_CT, body: hwInfoBody}),
      401,
      TOKEN_INVALID,
    )
  })

  it('row 20: POST without a token', async () => {
    expectFault(await req('POST', '/v1/commands/', {headers: JSON_CT, body: hwInfoBody}), 401, TOKEN_INVALID)
  })

  it('row 21: POST with an empty token', async () => {
    expectFault(await req('POST', '/v1/commands/?agent_token=', {headers: JSON_CT, body: hwInfoBody}), 401, TOKEN_INVALID)
  })

  it('row 22: POST with the token in an X-Agent-Token header only', async () => {
    expectFault(await req('POST', '/v1/commands/', {headers: {...JSON_CT, 'X-Agent-Token': agent.token}, body: hwInfoBody}), 401, TOKEN_INVALID)
  })

  it('row 23: POST an invalid body with a wrong token (the body is checked first)', async () => {
    expectFault(await req('POST', '/v1/commands/?agent_token=wrong', {headers: JSON_CT, body: '{}'}), 400, MISSING)
  })

  it('row 24: POST a JSON string', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: '"hello"'}), 400, MISSING)
  })

  it('row 25 (IPA bug, 500 there): POST a JSON string containing "name" and "params" → 400', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: '"name params"'}), 400, MISSING)
  })

  it('row 26: POST a JSON list', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: '[]'}), 400, MISSING)
  })

  it('row 27 (IPA bug, 500 there): POST ["name","params"] → 400', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: '["name","params"]'}), 400, MISSING)
  })

  it('row 28 (IPA bug, 500 there): POST null → 400', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: 'null'}), 400, MISSING)
  })

  it('row 29 (IPA bug, 500 there): POST a JSON number → 400', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: '42'}), 400, MISSING)
  })

  it('row 30: POST a valid command as text/plain runs it', async () => {
    const res = await req('POST', withToken('/v1/commands/'), {headers: {'Content-Type': 'text/plain'}, body: hwInfoBody})
    expect(res.status, res.text).toBe(200)
    expectHardwareInfo(res.json)
  })

  it('row 31: POST a valid command without a Content-Type runs it', async () => {
    const res = await req('POST', withToken('/v1/commands/'), {body: hwInfoBody})
    expect(res.status, res.text).toBe(200)
    expectHardwareInfo(res.json)
  })

  it('row 32: POST /v1/commands (no slash) redirects (308), keeping the query', async () => {
    const res = await req('POST', withToken('/v1/commands'), {headers: JSON_CT, body: hwInfoBody})
    expect(res.status).toBe(308)
    expect(res.headers.location).toBe(`${agent.url}${withToken('/v1/commands/')}`)
  })

  it('row 33: POST /commands/ (no /v1) runs the command', async () => {
    const res = await req('POST', withToken('/commands/'), {headers: JSON_CT, body: hwInfoBody})
    expect(res.status, res.text).toBe(200)
    expectHardwareInfo(res.json)
    row33Id = res.json.id
  })

  it('row 34: GET an unknown command id', async () => {
    expectFault(await req('GET', '/v1/commands/0000-bogus'), 404, 'Not found: Command Result with id 0000-bogus not found.')
  })

  it('row 35: GET an unknown command id ?wait=true', async () => {
    expectFault(await req('GET', '/v1/commands/0000-bogus?wait=true'), 404, 'Not found: Command Result with id 0000-bogus not found.')
  })

  it('row 36: GET /v1/commands//<id> redirects (308) with the slashes merged', async () => {
    const res = await req('GET', '/v1/commands//0000-bogus')
    expect(res.status).toBe(308)
    expect(res.headers.location).toBe(`${agent.url}/v1/commands/0000-bogus`)
  })

  it('row 37: GET the last command by id', async () => {
    expect(row33Id).not.toBe('')
    const res = await req('GET', `/v1/commands/${row33Id}`)
    expect(res.status).toBe(200)
    expectHardwareInfo(res.json)
    expect(res.json.id).toBe(row33Id)
  })

  it('row 38: GET the last command by id ?wait=true', async () => {
    const res = await req('GET', `/v1/commands/${row33Id}?wait=true`)
    expect(res.status).toBe(200)
    expectHardwareInfo(res.json)
    expect(res.json.id).toBe(row33Id)
  })

  it('row 39: unknown URL', async () => {
    expectFault(await req('GET', '/v1/nosuch'), 404, NOT_FOUND_URL)
  })

  it('row 40: unknown URL /v2/', async () => {
    expectFault(await req('GET', '/v2/'), 404, NOT_FOUND_URL)
  })

  it('row 41: PUT /v1/commands/', async () => {
    expectFault(await req('PUT', '/v1/commands/', {headers: JSON_CT, body: '{}'}), 405, NOT_ALLOWED)
  })

  it('row 42: DELETE /v1/commands/', async () => {
    expectFault(await req('DELETE', '/v1/commands/'), 405, NOT_ALLOWED)
  })

  it('row 43: POST /v1/status', async () => {
    expectFault(await req('POST', '/v1/status'), 405, NOT_ALLOWED)
  })

  it('row 44: HEAD / answers the headers of GET / without a body', async () => {
    const head = await req('HEAD', '/')
    const get = await req('GET', '/')
    expect(head.status).toBe(200)
    expect(head.headers['content-type']).toMatch(/^application\/json/)
    expect(head.text).toBe('')
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(get.text))
  })

  it('row 45: two sync poll.get_hardware_info 50 ms apart both succeed, the second after the first', async () => {
    const path = `${withToken('/v1/commands/')}&wait=true`
    const ends: Record<string, number> = {}
    const send = (tag: string) =>
      req('POST', path, {headers: JSON_CT, body: hwInfoBody, timeoutMs: 60_000}).then((r) => {
        ends[tag] = performance.now()
        return r
      })
    const a = send('a')
    await new Promise((r) => setTimeout(r, 50))
    const b = send('b')
    const [ra, rb] = await Promise.all([a, b])
    expect(ra.status, ra.text).toBe(200)
    expect(rb.status, rb.text).toBe(200)
    expectHardwareInfo(ra.json)
    expectHardwareInfo(rb.json)
    expect(ra.json.id).not.toBe(rb.json.id)
    expect(ends.b!).toBeGreaterThanOrEqual(ends.a!)
    const list = await req('GET', '/v1/commands/')
    const ids = list.json.commands.map((c: {id: string}) => c.id)
    expect(ids.indexOf(rb.json.id)).toBe(ids.indexOf(ra.json.id) + 1)
  })

  const tenMb = 10 * 1024 * 1024

  it('row 46: a 10 MB valid JSON body (unknown command) with a valid token', async () => {
    const body = JSON.stringify({name: 'poll.nosuch', params: {pad: 'x'.repeat(tenMb)}})
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body}), 400, 'Invalid command: Unknown command: nosuch')
  })

  it('row 47: a 10 MB valid JSON body without a token', async () => {
    const body = JSON.stringify({name: 'poll.nosuch', params: {pad: 'x'.repeat(tenMb)}})
    expectFault(await req('POST', '/v1/commands/', {headers: JSON_CT, body}), 401, TOKEN_INVALID)
  })

  it('row 48: a 10 MB non-JSON body', async () => {
    expectFault(await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: 'x'.repeat(tenMb)}), 400, {prefix: DECODE_PREFIX})
  })

  const typeErrorIds: string[] = []

  it('row 49 (IPA bug, 500 there): an unexpected parameter to a sync command → 200 FAILED, type TypeError', async () => {
    const body = JSON.stringify({name: 'poll.get_hardware_info', params: {bogus: 1}})
    const res = await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body})
    expectTypeErrorFailure(res, 'bogus')
    expect(res.json.command_name).toMatch(/get_hardware_info$/)
    typeErrorIds.push(res.json.id)
  })

  it('row 50 (IPA bug, 500 there): a missing required parameter (clean.get_clean_steps) → 200 FAILED, type TypeError', async () => {
    const body = JSON.stringify({name: 'clean.get_clean_steps', params: {}})
    const res = await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body})
    expectTypeErrorFailure(res, 'node')
    expect(res.json.command_name).toMatch(/get_clean_steps$/)
    typeErrorIds.push(res.json.id)
  })

  it('row 51 (IPA bug, 500 there): the command list still answers after the TypeError failures', async () => {
    const res = await req('GET', '/v1/commands/')
    expect(res.status, res.text).toBe(200)
    const cmds = res.json.commands as any[]
    for (const c of cmds) {
      expect(Object.keys(c).sort()).toEqual(RESULT_KEYS)
      expect(c).not.toHaveProperty('command_params')
    }
    const failed = cmds.filter((c) => typeErrorIds.includes(c.id))
    expect(failed).toHaveLength(2)
    for (const c of failed) expect(c.command_error.type).toBe('TypeError')
    expect(cmds.at(-1).id).toBe(typeErrorIds.at(-1))
  })

  it('row 52: GET an older successful command afterwards', async () => {
    const res = await req('GET', `/v1/commands/${row33Id}`)
    expect(res.status).toBe(200)
    expectHardwareInfo(res.json)
  })

  it('row 53: POST a valid command afterwards', async () => {
    const res = await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: hwInfoBody})
    expect(res.status, res.text).toBe(200)
    expectHardwareInfo(res.json)
  })

  it('row 54: status after all that', async () => {
    const res = await req('GET', '/v1/status')
    expect(res.status).toBe(200)
    expect(res.json.started_at).toBeTypeOf('number')
    expect(res.json.version).toBeTypeOf('string')
    expect(agent.exitStatus()).toBeNull()
  })
})

describe('REST API beyond the matrix', () => {
  let agent: AgentProcess
  let dir: string
  let releases = 0
  const req = (method: string, path: string, opts: {headers?: Record<string, string>; body?: string | Buffer; timeoutMs?: number} = {}) =>
    agentRequest(agent.url, {method, path, ...opts})
  const withToken = (path: string) => `${path}?agent_token=${encodeURIComponent(agent.token)}`
  const blockBody = (release: string) =>
    JSON.stringify({
      name: 'clean.execute_clean_step',
      params: {step: {step: 'rdk_test_block', priority: 0, interface: 'deploy', args: {release}}, node: {}, ports: []},
    })
  const newRelease = () => join(dir, `release-${++releases}`)

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-api-matrix-'))
    const managers = join(dir, 'managers')
    await import('node:fs/promises').then((fs) => fs.mkdir(managers))
    await copyFile(BLOCKING_MANAGER, join(managers, 'blocking.mjs'))
    agent = await startAgentProcess({args: [...FAST_START, '--hardware-managers-dir', managers]})
  })
  afterAll(async () => {
    await agent?.stop()
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('answers 409 "Agent is busy" while an async command runs; GET ?wait=true blocks until it is done', async () => {
    const release = newRelease()
    const started = await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: blockBody(release)})
    expect(started.status, started.text).toBe(200)
    expectCommandResult(started.json, 'execute_clean_step', 'RUNNING')
    const id = started.json.id

    const busy = await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: JSON.stringify({name: 'poll.get_hardware_info', params: {}})})
    expectFault(busy, 409, 'Agent is busy: executing command execute_clean_step')

    // a sync command is refused too, and refusals are not recorded
    const list = await req('GET', '/v1/commands/')
    expect(list.json.commands.map((c: {id: string}) => c.id)).toEqual([id])

    const polled = await req('GET', `/v1/commands/${id}`)
    expect(polled.status).toBe(200)
    expectCommandResult(polled.json, 'execute_clean_step', 'RUNNING')

    let waited: RawResponse | undefined
    const waiting = req('GET', `/v1/commands/${id}?wait=true`, {timeoutMs: 30_000}).then((r) => (waited = r))
    await new Promise((r) => setTimeout(r, 300))
    expect(waited).toBeUndefined() // still blocked
    const t0 = performance.now()
    await writeFile(release, '')
    await waiting
    expect(performance.now() - t0).toBeLessThan(5000)
    expect(waited!.status).toBe(200)
    expectCommandResult(waited!.json, 'execute_clean_step', 'SUCCEEDED')
    expect(waited!.json.command_result).toEqual({
      clean_result: {released: release},
      clean_step: {step: 'rdk_test_block', priority: 0, interface: 'deploy', args: {release}},
    })

    // no longer busy
    const after = await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body: JSON.stringify({name: 'standby.get_partition_uuids', params: {}})})
    expect(after.status, after.text).toBe(200)
    expectCommandResult(after.json, 'get_partition_uuids', 'SUCCEEDED')
  })

  it('wait=true (case-insensitive) on POST blocks until an async command is done; other values do not', async () => {
    const release = newRelease()
    const t0 = performance.now()
    const posting = req('POST', `${withToken('/v1/commands/')}&wait=TRUE`, {headers: JSON_CT, body: blockBody(release), timeoutMs: 30_000})
    await new Promise((r) => setTimeout(r, 300))
    await writeFile(release, '')
    const res = await posting
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290)
    expect(res.status, res.text).toBe(200)
    expectCommandResult(res.json, 'execute_clean_step', 'SUCCEEDED')

    const release2 = newRelease()
    const noWait = await req('POST', `${withToken('/v1/commands/')}&wait=1`, {headers: JSON_CT, body: blockBody(release2)})
    expectCommandResult(noWait.json, 'execute_clean_step', 'RUNNING')
    await writeFile(release2, '')
    const done = await req('GET', `/v1/commands/${noWait.json.id}?wait=true`)
    expectCommandResult(done.json, 'execute_clean_step', 'SUCCEEDED')
  })

  it('an async command with a wrong parameter set fails with type TypeError', async () => {
    const body = JSON.stringify({name: 'clean.execute_clean_step', params: {step: {step: 'rdk_test_block'}}})
    const res = await req('POST', withToken('/v1/commands/'), {headers: JSON_CT, body})
    expect(res.status, res.text).toBe(200)
    const final = (await req('GET', `/v1/commands/${res.json.id}?wait=true`)).json
    expect(final.command_status).toBe('FAILED')
    expect(final.command_error.type).toBe('TypeError')
  })

  // The bundle is minified: without esbuild's keepNames, command_error.type and the get_*_steps keys
  // would carry mangled class names instead of IPA's.
  it('command_error.type and step owners carry the real class names in the minified bundle', async () => {
    const body = JSON.stringify({
      name: 'clean.execute_clean_step',
      params: {step: {step: 'rdk_no_such_step', priority: 0, interface: 'deploy'}, node: {}, ports: []},
    })
    const res = await req('POST', `${withToken('/v1/commands/')}&wait=true`, {headers: JSON_CT, body})
    expect(res.json.command_status).toBe('FAILED')
    expect(res.json.command_error.type).toBe('HardwareManagerMethodNotFound')
    const steps = await req('POST', `${withToken('/v1/commands/')}`, {
      headers: JSON_CT,
      body: JSON.stringify({name: 'clean.get_clean_steps', params: {node: {}, ports: []}}),
    })
    expect(Object.keys(steps.json.command_result.clean_steps)).toContain('GenericHardwareManager')
  })

  it('HEAD works on every GET route and answers GET headers without a body', async () => {
    const last = (await req('GET', '/v1/commands/')).json.commands.at(-1).id as string
    for (const path of ['/', '/v1/', '/v1/status', '/status', '/v1/commands/', '/commands/', `/v1/commands/${last}`]) {
      const head = await req('HEAD', path)
      const get = await req('GET', path)
      expect(head.status, path).toBe(200)
      expect(head.text, path).toBe('')
      expect(head.headers['content-type'], path).toMatch(/^application\/json/)
      expect(Number(head.headers['content-length']), path).toBe(Buffer.byteLength(get.text))
    }
    const missing = await req('HEAD', '/v1/nosuch')
    expect(missing.status).toBe(404)
    expect(missing.text).toBe('')
    const redirect = await req('HEAD', '/v1')
    expect(redirect.status).toBe(308)
    expect(redirect.headers.location).toBe(`${agent.url}/v1/`)
  })

  it('405 carries an Allow header naming the methods the URL accepts', async () => {
    const put = await req('PUT', '/v1/commands/', {headers: JSON_CT, body: '{}'})
    expectFault(put, 405, NOT_ALLOWED)
    const allowCmds = String(put.headers.allow).split(/,\s*/).sort()
    expect(allowCmds).toEqual(expect.arrayContaining(['GET', 'HEAD', 'POST']))

    const post = await req('POST', '/v1/status')
    expectFault(post, 405, NOT_ALLOWED)
    const allowStatus = String(post.headers.allow).split(/,\s*/).sort()
    expect(allowStatus).toEqual(expect.arrayContaining(['GET', 'HEAD']))
    expect(allowStatus).not.toContain('POST')

    // every method the Allow header names is actually served (no 405 for it)
    for (const [path, allow] of [
      ['/v1/commands/', allowCmds],
      ['/v1/status', allowStatus],
    ] as const) {
      for (const m of allow) {
        const r = await req(m, m === 'POST' ? withToken(path) : path, m === 'POST' ? {headers: JSON_CT, body: '{}'} : {})
        expect(r.status, `${m} ${path}`).not.toBe(405)
      }
    }
    expectFault(await req('PATCH', '/v1/commands/some-id'), 405, NOT_ALLOWED)
  })

  it('413 for a declared Content-Length above 128 MiB, without reading the body', async () => {
    const declared = 128 * 1024 * 1024 + 1
    const raw = await rawExchange(
      agent.port,
      `POST ${withToken('/v1/commands/')} HTTP/1.1\r\nHost: 127.0.0.1:${agent.port}\r\nContent-Type: application/json\r\nContent-Length: ${declared}\r\n\r\n{"name":`,
      5000,
      (got) => {
        const p = parseRaw(got)
        return got.includes('\r\n\r\n') && p.body.length >= Number(p.headers['content-length'] ?? 0)
      },
    )
    const res = parseRaw(raw)
    expect(res.status, raw).toBe(413)
    const body = JSON.parse(res.body)
    expect(body.faultcode).toBe('Client')
    expect(body.faultstring).toMatch(/^413 Request Entity Too Large: /)

    // exactly at the limit is not refused up front (the body is then read; here it is cut short)
    const atLimit = await rawExchange(agent.port, `POST /v1/commands/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${128 * 1024 * 1024}\r\n\r\n{}`, 300)
    expect(atLimit).toBe('')
  })

  it('a malformed percent-encoding in a command id is a 404, not a server error', async () => {
    const res = await req('GET', '/v1/commands/%E0%A4%A')
    expect(res.status, res.text).toBe(404)
    expect(res.json.faultcode).toBe('Client')
    expect(res.json.faultstring).toMatch(/^Not found: Command Result with id .* not found\.$/)
    const ok = await req('GET', '/v1/commands/%30%30-bogus')
    expectFault(ok, 404, 'Not found: Command Result with id 00-bogus not found.')
  })

  it('a request target starting with // is a path, never another host (no open redirect)', async () => {
    const res = await req('GET', '//evil.example/v1')
    expect(res.status).not.toBe(308)
    expectFault(res, 404, NOT_FOUND_URL)
    const backslash = await req('GET', '/\\evil.example/v1')
    expect(backslash.headers.location ?? '').not.toMatch(/evil\.example\/v1\/$/)
    expect(backslash.status).toBe(404)
    const merged = await req('GET', '//v1/status')
    expect(merged.status).toBe(308)
    expect(merged.headers.location).toBe(`${agent.url}/v1/status`)
    // a command POSTed to //x/commands/ is not run as if it were /commands/
    const post = await req('POST', `//x${withToken('/commands/')}`, {headers: JSON_CT, body: JSON.stringify({name: 'standby.get_partition_uuids', params: {}})})
    expect(post.status).toBe(404)
  })

  it('garbage on the socket gets a JSON 400 and the agent keeps serving', async () => {
    const raw = await rawExchange(agent.port, 'THIS IS NOT HTTP\r\n\r\n')
    const res = parseRaw(raw)
    expect(res.status).toBe(400)
    expect(JSON.parse(res.body)).toMatchObject({faultcode: 'Client'})
    expect((await req('GET', '/v1/status')).status).toBe(200)
  })
})

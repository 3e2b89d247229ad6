/**
 * The agent API's limits, against the real bundle (a child process on 127.0.0.1), over plain HTTP
 * and over TLS (the same https server the auto-TLS uses, here with a certificate from tls.ts):
 *
 * - hundreds of stalled sockets (headers never finished, bodies stopped after Content-Length, TLS
 *   handshakes never started) cannot starve GET /v1/status or Ironic's GET /v1/commands/ polls;
 * - a huge POST with a wrong or missing token is answered 401 long before its body is sent, the
 *   agent's RSS stays flat, and the connection is closed instead of draining it;
 * - stalled headers and bodies are closed within the client timeout (ipa-api-client-timeout), while
 *   a slow body that keeps moving is not;
 * - a body above ipa-api-max-body-size gets 413 (declared or streamed) and the agent keeps serving;
 * - ordinary Ironic traffic (keep-alive polls, a write_image-sized command body) still works.
 */
import {randomBytes} from 'node:crypto'
import {copyFile, mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {fileURLToPath} from 'node:url'
import {readdirSync, readlinkSync} from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import tls from 'node:tls'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {generateSelfSignedCert} from '../src/agent/tls.js'
import {LINGER_BYTES, MAX_CONNECTIONS, UNAUTHENTICATED_BODY_BYTES} from '../src/agent/api/server.js'
import {agentRequest, rssKb, startAgentProcess, type AgentProcess} from './helpers/agent-process.js'

/** The test-only blocking hardware manager (step rdk_test_block waits for args.release). */
const BLOCKING_MANAGER = fileURLToPath(new URL('./fixtures/hardware-managers-blocking/blocking.mjs', import.meta.url))

// The allow-list names no real disk: skip the generic manager's wait for a root device.
const FAST_START = ['--disk-wait-attempts', '0']
const TOKEN_INVALID = '401 Unauthorized: Token invalid.'
const MiB = 1024 * 1024

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Sockets the agent process holds open (its listening socket included). */
function socketFds(pid: number): number {
  let n = 0
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) n++
    } catch {
      // closed meanwhile
    }
  }
  return n
}

interface Parsed {
  status: number
  headers: Record<string, string>
  body: string
}

/** The first complete (Content-Length framed) response in `buf`, if there is one. */
function parseResponse(buf: Buffer): Parsed | undefined {
  const end = buf.indexOf('\r\n\r\n')
  if (end < 0) return undefined
  const [statusLine, ...lines] = buf.subarray(0, end).toString('latin1').split('\r\n')
  const headers: Record<string, string> = {}
  for (const l of lines) {
    const i = l.indexOf(':')
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
  }
  const len = Number(headers['content-length'] ?? 0)
  if (buf.length < end + 4 + len) return undefined
  return {status: Number(statusLine!.split(' ')[1]), headers, body: buf.subarray(end + 4, end + 4 + len).toString('utf8')}
}

/** A socket that sends `data` and records what comes back and when it is closed. */
function stalledSocket(port: number, data: string, opts: {tls?: {ca: string}} = {}) {
  const t0 = performance.now()
  let got = Buffer.alloc(0)
  const state = {closedAfterMs: undefined as number | undefined, response: undefined as Parsed | undefined, connected: false}
  const sock: net.Socket = opts.tls
    ? tls.connect({host: '127.0.0.1', port, ca: opts.tls.ca}, () => {
        state.connected = true
        if (data) sock.write(data)
      })
    : net.connect({host: '127.0.0.1', port}, () => {
        state.connected = true
        if (data) sock.write(data)
      })
  sock.on('data', (c: Buffer) => {
    got = Buffer.concat([got, c])
    state.response ??= parseResponse(got)
  })
  sock.on('error', () => undefined)
  const closed = new Promise<void>((resolve) =>
    sock.once('close', () => {
      state.closedAfterMs = performance.now() - t0
      resolve()
    }),
  )
  return {sock, state, closed}
}

/**
 * POST `total` body bytes (Content-Length or chunked) on a raw socket, honouring backpressure, until
 * all is sent or the agent closes the connection. RSS of `pid` is sampled meanwhile.
 */
async function streamPost(
  port: number,
  path: string,
  total: number,
  opts: {chunked?: boolean; pid: number},
): Promise<{response?: Parsed; sentWhenAnswered?: number; sent: number; closedByAgent: boolean; rssMaxKb: number; ms: number}> {
  const t0 = performance.now()
  const sock = net.connect({host: '127.0.0.1', port})
  await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject))
  let got = Buffer.alloc(0)
  let response: Parsed | undefined
  let sent = 0
  let sentWhenAnswered: number | undefined
  let closed = false
  sock.on('data', (c: Buffer) => {
    got = Buffer.concat([got, c])
    if (!response) {
      response = parseResponse(got)
      if (response) sentWhenAnswered = sent
    }
  })
  sock.on('error', () => undefined)
  const closedP = new Promise<void>((resolve) =>
    sock.once('close', () => {
      closed = true
      resolve()
    }),
  )
  let rssMaxKb = rssKb(opts.pid)
  const sampler = setInterval(() => (rssMaxKb = Math.max(rssMaxKb, rssKb(opts.pid))), 20)
  const framing = opts.chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${total}`
  sock.write(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\n${framing}\r\n\r\n`)
  const piece = Buffer.alloc(MiB, 0x20)
  piece.write('{"name":"poll.get_hardware_info","params":{"pad":"')
  const chunkHead = Buffer.from(`${MiB.toString(16)}\r\n`)
  const crlf = Buffer.from('\r\n')
  while (sent < total && !closed && !sock.destroyed) {
    const data = opts.chunked ? Buffer.concat([chunkHead, piece, crlf]) : piece
    const ok = sock.write(data)
    sent += piece.length
    if (!ok) await Promise.race([new Promise((r) => sock.once('drain', r)), closedP])
  }
  if (!closed) {
    if (opts.chunked && !sock.destroyed) sock.write('0\r\n\r\n')
    await Promise.race([closedP, sleep(5000)])
  }
  const closedByAgent = closed
  clearInterval(sampler)
  rssMaxKb = Math.max(rssMaxKb, rssKb(opts.pid))
  sock.destroy()
  return {response, sentWhenAnswered, sent, closedByAgent, rssMaxKb, ms: performance.now() - t0}
}

/** One request over a given agent (keep-alive or not), http or https; never throws on a status. */
function request(
  url: string,
  opts: {method?: string; path: string; body?: string | Buffer; agent?: http.Agent; ca?: string; timeoutMs?: number},
): Promise<{status: number; json: any; text: string; ms: number}> {
  const u = new URL(url)
  if (u.hostname !== '127.0.0.1') throw new Error(`refusing non-loopback ${url}`)
  const mod = u.protocol === 'https:' ? https : http
  const t0 = performance.now()
  return new Promise((resolve, reject) => {
    const req = mod.request(
      {
        host: '127.0.0.1',
        port: Number(u.port),
        method: opts.method ?? 'GET',
        path: opts.path,
        agent: opts.agent ?? false,
        ca: opts.ca,
        headers: opts.body === undefined ? {} : {'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(opts.body))},
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          clearTimeout(timer)
          const text = Buffer.concat(chunks).toString('utf8')
          let json: unknown
          try {
            json = JSON.parse(text)
          } catch {
            json = undefined
          }
          resolve({status: res.statusCode ?? 0, json, text, ms: performance.now() - t0})
        })
      },
    )
    const timer = setTimeout(() => req.destroy(new Error(`${opts.method ?? 'GET'} ${opts.path} timed out`)), opts.timeoutMs ?? 30_000)
    req.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    req.end(opts.body)
  })
}

/** A write_image-sized command: a ~13 MiB base64 "config drive" three times, as Ironic sends it. */
function writeImageSizedBody(): {text: string; configdrive: string} {
  const configdrive = randomBytes(10 * MiB).toString('base64')
  const text = JSON.stringify({
    name: 'poll.set_node_info',
    params: {
      node_info: {
        node: {uuid: 'c3b8a0b2-5b5e-4a4e-9a43-1a2b3c4d5e6f', instance_info: {configdrive, image_source: 'http://127.0.0.1/img.qcow2'}},
        image_info: {id: 'img', urls: ['http://127.0.0.1/img.qcow2'], configdrive},
        configdrive,
      },
    },
  })
  return {text, configdrive}
}

/**
 * Stall `n` sockets (half with unfinished headers, half with a command body stopped after its
 * Content-Length headers, a quarter of those with the valid token), then check that fresh
 * GET /v1/status requests and a keep-alive poller of GET /v1/commands/ get through.
 */
async function floodAndProbe(agent: AgentProcess, n: number, opts: {ca?: string; rawHalf?: boolean} = {}) {
  const polls: {ok: boolean; ms: number; err?: string}[] = []
  const pollAgent = opts.ca ? new https.Agent({keepAlive: true, maxSockets: 1, ca: opts.ca}) : new http.Agent({keepAlive: true, maxSockets: 1})
  let polling = true
  const poller = (async () => {
    while (polling) {
      // (a poll whose idle kept-alive socket was shed the instant it was reused is retried once,
      // as urllib3 does for a dropped pooled connection)
      let res: {ok: boolean; ms: number; err?: string} | undefined
      for (let attempt = 0; attempt < 2 && !res?.ok; attempt++) {
        try {
          const r = await request(agent.url, {path: '/v1/commands/', agent: pollAgent, ca: opts.ca, timeoutMs: 5000})
          res = {ok: r.status === 200, ms: r.ms}
        } catch (err) {
          res = {ok: false, ms: NaN, err: (err as Error).message}
        }
      }
      polls.push(res!)
      await sleep(100)
    }
  })()

  const stalled: ReturnType<typeof stalledSocket>[] = []
  for (let i = 0; i < n; i++) {
    const headers = `GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stall: `
    const token = i % 4 === 1 ? agent.token : 'wrong'
    const body = `POST /v1/commands/?agent_token=${token} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{"name":"poll.`
    // over TLS, "headers stalled" becomes "TLS handshake never started" for half of them
    const raw = opts.ca && opts.rawHalf && i % 2 === 0
    stalled.push(raw ? stalledSocket(agent.port, '') : stalledSocket(agent.port, i % 2 === 0 ? headers : body, opts.ca ? {tls: {ca: opts.ca}} : {}))
    if (i % 50 === 49) await sleep(10)
  }
  await sleep(500)
  const fdsDuring = socketFds(agent.pid)
  const statuses: {status: number; ms: number}[] = []
  for (let i = 0; i < 5; i++) {
    const r = await request(agent.url, {path: '/v1/status', ca: opts.ca, timeoutMs: 10_000})
    statuses.push({status: r.status, ms: r.ms})
  }
  const shedByAgent = stalled.filter((s) => s.state.closedAfterMs !== undefined).length
  polling = false
  await poller
  pollAgent.destroy()
  for (const s of stalled) s.sock.destroy()
  return {statuses, polls, fdsDuring, shedByAgent}
}

describe('agent API limits over plain HTTP (default settings)', () => {
  let agent: AgentProcess

  beforeAll(async () => {
    agent = await startAgentProcess({args: FAST_START})
  })
  afterAll(async () => {
    await agent?.stop()
  })

  it('answers GET /v1/status within a few seconds while 400 stalled sockets are open, and lets keep-alive polls through', async () => {
    const {statuses, polls, fdsDuring, shedByAgent} = await floodAndProbe(agent, 400)
    console.log(
      `api-limits flood (http): /v1/status ${statuses.map((s) => `${s.status}/${s.ms.toFixed(0)}ms`).join(' ')}; ` +
        `${polls.filter((p) => p.ok).length}/${polls.length} polls ok (max ${Math.max(...polls.map((p) => p.ms).filter(Number.isFinite)).toFixed(0)} ms); ` +
        `agent sockets ${fdsDuring}; stalled sockets shed by the agent ${shedByAgent}/400`,
    )
    for (const s of statuses) {
      expect(s.status).toBe(200)
      expect(s.ms).toBeLessThan(3000)
    }
    expect(polls.length).toBeGreaterThan(3)
    expect(
      polls.filter((p) => !p.ok),
      JSON.stringify(polls),
    ).toEqual([])
    // the connection limit holds (plus the listening socket and a few of the agent's own)
    expect(fdsDuring).toBeLessThanOrEqual(MAX_CONNECTIONS + 8)
    expect(shedByAgent).toBeGreaterThanOrEqual(400 - MAX_CONNECTIONS)
    expect(agent.exitStatus()).toBeNull()
  }, 60_000)

  for (const variant of [
    {name: 'a wrong token, Content-Length', path: '/v1/commands/?agent_token=wrongwrongwrongwrongwrongwrongwrongwrong', chunked: false},
    {name: 'no token, chunked', path: '/v1/commands/', chunked: true},
  ]) {
    it(`answers a 512 MiB POST with ${variant.name} 401 before the body is sent, with flat RSS, and closes the connection`, async () => {
      // warm up and let the heap settle, then take the baseline
      for (let i = 0; i < 20; i++) await agentRequest(agent.url, {path: '/v1/status'})
      await sleep(1000)
      const before = rssKb(agent.pid)
      const total = 512 * MiB
      const r = await streamPost(agent.port, variant.path, total, {chunked: variant.chunked, pid: agent.pid})
      console.log(
        `api-limits 512 MiB bad-token POST (${variant.name}): answered ${r.response?.status} after ${((r.sentWhenAnswered ?? NaN) / MiB).toFixed(1)} MiB sent, ` +
          `${(r.sent / MiB).toFixed(1)} MiB sent before the agent closed (${r.closedByAgent}), ${r.ms.toFixed(0)} ms; RSS ${(before / 1024).toFixed(1)} → max ${(r.rssMaxKb / 1024).toFixed(1)} MB`,
      )
      expect(r.response?.status).toBe(401)
      expect(JSON.parse(r.response!.body)).toEqual({faultcode: 'Client', faultstring: TOKEN_INVALID})
      expect(r.sentWhenAnswered).toBeDefined()
      // answered after ~64 KiB were read (what the client and the kernel had in flight is on top)
      expect(r.sentWhenAnswered!).toBeLessThan(64 * MiB)
      // closed instead of drained: the agent discards LINGER_BYTES after its answer, not 512 MiB
      expect(r.closedByAgent).toBe(true)
      expect(r.sent).toBeLessThan(LINGER_BYTES + 112 * MiB)
      expect(r.rssMaxKb - before, `RSS before ${before} kB, max ${r.rssMaxKb} kB`).toBeLessThan(40 * 1024)
      expect((await agentRequest(agent.url, {path: '/v1/status'})).status).toBe(200)
    }, 60_000)
  }

  it('still answers a small malformed body with a wrong token 400, as IPA 9.4 (the body is read up to 64 KiB)', async () => {
    const small = await agentRequest(agent.url, {
      method: 'POST',
      path: '/v1/commands/?agent_token=wrong',
      headers: {'Content-Type': 'application/json'},
      body: '{}',
    })
    expect(small.status).toBe(400)
    expect(small.json.faultstring).toBe('400 Bad Request: Missing or invalid name or params')
    // a well-formed body exactly at that bound is still read and answered 401
    const pad = UNAUTHENTICATED_BODY_BYTES - JSON.stringify({name: 'poll.x', params: {p: ''}}).length
    const atBound = JSON.stringify({name: 'poll.x', params: {p: 'x'.repeat(pad)}})
    expect(atBound.length).toBe(UNAUTHENTICATED_BODY_BYTES)
    const r = await agentRequest(agent.url, {
      method: 'POST',
      path: '/v1/commands/?agent_token=wrong',
      headers: {'Content-Type': 'application/json'},
      body: atBound,
    })
    expect(r.status).toBe(401)
    // one byte more of malformed JSON is no longer parsed: 401, not 400
    const over = await agentRequest(agent.url, {
      method: 'POST',
      path: '/v1/commands/?agent_token=wrong',
      headers: {'Content-Type': 'application/json'},
      body: '{'.repeat(UNAUTHENTICATED_BODY_BYTES + 1),
    })
    expect(over.status).toBe(401)
    expect(over.json.faultstring).toBe(TOKEN_INVALID)
  })

  it('serves ordinary Ironic traffic: keep-alive polls and a write_image-sized command body with the token', async () => {
    const keepAlive = new http.Agent({keepAlive: true, maxSockets: 1})
    try {
      for (let i = 0; i < 20; i++) {
        const r = await request(agent.url, {path: '/v1/commands/', agent: keepAlive})
        expect(r.status).toBe(200)
      }
      const {text, configdrive} = writeImageSizedBody()
      expect(text.length).toBeGreaterThan(40 * MiB)
      const posted = await request(agent.url, {method: 'POST', path: `/v1/commands/?agent_token=${agent.token}`, body: text, agent: keepAlive})
      expect(posted.status, posted.text.slice(0, 300)).toBe(200)
      expect(posted.json.command_status).toBe('SUCCEEDED')
      const got = await request(agent.url, {path: `/v1/commands/${posted.json.id}`, agent: keepAlive})
      expect(got.json.command_status).toBe('SUCCEEDED')
      expect(configdrive.length).toBeGreaterThan(13 * MiB)
    } finally {
      keepAlive.destroy()
    }
  }, 60_000)
})

describe('agent API limits with ipa-api-client-timeout=2 and ipa-api-max-body-size=1', () => {
  let agent: AgentProcess

  beforeAll(async () => {
    agent = await startAgentProcess({args: [...FAST_START, '--api-client-timeout', '2', '--api-max-body-size', '1']})
  })
  afterAll(async () => {
    await agent?.stop()
  })

  it('closes stalled headers and bodies within the timeout, answering 408 where no answer was given yet', async () => {
    const cases = {
      nothing: stalledSocket(agent.port, ''),
      headers: stalledSocket(agent.port, 'GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stall: '),
      body: stalledSocket(agent.port, `POST /v1/commands/?agent_token=${agent.token} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"name":`),
      bodyBadToken: stalledSocket(agent.port, 'POST /v1/commands/?agent_token=wrong HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"name":'),
      // answered at once; its unread body then stalls
      getWithBody: stalledSocket(agent.port, 'GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc'),
    }
    // a body that keeps moving (a byte every 400 ms for ~5 s) is not cut by the 2 s idle timeout
    const slowBody = JSON.stringify({name: 'poll.set_node_info', params: {node_info: {}}})
    const slow = stalledSocket(
      agent.port,
      `POST /v1/commands/?agent_token=${agent.token} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${slowBody.length}\r\n\r\n`,
    )
    const trickle = (async () => {
      while (!slow.state.connected) await sleep(10)
      for (const ch of slowBody.slice(0, 12)) {
        await sleep(400)
        slow.sock.write(ch)
      }
      slow.sock.write(slowBody.slice(12))
    })()
    await Promise.all([...Object.values(cases).map((c) => c.closed), trickle])
    for (let i = 0; i < 50 && !slow.state.response; i++) await sleep(100)

    const report = Object.entries(cases).map(([k, c]) => `${k} ${c.state.response?.status ?? '-'} closed after ${c.state.closedAfterMs!.toFixed(0)} ms`)
    console.log(`api-limits timeouts (2 s): ${report.join('; ')}; slow body ${slow.state.response?.status}`)
    for (const [k, c] of Object.entries(cases)) {
      expect(c.state.closedAfterMs, k).toBeGreaterThanOrEqual(1900)
      // 2 s, plus up to 1 s (node checks header deadlines once a second), plus slack for a busy machine
      expect(c.state.closedAfterMs, k).toBeLessThan(5500)
    }
    for (const k of ['nothing', 'headers', 'body', 'bodyBadToken'] as const) {
      const res = cases[k].state.response
      expect(res?.status, k).toBe(408)
      expect(JSON.parse(res!.body).faultstring, k).toMatch(/^408 Request Timeout: /)
    }
    expect(cases.getWithBody.state.response?.status).toBe(200)
    expect(slow.state.response?.status, 'a slow but moving body').toBe(200)
    expect(JSON.parse(slow.state.response!.body).command_status).toBe('SUCCEEDED')
    slow.sock.destroy()
  }, 30_000)

  it('answers a body above ipa-api-max-body-size 413 (declared, or while it streams) and keeps serving', async () => {
    // declared: answered from the headers alone
    const declared = stalledSocket(
      agent.port,
      `POST /v1/commands/?agent_token=${agent.token} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${MiB + 1}\r\n\r\n`,
    )
    for (let i = 0; i < 50 && !declared.state.response; i++) await sleep(50)
    expect(declared.state.response?.status).toBe(413)
    const fault = JSON.parse(declared.state.response!.body)
    expect(fault.faultcode).toBe('Client')
    expect(fault.faultstring).toMatch(/^413 Request Entity Too Large: .*ipa-api-max-body-size/)
    declared.sock.destroy()

    // chunked: the bound is enforced while the body streams, not after it
    const streamed = await streamPost(agent.port, `/v1/commands/?agent_token=${agent.token}`, 256 * MiB, {chunked: true, pid: agent.pid})
    console.log(
      `api-limits 413 streamed: after ${((streamed.sentWhenAnswered ?? NaN) / MiB).toFixed(1)} MiB, ${(streamed.sent / MiB).toFixed(1)} MiB sent before the close`,
    )
    expect(streamed.response?.status).toBe(413)
    expect(streamed.sentWhenAnswered!).toBeLessThan(64 * MiB)
    expect(streamed.closedByAgent).toBe(true)
    expect(streamed.sent).toBeLessThan(128 * MiB)

    // exactly at the bound is accepted and parsed
    const name = JSON.stringify({name: 'poll.nosuch', params: {pad: ''}})
    const atLimit = JSON.stringify({name: 'poll.nosuch', params: {pad: 'x'.repeat(MiB - name.length)}})
    expect(atLimit.length).toBe(MiB)
    const r = await agentRequest(agent.url, {
      method: 'POST',
      path: `/v1/commands/?agent_token=${agent.token}`,
      headers: {'Content-Type': 'application/json'},
      body: atLimit,
    })
    expect(r.json?.faultstring, r.text.slice(0, 200)).toBe('Invalid command: Unknown command: nosuch')

    // and the agent goes on serving
    expect((await agentRequest(agent.url, {path: '/v1/status'})).status).toBe(200)
    const ok = await agentRequest(agent.url, {
      method: 'POST',
      path: `/v1/commands/?agent_token=${agent.token}`,
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({name: 'poll.set_node_info', params: {node_info: {}}}),
    })
    expect(ok.status, ok.text).toBe(200)
    expect(agent.exitStatus()).toBeNull()
  }, 60_000)
})

describe('agent API limits over TLS (ipa-api-client-timeout=2)', () => {
  let agent: AgentProcess
  let dir: string
  let ca: string

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-api-limits-'))
    const cert = generateSelfSignedCert({address: '127.0.0.1', commonName: 'agent'})
    ca = cert.certPem
    await writeFile(join(dir, 'agent.crt'), cert.certPem)
    await writeFile(join(dir, 'agent.key'), cert.keyPem, {mode: 0o600})
    await mkdir(join(dir, 'managers'))
    await copyFile(BLOCKING_MANAGER, join(dir, 'managers', 'blocking.mjs'))
    agent = await startAgentProcess({
      args: [
        ...FAST_START,
        ...['--listen-tls', '--tls-cert-file', join(dir, 'agent.crt'), '--tls-key-file', join(dir, 'agent.key')],
        ...['--api-client-timeout', '2', '--hardware-managers-dir', join(dir, 'managers')],
      ],
    })
  })
  afterAll(async () => {
    await agent?.stop()
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('answers GET /v1/status over https while 300 sockets stall (handshakes never started, requests unfinished)', async () => {
    expect(agent.url).toMatch(/^https:/)
    const {statuses, polls, fdsDuring, shedByAgent} = await floodAndProbe(agent, 300, {ca, rawHalf: true})
    console.log(
      `api-limits flood (https): /v1/status ${statuses.map((s) => `${s.status}/${s.ms.toFixed(0)}ms`).join(' ')}; ` +
        `${polls.filter((p) => p.ok).length}/${polls.length} polls ok; agent sockets ${fdsDuring}; shed ${shedByAgent}/300`,
    )
    for (const s of statuses) {
      expect(s.status).toBe(200)
      expect(s.ms).toBeLessThan(3000)
    }
    expect(
      polls.filter((p) => !p.ok),
      JSON.stringify(polls),
    ).toEqual([])
    expect(fdsDuring).toBeLessThanOrEqual(MAX_CONNECTIONS + 8)
    expect(shedByAgent).toBeGreaterThanOrEqual(300 - MAX_CONNECTIONS)
  }, 60_000)

  it('answers a wrong-token body 401 over https and serves a write_image-sized command with the token', async () => {
    const bad = await request(agent.url, {method: 'POST', path: '/v1/commands/?agent_token=wrong', body: 'x'.repeat(2 * MiB), ca})
    expect(bad.status).toBe(401)
    expect(bad.json).toEqual({faultcode: 'Client', faultstring: TOKEN_INVALID})
    const keepAlive = new https.Agent({keepAlive: true, maxSockets: 1, ca})
    try {
      for (let i = 0; i < 10; i++) expect((await request(agent.url, {path: '/v1/commands/', agent: keepAlive})).status).toBe(200)
      const {text} = writeImageSizedBody()
      const posted = await request(agent.url, {method: 'POST', path: `/v1/commands/?agent_token=${agent.token}`, body: text, agent: keepAlive})
      expect(posted.status, posted.text.slice(0, 300)).toBe(200)
      expect(posted.json.command_status).toBe('SUCCEEDED')
    } finally {
      keepAlive.destroy()
    }
  }, 60_000)

  it('never times out or sheds an authenticated request being answered: a POST ?wait=true outlives the client timeout, a flood and 200 unauthenticated GET ?wait=true', async () => {
    const release = join(dir, 'release-1')
    const body = JSON.stringify({
      name: 'clean.execute_clean_step',
      params: {step: {step: 'rdk_test_block', priority: 0, interface: 'deploy', args: {release}}, node: {}, ports: []},
    })
    const posting = request(agent.url, {method: 'POST', path: `/v1/commands/?agent_token=${agent.token}&wait=true`, body, ca, timeoutMs: 30_000})
    await sleep(300)
    const id = (await request(agent.url, {path: '/v1/commands/', ca})).json.commands[0].id
    // 300 stalled sockets push the agent past its connection limit while the answer is pending,
    // and 200 GET ?wait=true (no token needed) block on the running command
    const stalled = Array.from({length: 300}, (_, i) =>
      i % 2 ? stalledSocket(agent.port, '') : stalledSocket(agent.port, 'GET /v1/ HTTP/1.1\r\n', {tls: {ca}}),
    )
    const waiters = Array.from({length: 200}, () =>
      stalledSocket(agent.port, `GET /v1/commands/${id}?wait=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`, {tls: {ca}}),
    )
    // past the 2 s client timeout and the shedding grace
    await sleep(3500)
    const status = await request(agent.url, {path: '/v1/status', ca, timeoutMs: 5000})
    expect(status.status).toBe(200)
    const waitersShed = waiters.filter((w) => w.state.closedAfterMs !== undefined).length
    console.log(`api-limits pending answer: /v1/status ${status.ms.toFixed(0)} ms; GET ?wait=true sockets shed ${waitersShed}/200`)
    expect(waitersShed).toBeGreaterThan(0)
    await writeFile(release, '')
    const res = await posting
    for (const s of [...stalled, ...waiters]) s.sock.destroy()
    expect(res.status, res.text.slice(0, 300)).toBe(200)
    expect(res.json.command_status).toBe('SUCCEEDED')
    expect(res.json.command_result.clean_result).toEqual({released: release})
  }, 60_000)
})

/**
 * Secrets never show: the agent token (from the kernel command line, the config file, the
 * --agent-token flag, or handed out by Ironic at lookup) and the passwords a request carries
 * (rescue_password, image credentials in URLs, image_server_password, image_request_authorization,
 * proxy credentials, temp URL signatures) appear in none of: the agent's stderr log, the
 * log.collect_system_logs bundle (every member: ps, dmesg, /proc copies, agent.log, what managers
 * add), GET /v1/commands/ results and errors, and inspection data (inventory + `logs`).
 *
 * The real agent bundle runs as a child process on loopback; a custom hardware manager puts the
 * secrets where a careless one would (its bundle members, its log lines, its step result), and a
 * helper process carries `ipa-agent-token=…` in its argv so the real `ps` output has it.
 */
import {spawn, type ChildProcess} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {mkdtempSync, rmSync, writeFileSync, mkdirSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {gunzipSync} from 'node:zlib'
import tar from 'tar-stream'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
// @ts-expect-error -- plain ESM JavaScript (bench/), no type declarations
import {startIronicStub} from '../bench/lib/ironic-stub.js'
import {defaultConfig} from '../src/agent/config.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {HardwareManager, ManagerRegistry} from '../src/agent/hardware/manager.js'
import {HardwareSupport} from '../src/agent/hardware/types.js'
import {collectInspectionData} from '../src/agent/inspector.js'
import {log} from '../src/agent/log.js'
import {addSecret, addSecretsFrom, redactBuffer, redactJson, redactText} from '../src/agent/redact.js'
import type {AgentRuntime} from '../src/agent/runtime.js'
import {agentRequest, startAgentProcess, type AgentProcess} from './helpers/agent-process.js'

const JSON_CT = {'Content-Type': 'application/json'}
const quiet = log.child({test: 'agent-secrets'})
const hex = (n: number) => randomBytes(n).toString('hex')

async function untar(b64: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {}
  const ex = tar.extract()
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, stream, next) => {
      const chunks: Buffer[] = []
      stream.on('data', (c: Buffer) => chunks.push(c))
      stream.on('end', () => {
        out[h.name] = Buffer.concat(chunks)
        next()
      })
    })
    ex.on('finish', resolve)
    ex.on('error', reject)
  })
  ex.end(gunzipSync(Buffer.from(b64, 'base64')))
  await done
  return out
}

/** Every place `secret` (or its URL-encoded form) occurs in `text`, as short excerpts. */
function leaks(text: string, secrets: string[]): string[] {
  const found: string[] = []
  for (const s of secrets) {
    for (const form of new Set([s, encodeURIComponent(s)])) {
      let i = text.indexOf(form)
      while (i >= 0 && found.length < 20) {
        found.push(`${s.slice(0, 6)}… at ${i}: ${JSON.stringify(text.slice(Math.max(0, i - 60), i + form.length + 20))}`)
        i = text.indexOf(form, i + 1)
      }
    }
  }
  return found
}

describe('redact.ts', () => {
  it('masks secret parameters, URL credentials, secret keys and known values; leaves the rest', () => {
    const tok = `tok${hex(20)}`
    addSecret(tok)
    const cases: [string, string][] = [
      [
        `BOOT_IMAGE=/vmlinuz ipa-agent-token=${hex(8)} ipa-api-url=http://10.0.0.1:6385 console=ttyS0`,
        'BOOT_IMAGE=/vmlinuz ipa-agent-token=*** ipa-api-url=http://10.0.0.1:6385 console=ttyS0',
      ],
      ['rootpwd="$6$salt$hash" sshkey="ssh-ed25519 AAAA"', 'rootpwd="***" sshkey="ssh-ed25519 AAAA"'],
      ['root 12 1 0 node /agent.mjs --agent-token=-abc_def --listen-port 9999', 'root 12 1 0 node /agent.mjs --agent-token=*** --listen-port 9999'],
      ['node agent.mjs --agent-token abcdefgh --debug', 'node agent.mjs --agent-token *** --debug'],
      ['node\0agent.mjs\0--agent-token=abc\0ipa-agent-token=def\0', 'node\0agent.mjs\0--agent-token=***\0ipa-agent-token=***\0'],
      ['GET /v1/commands/?agent_token=abcdef&wait=true', 'GET /v1/commands/?agent_token=***&wait=true'],
      [
        'https://user:p%40ss@swift.example/v1/AUTH_x/img?temp_url_sig=deadbeef&temp_url_expires=99',
        'https://***@swift.example/v1/AUTH_x/img?temp_url_sig=***&temp_url_expires=99',
      ],
      ['{"image_server_password": "hunter2", "id": "img"}', '{"image_server_password": "***", "id": "img"}'],
      ["{'rescue_password': 'x'}", "{'rescue_password': '***'}"],
      ['Authorization: Basic dXNlcjpwYXNz', 'Authorization: Basic ***'],
      [`the token ${tok} and again ${encodeURIComponent(tok)}`, 'the token *** and again ***'],
      ['BIOS Information: Basic Input/Output System 1.2, vendor SeaBIOS', 'BIOS Information: Basic Input/Output System 1.2, vendor SeaBIOS'],
    ]
    for (const [input, want] of cases) expect(redactText(input), input).toBe(want)
    expect(
      redactJson({agent_token_required: true, agent_token: 'x', nested: [{rescue_password: 'pw', size: 5, url: 'http://a:b@h/'}], ['__proto__']: {k: 1}}),
    ).toEqual({
      agent_token_required: true,
      agent_token: '***',
      nested: [{rescue_password: '***', size: 5, url: 'http://***@h/'}],
      ['__proto__']: {k: 1},
    })
    // bytes that are not text survive, only the secret changes
    const bin = Buffer.concat([Buffer.from([0, 255, 128, 10]), Buffer.from(tok), Buffer.from([200, 201])])
    expect(redactBuffer(bin)).toEqual(Buffer.concat([Buffer.from([0, 255, 128, 10]), Buffer.from('***'), Buffer.from([200, 201])]))
    // a request's secrets are masked by value from then on
    const pw = `pw-${hex(6)}`
    const urlPw = `up-${hex(6)}`
    addSecretsFrom({rescue_password: pw, image_info: {urls: [`http://bob:${urlPw}@127.0.0.1/x`]}})
    expect(redactText(`said ${pw} and ${urlPw}`)).toBe('said *** and ***')
  })
})

const SECRETS_MANAGER = `
import {readFileSync} from 'node:fs'
export default (rdk) => new (class RdkCarelessManager extends rdk.HardwareManager {
  evaluate_hardware_support() { return rdk.HardwareSupport.MAINLINE }
  get_clean_steps() { return [{step: 'echo_step', priority: 0, interface: 'deploy', reboot_requested: false, abortable: true}] }
  echo_step(node, ports, args) {
    rdk.log.info('echo step args', {args})
    rdk.log.info('echo step text ' + JSON.stringify(args))
    return {echo: args, text: JSON.stringify(args)}
  }
  collect_system_logs(io) {
    const cmdline = readFileSync(process.env.RDK_TEST_CMDLINE, 'utf8')
    io['journal'] = 'Dec 04 kernel: Kernel command line: ' + cmdline + '\\nDec 04 agent[1]: started with ' + process.argv.join(' ') + '\\n'
    io['proc_self_cmdline'] = readFileSync('/proc/self/cmdline')
    io['cmdline-copy'] = Buffer.from(cmdline)
  }
})()
`

describe('the agent process', () => {
  let dir: string
  let agent: AgentProcess | undefined
  let sleeper: ChildProcess | undefined

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'rdk-secrets-'))
  })
  afterAll(async () => {
    await agent?.stop()
    if (sleeper?.pid !== undefined && sleeper.exitCode === null) process.kill(sleeper.pid, 'SIGKILL')
    if (dir) rmSync(dir, {recursive: true, force: true})
  })

  it('the token (kernel command line, config file, flag) and request secrets are in no log, bundle member or result', async () => {
    const TOKEN = `rdk${hex(20)}`
    const ROOTPWD = `$6$${hex(4)}$${hex(16)}`
    const cmdline = join(dir, 'cmdline')
    writeFileSync(cmdline, `BOOT_IMAGE=/vmlinuz ipa-standalone=1 ipa-agent-token=${TOKEN} ipa-disk-wait-attempts=0 rootpwd="${ROOTPWD}" console=ttyS0\n`)
    const config = join(dir, 'agent.json')
    writeFileSync(config, JSON.stringify({agent_token: TOKEN}))
    const managers = join(dir, 'managers')
    mkdirSync(managers)
    writeFileSync(join(managers, 'careless.mjs'), SECRETS_MANAGER)
    // Another process whose argv carries the token as a kernel parameter would: `ps` lists it.
    sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 120000)', `ipa-agent-token=${TOKEN}`], {stdio: 'ignore'})

    const a = (agent = await startAgentProcess({
      token: TOKEN,
      args: ['--cmdline', cmdline, '--config', config, '--hardware-managers-dir', managers, '--disk-wait-attempts', '0'],
      env: {RDK_TEST_CMDLINE: cmdline},
    }))
    const post = async (name: string, params: unknown) => {
      const res = await agentRequest(a.url, {
        method: 'POST',
        path: `/v1/commands/?agent_token=${encodeURIComponent(TOKEN)}&wait=true`,
        headers: JSON_CT,
        body: JSON.stringify({name, params}),
        timeoutMs: 120_000,
      })
      expect(res.status, res.text).toBe(200)
      return res.json as Record<string, any>
    }

    const S = {
      rescue: `rescue-${hex(6)}`,
      img: `img-${hex(6)}`,
      sig: `sig${hex(10)}`,
      server: `srv-${hex(6)}`,
      auth: Buffer.from(`user:${hex(6)}`).toString('base64'),
      proxy: `proxy-${hex(6)}`,
      basic: `basic-${hex(6)}`,
    }
    const args = {
      rescue_password: S.rescue,
      image_info: {
        id: 'img',
        urls: [`http://imguser:${S.img}@127.0.0.1:9/img.qcow2?temp_url_sig=${S.sig}&temp_url_expires=1`],
        image_server_password: S.server,
        image_request_authorization: S.auth,
        proxies: {https: `http://pu:${S.proxy}@127.0.0.1:3128`},
      },
      image_source: `http://bob:${S.basic}@127.0.0.1/image.raw`,
      agent_token: TOKEN,
    }
    const echoed = await post('clean.execute_clean_step', {step: {step: 'echo_step', interface: 'deploy', priority: 0, args}, node: {}, ports: []})
    expect(echoed.command_status).toBe('SUCCEEDED')
    // structure kept, secrets masked
    expect(echoed.command_result.clean_result.echo.rescue_password).toBe('***')
    expect(echoed.command_result.clean_result.echo.image_info.urls[0]).toBe('http://***@127.0.0.1:9/img.qcow2?temp_url_sig=***&temp_url_expires=1')
    expect(echoed.command_result.clean_step.step).toBe('echo_step')
    // an unknown step named like the token: the error names it, masked
    const unknown = await post('clean.execute_clean_step', {step: {step: TOKEN, interface: 'deploy', priority: 0}, node: {}, ports: []})
    expect(unknown.command_status).toBe('FAILED')
    expect(unknown.command_error).toMatchObject({type: 'HardwareManagerMethodNotFound', details: 'Could not find method: ***'})

    const bundle = await post('log.collect_system_logs', {})
    expect(bundle.command_status).toBe('SUCCEEDED')
    const members = await untar(bundle.command_result.system_logs)
    const names = Object.keys(members)
    // IPA-like member names kept; the careless manager's members are there
    for (const n of ['agent.log', 'ps.txt', 'dmesg.txt', 'proc_cmdline', 'journal', 'proc_self_cmdline', 'cmdline-copy']) expect(names, n).toContain(n)
    const secrets = [TOKEN, ROOTPWD, ...Object.values(S)]
    for (const [name, data] of Object.entries(members)) {
      expect(leaks(data.toString('latin1'), secrets), name).toEqual([])
      expect(leaks(data.toString('utf8'), secrets), name).toEqual([])
    }
    // masked, not missing: the places that had them say ***
    const ps = members['ps.txt']!.toString()
    expect(ps).toMatch(/--agent-token=\*\*\*/)
    expect(ps).toMatch(/ipa-agent-token=\*\*\*/)
    expect(members['cmdline-copy']!.toString()).toContain('ipa-agent-token=*** ipa-disk-wait-attempts=0 rootpwd="***"')
    expect(members.journal!.toString()).toContain('Kernel command line: BOOT_IMAGE=/vmlinuz ipa-standalone=1 ipa-agent-token=***')
    expect(members.proc_self_cmdline!.toString()).toContain('--agent-token=***')
    const agentLog = members['agent.log']!.toString()
    expect(agentLog).toContain('echo step text')
    expect(agentLog).toContain('refusing to run clean step ***')

    const commands = await agentRequest(a.url, {method: 'GET', path: '/v1/commands/'})
    expect(commands.status).toBe(200)
    expect(leaks(commands.text, secrets)).toEqual([])
    expect(commands.json.commands).toHaveLength(3)
    expect(leaks(a.logs(), secrets)).toEqual([])
    expect(a.logs()).toContain('echo step args')
  }, 120_000)

  it('the token Ironic hands out at lookup is masked from then on', async () => {
    await agent?.stop()
    agent = undefined
    const stub = await startIronicStub()
    try {
      const m = new GenericHardwareManager()
      m.attach({config: defaultConfig(), log: quiet})
      const mac = (await m.list_network_interfaces()).map((i) => i.mac_address).find((x) => x && x !== '00:00:00:00:00:00')
      if (!mac) throw new Error('this machine has no network interface with a MAC: the agent could not look up')
      const node = stub.addNode({mac})
      // plain http (no auto-TLS) so the test can talk to it with agentRequest
      const cmdline = join(dir, 'cmdline-lookup')
      writeFileSync(cmdline, 'ipa-enable-auto-tls=0\n')
      const a = (agent = await startAgentProcess({
        standalone: false,
        args: ['--api-url', stub.url, '--advertise-host', '127.0.0.1', '--lookup-interval', '1', '--disk-wait-attempts', '0', '--cmdline', cmdline],
      }))
      await stub.waitForHeartbeat(node, 30_000)
      const token = node.token as string
      const res = await agentRequest(a.url, {
        method: 'POST',
        path: `/v1/commands/?agent_token=${encodeURIComponent(token)}`,
        headers: JSON_CT,
        body: JSON.stringify({name: 'log.collect_system_logs', params: {}}),
        timeoutMs: 60_000,
      })
      expect(res.status, res.text).toBe(200)
      const members = await untar(res.json.command_result.system_logs)
      // the agent's own argv has no token here; it only ever was in lookup's answer and heartbeats
      for (const [name, data] of Object.entries(members)) expect(leaks(data.toString('latin1'), [token]), name).toEqual([])
      const unknown = await agentRequest(a.url, {
        method: 'POST',
        path: `/v1/commands/?agent_token=${encodeURIComponent(token)}&wait=true`,
        headers: JSON_CT,
        body: JSON.stringify({name: 'clean.execute_clean_step', params: {step: {step: token}, node: {}, ports: []}}),
      })
      expect(unknown.json.command_error.details).toBe('Could not find method: ***')
      expect(leaks((await agentRequest(a.url, {method: 'GET', path: '/v1/commands/'})).text, [token])).toEqual([])
      expect(leaks(a.logs(), [token])).toEqual([])
      expect(a.logs()).toContain('agent token received from lookup')
    } finally {
      await agent?.stop()
      agent = undefined
      await stub.close()
    }
  }, 90_000)
})

describe('inspection data', () => {
  it('the `logs` collector bundle and the other collectors carry no secret', async () => {
    const TOKEN = `insp${hex(20)}`
    addSecret(TOKEN)
    class Careless extends HardwareManager {
      evaluate_hardware_support() {
        return HardwareSupport.GENERIC
      }
      collect_system_logs(io: Record<string, string>) {
        io.journal = `kernel: Kernel command line: ipa-agent-token=${TOKEN} quiet`
      }
      collect_secretive() {
        return {secretive: {note: `saw ${TOKEN}`, image_server_password: 'short', url: `http://u:${TOKEN}@h/`}}
      }
    }
    const config = {...defaultConfig(), inspectionCollectors: ['logs', 'secretive'], deviceAllowlist: ['/dev/nonexistent-test-device']}
    const registry = new ManagerRegistry()
    await registry.load([new Careless()], {config, log: quiet, registry})
    const data = await collectInspectionData({config, registry, log: quiet} as unknown as AgentRuntime)
    expect(data.error).toBeNull()
    expect(data.secretive).toEqual({note: 'saw ***', image_server_password: '***', url: 'http://***@h/'})
    const members = await untar(data.logs as string)
    expect(members.journal!.toString()).toBe('kernel: Kernel command line: ipa-agent-token=*** quiet')
    for (const [name, buf] of Object.entries(members)) expect(leaks(buf.toString('latin1'), [TOKEN]), name).toEqual([])
    expect(leaks(JSON.stringify(data), [TOKEN])).toEqual([])
  })
})

describe('redact.ts on hostile text', () => {
  it('stays linear: megabytes of near-matches take well under a second', () => {
    const inputs = [
      'token'.repeat(400_000),
      ` ${'token'.repeat(400_000)}`,
      ` --${'password'.repeat(200_000)} x`,
      `"${'secret'.repeat(300_000)}": "`,
      `http://${'a'.repeat(2_000_000)}`,
      'http://'.repeat(300_000),
      ' a=b'.repeat(500_000),
      `"password": "${'x'.repeat(2_000_000)}`,
    ]
    for (const input of inputs) {
      const t0 = performance.now()
      redactText(input)
      redactBuffer(Buffer.from(input))
      expect(performance.now() - t0, input.slice(0, 20)).toBeLessThan(1000)
    }
  })
})

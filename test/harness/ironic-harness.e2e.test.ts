// Smoke test for test/helpers/ironic.ts: a real Ironic 21.4 (python3-ironic) on 127.0.0.1.
// No mocks. Needs `apt-get install python3-ironic`.
// Note: the harness's launcher patches fake-hardware's management interface to accept boot
// device `disk` (see test/helpers/ironic-launcher.py); this test checks the patch is active.
import {execFileSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import path from 'node:path'

import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'

import {startIronic, type Ironic} from '../helpers/ironic.js'

const MAC = '52:54:00:12:34:56'

function versionAtLeast(v: string, min: string): boolean {
  const [a1, a2] = v.split('.').map(Number)
  const [b1, b2] = min.split('.').map(Number)
  return a1 > b1 || (a1 === b1 && a2 >= b2)
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH'
  }
}

describe('real Ironic harness (127.0.0.1)', () => {
  let dir: string
  let ironic: Ironic | undefined
  let failed = false

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'rdk-ironic-harness-'))
    ironic = await startIronic({dir, fastTrack: true})
  }, 120_000)

  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') failed = true
  })

  afterAll(async () => {
    await ironic?.stop()
    if (!failed) rmSync(dir, {recursive: true, force: true})
    else console.error(`keeping ${dir} for diagnosis (log: ${ironic?.logFile})`)
  }, 60_000)

  it('answers GET / with a max API version >= 1.68 and listens on 127.0.0.1 only', async () => {
    const ir = ironic!
    const root = await ir.api('GET', '/')
    expect(root.status).toBe(200)
    expect(root.body.default_version.version).toBe(ir.maxVersion)
    expect(versionAtLeast(ir.maxVersion, '1.68')).toBe(true)

    // Every listening TCP socket of our Ironic process is on 127.0.0.1.
    const ss = execFileSync('ss', ['-H', '-ltnp'], {encoding: 'utf8'})
    const mine = ss.split('\n').filter((l) => l.includes(`pid=${ir.pid},`))
    expect(mine.length).toBeGreaterThan(0)
    for (const line of mine) {
      const local = line.trim().split(/\s+/)[3]
      expect(local, line).toMatch(/^127\.0\.0\.1:\d+$/)
    }
    expect(mine.some((l) => l.trim().split(/\s+/)[3] === `127.0.0.1:${ir.port}`)).toBe(true)
  })

  it('does lookup (token once, then ******, 404 for unknown MAC) and heartbeat (202, 400 on a wrong token)', async () => {
    const ir = ironic!
    const node = await ir.createNode({name: 'harness-smoke'})
    expect(node.uuid).toMatch(/^[0-9a-f-]{36}$/)
    expect(node.driver).toBe('fake-hardware')
    expect(node.provision_state).toBe('enroll')
    await ir.createPort(node.uuid, MAC)

    // enroll -> (verifying) -> manageable; verify only validates fake power/management.
    await ir.setProvisionState(node.uuid, 'manage')
    const managed = await ir.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
    expect(managed.provision_state).toBe('manageable')

    // The launcher's test-only patch: fake management also accepts boot device `disk`.
    const devices = await ir.api('GET', `/v1/nodes/${node.uuid}/management/boot_device/supported`)
    expect(devices.body.supported_boot_devices).toEqual(['pxe', 'disk'])

    // fast_track = true allows lookup in manageable.
    const first = await ir.api('GET', `/v1/lookup?addresses=${MAC}`, undefined, {version: '1.62', expect: [200]})
    expect(first.body.node.uuid).toBe(node.uuid)
    const token = first.body.config.agent_token
    expect(typeof token).toBe('string')
    expect(token).toHaveLength(43)
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(first.body.config.agent_token_required).toBe(true)
    expect(first.body.config.heartbeat_timeout).toBe(30)

    const second = await ir.api('GET', `/v1/lookup?addresses=${MAC}`, undefined, {version: '1.62', expect: [200]})
    expect(second.body.config.agent_token).toBe('******')

    const unknown = await ir.api('GET', '/v1/lookup?addresses=52:54:00:00:00:01', undefined, {
      version: '1.62',
      expect: [404],
    })
    expect(unknown.status).toBe(404)

    const hb = await ir.api(
      'POST',
      `/v1/heartbeat/${node.uuid}`,
      {callback_url: 'http://127.0.0.1:9', agent_token: token, agent_version: '0.1.0'},
      {version: '1.68', expect: [202]},
    )
    expect(hb.status).toBe(202)

    const bad = await ir.api(
      'POST',
      `/v1/heartbeat/${node.uuid}`,
      {callback_url: 'http://127.0.0.1:9', agent_token: 'x'.repeat(43), agent_version: '0.1.0'},
      {version: '1.68', expect: [400]},
    )
    expect(JSON.parse(bad.body.error_message).faultstring).toMatch(/Invalid or missing agent token/)

    // The good heartbeat gets recorded. Ironic answers 202 after the token check and records
    // the heartbeat afterwards in a conductor worker (task.spawn_after), so poll for it.
    await expect.poll(async () => (await ir.getNode(node.uuid)).driver_internal_info.agent_url, {timeout: 10_000}).toBe('http://127.0.0.1:9')
    const after = await ir.getNode(node.uuid)
    expect(after.driver_internal_info.agent_version).toBe('0.1.0')
  })

  it('stop() terminates the Ironic process and is idempotent', async () => {
    const ir = ironic!
    expect(pidAlive(ir.pid)).toBe(true)
    await ir.stop()
    expect(pidAlive(ir.pid)).toBe(false)
    await ir.stop()
    expect(await ir.logTail(5)).not.toBe('')
  }, 60_000)
})

describe('real Ironic harness: failed start-up', () => {
  it('surfaces the cause and the log tail when Ironic exits during start-up', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'rdk-ironic-harness-bad-'))
    try {
      const err: Error = await startIronic({
        dir,
        extraConfig: {DEFAULT: {enabled_hardware_types: 'no-such-hardware'}},
      }).then(
        () => {
          throw new Error('startIronic unexpectedly succeeded')
        },
        (e: Error) => e,
      )
      expect(err.message).toMatch(/Ironic exited during start-up/)
      expect(err.message).toMatch(/DriverNotFoundInEntrypoint.*no-such-hardware/)
      expect(err.message).toContain(path.join(dir, 'ironic.log'))
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  }, 120_000)
})

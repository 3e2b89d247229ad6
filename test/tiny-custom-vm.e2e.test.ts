/**
 * Build-time customisation, checked inside the booted ramdisk: `rdk build --ssh-key` (which pulls in
 * the dynamic-login element: dropbear), `--hardware-manager` (a custom manager the agent loads) and
 * `--kernel-arg ipa-*` (baked into the agent's config, honoured although the boot passes none of
 * them); and at boot, DIB dynamic-login's `sshkey="…"` parameter.
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {startVm, type Vm} from '../src/boot/qemu.js'

const TOKEN = 'rdk-custom-token-0123456789abcdefghijklmnopqrst'

describe('tiny flavor: customised at build time, checked in the booted image', () => {
  let dir: string
  let out: string
  let vm: Vm | undefined

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-tiny-custom-'))
    out = join(dir, 'out')
    for (const k of ['baked', 'boot']) await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `rdk-${k}`, '-f', join(dir, k)])
    // A user's manager, as docs/hardware-managers.md describes: supported everywhere, one clean step.
    await writeFile(
      join(dir, 'rack-tag.mjs'),
      `export default (rdk) => {
  class RackTagManager extends rdk.HardwareManager {
    static HARDWARE_MANAGER_NAME = 'rack_tag_manager'
    static HARDWARE_MANAGER_VERSION = '1.2'
    evaluate_hardware_support() { return rdk.HardwareSupport.SERVICE_PROVIDER }
    get_clean_steps() { return [{step: 'write_rack_tag', priority: 0, interface: 'deploy', reboot_requested: false, abortable: true}] }
    async write_rack_tag() { return {tag: 'r42'} }
  }
  return new RackTagManager()
}
`,
    )
  }, 60_000)
  afterAll(async () => {
    await vm?.stop()
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  const ssh = (key: string, command: string) =>
    run(
      'ssh',
      [
        '-i',
        join(dir, key),
        '-p',
        String(vm!.hostPort(22)),
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        'UserKnownHostsFile=/dev/null',
        '-o',
        'ConnectTimeout=60',
        '-o',
        'LogLevel=ERROR',
        'root@127.0.0.1',
        command,
      ],
      {timeoutMs: 120_000, allowFailure: true},
    )

  it('builds with --ssh-key, --hardware-manager and baked --kernel-arg; the manifest records them', async () => {
    const r = await run(
      process.execPath,
      [
        'bin/run.js',
        'build',
        '--output',
        out,
        '--json',
        '--ssh-key',
        join(dir, 'baked.pub'),
        '--hardware-manager',
        join(dir, 'rack-tag.mjs'),
        '--kernel-arg',
        'ipa-standalone=1',
        '--kernel-arg',
        `ipa-agent-token=${TOKEN}`,
      ],
      {timeoutMs: 900_000},
    )
    const result = JSON.parse(r.stdout) as {elements: string[] | {name: string}[]}
    const manifest = JSON.parse(await readFile(join(out, 'rdk-tiny.manifest.json'), 'utf8'))
    expect(manifest.elements.map((e: {name: string}) => e.name)).toContain('dynamic-login')
    expect(manifest.packages.map((p: {name: string}) => p.name)).toEqual(expect.arrayContaining(['dropbear-bin', 'libtomcrypt1']))
    expect(JSON.stringify(result.elements)).toMatch(/dynamic-login/)
  }, 900_000)

  it('boots; the agent took the baked token and loaded the custom hardware manager', async () => {
    const bootKey = (await readFile(join(dir, 'boot.pub'), 'utf8')).trim()
    vm = await startVm({
      kernel: join(out, 'rdk-tiny.kernel'),
      initrd: join(out, 'rdk-tiny.initramfs'),
      append: `sshkey="${bootKey}"`,
      memoryMiB: 1024,
      restrictNetwork: true,
      disks: [{path: join(dir, 'disk0.img'), size: '5G'}],
      portForwards: [
        {guestPort: 9999, hostPort: 0},
        {guestPort: 22, hostPort: 0},
      ],
    })
    try {
      expect((await vm.waitForHttp(9999, '/v1/status', 240_000)).status).toBe(200)
      const url = (token: string) => `http://127.0.0.1:${vm!.hostPort(9999)}/v1/commands/?wait=true&agent_token=${token}`
      const body = JSON.stringify({name: 'clean.get_clean_steps', params: {node: {uuid: 'n', properties: {}, driver_internal_info: {}}, ports: []}})
      const refused = await fetch(url('wrong-token'), {method: 'POST', headers: {'content-type': 'application/json'}, body})
      expect(refused.status).toBe(401)
      const res = await fetch(url(TOKEN), {method: 'POST', headers: {'content-type': 'application/json'}, body})
      expect(res.status).toBe(200)
      const cmd = (await res.json()) as {
        command_status: string
        command_result: {clean_steps: Record<string, {step: string}[]>; hardware_manager_version: Record<string, string>}
      }
      expect(cmd.command_status).toBe('SUCCEEDED')
      expect(cmd.command_result.clean_steps.RackTagManager?.map((s) => s.step)).toEqual(['write_rack_tag'])
      expect(cmd.command_result.hardware_manager_version).toMatchObject({rack_tag_manager: '1.2'})
      expect(
        Object.values(cmd.command_result.clean_steps)
          .flat()
          .map((s) => s.step),
      ).toContain('erase_devices_metadata')
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- serial ---\n${vm.serialLog().slice(-4000)}`)
    }
  }, 420_000)

  it('lets root in over SSH with the baked key and with the sshkey= key, not with another', async () => {
    expect(vm).toBeDefined()
    const baked = await ssh('baked', 'cat /proc/cmdline; ls /usr/share/rdk/hardware-managers')
    expect(baked.exitCode, baked.stderr + vm!.serialLog().slice(-2000)).toBe(0)
    expect(baked.stdout).toMatch(/sshkey=/)
    expect(baked.stdout).toMatch(/rack-tag\.mjs/)
    const boot = await ssh('boot', 'id -u')
    expect(boot.exitCode, boot.stderr).toBe(0)
    expect(boot.stdout.trim()).toBe('0')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'stranger')])
    const stranger = await ssh('stranger', 'true')
    expect(stranger.exitCode).not.toBe(0)
    expect(vm!.serialLog()).toMatch(/login: dropbear listening on port 22/)
  }, 300_000)
})

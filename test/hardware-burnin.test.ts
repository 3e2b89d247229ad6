/**
 * Burn-in steps (src/agent/hardware/burnin.ts) and clean_uefi_nvram's parsing (nvram.ts):
 * - the stress-ng / fio command lines built from driver_info (IPA's keys and defaults), and the
 *   errors for bad settings and unsupported pairing;
 * - real runs on this host (stress-ng and fio from .ci/debian-packages.txt): a short CPU and memory
 *   burn-in, fio on an allow-listed loop device (and the refusal of a mounted one), and the network
 *   burn-in between two real agent processes, each in its own network namespace joined by a veth
 *   pair made here (nothing listens outside them).
 */
import {randomBytes} from 'node:crypto'
import {mkdtempSync, rmSync} from 'node:fs'
import {mkdir, open} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {CommandFailedError, run} from '../src/common/exec.js'
import {CleaningError, InvalidCommandParamsError, ProtectedDeviceError} from '../src/agent/errors.js'
import {
  burninCpu,
  burninDisk,
  burninMemory,
  fioDiskPlan,
  fioNetworkArgs,
  isConnectFailure,
  networkPlan,
  parseFioJson,
  parseStressNgMetrics,
  smartTestStatus,
  stressNgPlan,
} from '../src/agent/hardware/burnin.js'
import {cleanUefiNvram, compileMatchPatterns, DEFAULT_CLEAN_UEFI_NVRAM_MATCH_PATTERNS, entriesToRemove, nvramEntries} from '../src/agent/hardware/nvram.js'
import type {BlockDevice} from '../src/agent/hardware/types.js'
import type {Logger} from '../src/agent/log.js'
import {startAgentProcess, type AgentProcess} from './helpers/agent-process.js'
import {attachLoop, type LoopDevice} from './helpers/loop.js'

interface Line {
  level: string
  msg: string
  fields?: Record<string, unknown>
}
function captureLog(): Logger & {lines: Line[]} {
  const lines: Line[] = []
  const mk = (level: string) => (msg: string, fields?: Record<string, unknown>) => void lines.push({level, msg, fields})
  const log = {lines, debug: mk('debug'), info: mk('info'), warn: mk('warn'), error: mk('error'), child: () => log}
  return log
}

const node = (driver_info: Record<string, unknown>) => ({uuid: 'n1', driver_info})

describe('burn-in command lines from driver_info (IPA keys and defaults)', () => {
  it('burnin_cpu: stress-ng --cpu 0 --timeout 86400 --metrics-brief by default', () => {
    expect(stressNgPlan(node({}), 'cpu').args).toEqual(['--cpu', '0', '--timeout', '86400', '--metrics-brief'])
    expect(stressNgPlan(undefined, 'cpu').timeoutSeconds).toBe(86400)
    const p = stressNgPlan(node({agent_burnin_cpu_cpu: '3', agent_burnin_cpu_timeout: '2m', agent_burnin_cpu_outputfile: '/var/log/cpu.log'}), 'cpu')
    expect(p.args).toEqual(['--cpu', '3', '--timeout', '2m', '--metrics-brief', '--log-file', '/var/log/cpu.log'])
    expect(p.timeoutSeconds).toBe(120)
  })

  it('burnin_memory: stress-ng --vm 0 --timeout 86400 --vm-bytes 98% by default, IPA key agent_burnin_vm_vm-bytes', () => {
    expect(stressNgPlan(node({}), 'vm').args).toEqual(['--vm', '0', '--timeout', '86400', '--vm-bytes', '98%', '--metrics-brief'])
    expect(stressNgPlan(node({agent_burnin_vm_vm: 2, agent_burnin_vm_timeout: 10, 'agent_burnin_vm_vm-bytes': '64M'}), 'vm').args).toEqual([
      '--vm',
      '2',
      '--timeout',
      '10',
      '--vm-bytes',
      '64M',
      '--metrics-brief',
    ])
  })

  it('bad stress-ng settings fail before anything runs, naming the key', () => {
    expect(() => stressNgPlan(node({agent_burnin_cpu_timeout: 0}), 'cpu')).toThrow(/driver_info.agent_burnin_cpu_timeout must be a positive duration/)
    expect(() => stressNgPlan(node({agent_burnin_cpu_cpu: -1}), 'cpu')).toThrow(InvalidCommandParamsError)
    expect(() => stressNgPlan(node({agent_burnin_cpu_cpu: '2; reboot'}), 'cpu')).toThrow(/agent_burnin_cpu_cpu must be a non-negative integer/)
    expect(() => stressNgPlan(node({'agent_burnin_vm_vm-bytes': 'lots'}), 'vm')).toThrow(/agent_burnin_vm_vm-bytes must be a size/)
    expect(() => stressNgPlan(node({'agent_burnin_vm_vm-bytes': '0%'}), 'vm')).toThrow(/agent_burnin_vm_vm-bytes/)
    expect(() => stressNgPlan(node({agent_burnin_vm_outputfile: 'relative.log'}), 'vm')).toThrow(/agent_burnin_vm_outputfile must be an absolute file path/)
    expect(() => stressNgPlan(node({}), 'gpu' as 'cpu')).toThrow(/Unknown stressor type: gpu/)
  })

  it('burnin_disk: IPA fio options, one job per device, runtime 0 means loops over the whole device', () => {
    const p = fioDiskPlan(node({}), ['/dev/vda', '/dev/vdb'])
    expect(p.args).toEqual([
      '--rw',
      'readwrite',
      '--bs',
      '4k',
      '--direct',
      '1',
      '--ioengine',
      'libaio',
      '--iodepth',
      '32',
      '--verify',
      'crc32c',
      '--verify_dump',
      '1',
      '--continue_on_error',
      'verify',
      '--loops',
      '4',
      '--runtime',
      '0',
      '--verify_state_save',
      '0',
      '--output-format',
      'json',
      '--name',
      '/dev/vda',
      '--filename',
      '/dev/vda',
      '--name',
      '/dev/vdb',
      '--filename',
      '/dev/vdb',
    ])
    expect(p.timeoutSeconds).toBeUndefined()
    expect(p.smartTest).toBe(false)
    const q = fioDiskPlan(
      node({
        agent_burnin_fio_disk_loops: 1,
        agent_burnin_fio_disk_runtime: 30,
        agent_burnin_fio_disk_outputfile: '/tmp/fio.json',
        agent_burnin_fio_disk_smart_test: 'true',
      }),
      ['/dev/sda'],
    )
    expect(q.args.join(' ')).toContain(
      '--loops 1 --runtime 30 --verify_state_save 0 --time_based --output-format json --output /tmp/fio.json --name /dev/sda --filename /dev/sda',
    )
    expect(q.timeoutSeconds).toBe(330)
    expect(q.smartTest).toBe(true)
    expect(() => fioDiskPlan(node({agent_burnin_fio_disk_loops: 0}), [])).toThrow(/agent_burnin_fio_disk_loops must be an integer of at least 1/)
    expect(() => fioDiskPlan(node({agent_burnin_fio_disk_smart_test: 'maybe'}), [])).toThrow(/agent_burnin_fio_disk_smart_test must be a boolean/)
  })

  it('burnin_network: the static pairing config; tooz pairing is refused clearly', () => {
    const p = networkPlan(node({agent_burnin_fio_network_config: {role: 'writer', partner: '10.0.0.2'}, agent_burnin_fio_network_runtime: 5}))
    expect(p).toMatchObject({role: 'writer', partner: '10.0.0.2', runtime: {seconds: 5}, pairingTimeoutSeconds: 900})
    expect(networkPlan(node({agent_burnin_fio_network_config: '{"role": "reader", "partner": "node-b.example"}'})).role).toBe('reader')
    expect(networkPlan(node({agent_burnin_fio_network_config: {role: 'reader', partner: 'x'}})).runtime.seconds).toBe(21600)
    expect(() => networkPlan(node({agent_burnin_fio_network_pairing_backend_url: 'etcd3+http://10.0.0.1:2379'}))).toThrow(
      /tooz coordination backend .* is not supported by rdk/,
    )
    expect(() => networkPlan(node({}))).toThrow(CleaningError)
    expect(() => networkPlan(node({}))).toThrow(/set driver_info.agent_burnin_fio_network_config/)
    expect(() => networkPlan(node({agent_burnin_fio_network_config: {role: 'sender', partner: 'x'}}))).toThrow(/unknown role: "sender"/)
    expect(() => networkPlan(node({agent_burnin_fio_network_config: {role: 'writer'}}))).toThrow(/failed to find partner/)
    expect(() => networkPlan(node({agent_burnin_fio_network_config: {role: 'writer', partner_name: 'b'}}))).toThrow(
      /the key is "partner", as in IPA, not "partner_name"/,
    )
    expect(() => networkPlan(node({agent_burnin_fio_network_config: {role: 'writer', partner: '--output=/etc/passwd'}}))).toThrow(
      /must be a host name or an IP address/,
    )
  })

  it('burnin_network: IPA fio net options for each role', () => {
    expect(fioNetworkArgs(true, '60', 'peer')).toEqual([
      '--ioengine',
      'net',
      '--port',
      '9000',
      '--fill_device',
      '1',
      '--group_reporting',
      '--gtod_reduce',
      '1',
      '--numjobs',
      '16',
      '--name',
      'writer',
      '--rw',
      'write',
      '--runtime',
      '60',
      '--time_based',
      '--listen',
      '--output-format',
      'json',
    ])
    expect(fioNetworkArgs(false, '60', 'peer', '/tmp/net.reader')).toEqual([
      '--ioengine',
      'net',
      '--port',
      '9000',
      '--fill_device',
      '1',
      '--group_reporting',
      '--gtod_reduce',
      '1',
      '--numjobs',
      '16',
      '--name',
      'reader',
      '--rw',
      'read',
      '--hostname',
      'peer',
      '--output-format',
      'json',
      '--output',
      '/tmp/net.reader',
    ])
  })

  it('burnin_network: a reader whose partner is not listening yet is retried, other failures are not', () => {
    const fail = (code: number, stdout: string, stderr = '') => new CommandFailedError('fio', code, undefined, stdout, stderr, false)
    // what fio 3.33 prints with --numjobs 16 --group_reporting --output-format json: nothing on stderr
    expect(isConnectFailure(fail(16, JSON.stringify({jobs: [{jobname: 'reader', error: 111}]})))).toBe(true)
    expect(isConnectFailure(fail(2, '', 'fio: pid=1, err=111/file:engines/net.c:800, func=connect, error=Connection refused'))).toBe(true)
    expect(isConnectFailure(fail(16, JSON.stringify({jobs: [{jobname: 'reader', error: 5}]})))).toBe(false)
    expect(isConnectFailure(fail(1, JSON.stringify({jobs: [{jobname: 'reader', error: 111}]})))).toBe(false)
    expect(isConnectFailure(new Error('x'))).toBe(false)
  })

  it('parses stress-ng --metrics-brief, fio JSON and smartctl status', () => {
    const sng = [
      'stress-ng: info:  [20103] dispatching hogs: 1 cpu',
      'stress-ng: metrc: [20103] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s',
      'stress-ng: metrc: [20103]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)',
      'stress-ng: metrc: [20103] cpu                3061      2.00      2.00      0.00      1530.45        1530.80',
      'stress-ng: info:  [20103] successful run completed in 2.00s',
    ].join('\n')
    expect(parseStressNgMetrics(sng)).toEqual({
      cpu: {bogo_ops: 3061, real_time: 2, usr_time: 2, sys_time: 0, bogo_ops_per_s_real: 1530.45, bogo_ops_per_s_cpu: 1530.8},
    })
    const fio =
      'fio: waiting for connection\n' +
      JSON.stringify({jobs: [{jobname: 'writer', error: 0, read: {io_bytes: 0}, write: {io_bytes: 4096, iops: 2, bw: 4}, total_err: 0}]})
    expect(parseFioJson(fio)).toEqual([
      {name: 'writer', error: 0, read_bytes: 0, write_bytes: 4096, read_iops: 0, write_iops: 2, read_bw_kib: 0, write_bw_kib: 4, total_errors: 0},
    ])
    expect(() => parseFioJson('fio: no jobs')).toThrow(/fio printed no JSON report/)
    expect(smartTestStatus(JSON.stringify({ata_smart_data: {self_test: {status: {string: 'completed without error'}}}}))).toBe('completed without error')
    expect(smartTestStatus('{}')).toBeNull()
  })
})

describe('clean_uefi_nvram matching (IPA: case-insensitive search in the device path)', () => {
  // efibootmgr -v as Debian bookworm's efibootmgr 17 prints it under OVMF
  const records = [
    {num: '0000', text: 'UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)'},
    {num: '0001', text: 'UEFI QEMU DVD-ROM QM00003 \tPciRoot(0x0)/Pci(0x1f,0x2)/Sata(1,65535,0){auto_created_boot_option}'},
    {num: '0004', text: 'debian\tHD(1,GPT,2c3d0b9e-8f7e-4b1c-9d5e-1a2b3c4d5e6f,0x800,0x100000)/File(\\EFI\\debian\\shimx64.efi)'},
    {num: '0005', text: 'grubby\tPciRoot(0x0)/Pci(0x3,0x0)/HD(1,GPT,2c3d,0x800,0x100000)/File(\\EFI\\BOOT\\GRUBX64.EFI)'},
    {num: '0006', text: 'no device path here'},
  ]

  it('splits label and device path, skipping records without a known device path', () => {
    const e = nvramEntries(records)
    expect(e.map((x) => x.boot)).toEqual(['0000', '0001', '0004', '0005'])
    expect(e[2]).toEqual({
      boot: '0004',
      label: 'debian',
      path: 'HD(1,GPT,2c3d0b9e-8f7e-4b1c-9d5e-1a2b3c4d5e6f,0x800,0x100000)/File(\\EFI\\debian\\shimx64.efi)',
    })
  })

  it('default patterns remove disk entries and shim/grub loaders, nothing else; labels are not matched', () => {
    const remove = entriesToRemove(nvramEntries(records), compileMatchPatterns(undefined))
    expect(remove.map((r) => [r.boot, r.pattern])).toEqual([
      ['0004', '^HD\\('],
      ['0005', 'grub.*\\.efi'],
    ])
    expect(DEFAULT_CLEAN_UEFI_NVRAM_MATCH_PATTERNS).toEqual(['^HD\\(', 'shim.*\\.efi', 'grub.*\\.efi'])
    expect(entriesToRemove(nvramEntries(records), compileMatchPatterns(['uiapp'])).map((r) => r.boot)).toEqual([])
    expect(entriesToRemove(nvramEntries(records), compileMatchPatterns(['Sata\\('])).map((r) => r.boot)).toEqual(['0001'])
  })

  it('match_patterns must be a list of valid regular expressions (IPA message)', () => {
    expect(() => compileMatchPatterns('^HD\\(')).toThrow(/The match_patterns must be a list of strings: "\^HD\\\\\("/)
    expect(() => compileMatchPatterns([1])).toThrow(InvalidCommandParamsError)
    expect(() => compileMatchPatterns(['('])).toThrow(/match_patterns must be a list of strings/)
    expect(compileMatchPatterns([])).toEqual([])
  })

  it('refuses on a machine that did not boot in UEFI mode, before running efibootmgr', async () => {
    await expect(cleanUefiNvram({log: captureLog(), firmwareDir: '/nonexistent/sys/firmware/efi'}, undefined)).rejects.toThrow(
      /did not boot in UEFI mode \(\/nonexistent\/sys\/firmware\/efi does not exist\)/,
    )
    // the patterns are checked first
    await expect(cleanUefiNvram({log: captureLog(), firmwareDir: '/nonexistent'}, [42])).rejects.toBeInstanceOf(InvalidCommandParamsError)
  })
})

describe('burn-in runs on this host (stress-ng, fio)', () => {
  let dir: string
  const loops: LoopDevice[] = []

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'rdk-burnin-'))
  })
  afterAll(async () => {
    for (const l of loops) {
      await run('umount', [join(dir, 'mnt')], {allowFailure: true})
      await run('partx', ['-d', l.device], {allowFailure: true})
      await run('losetup', ['--detach', l.device], {allowFailure: true})
    }
    rmSync(dir, {recursive: true, force: true})
  })

  it('burnin_cpu and burnin_memory run stress-ng for the configured time and report its metrics', async () => {
    const log = captureLog()
    const t0 = Date.now()
    const cpu = await burninCpu({log}, node({agent_burnin_cpu_cpu: 1, agent_burnin_cpu_timeout: 2}))
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1900)
    expect(cpu.command).toEqual(['stress-ng', '--cpu', '1', '--timeout', '2', '--metrics-brief'])
    const m = (cpu.metrics as Record<string, {bogo_ops: number; real_time: number}>).cpu!
    expect(m.bogo_ops).toBeGreaterThan(0)
    expect(m.real_time).toBeGreaterThanOrEqual(1.9)
    expect(cpu.output_tail).toMatch(/successful run completed/)

    const outfile = join(dir, 'vm.log')
    const mem = await burninMemory(
      {log},
      node({agent_burnin_vm_vm: 1, agent_burnin_vm_timeout: '2s', 'agent_burnin_vm_vm-bytes': '32M', agent_burnin_vm_outputfile: outfile}),
    )
    expect(Object.keys(mem.metrics as object)).toEqual(['vm'])
    expect(log.lines.some((l) => l.msg === 'burn-in stress-ng (vm) finished')).toBe(true)
    const {stdout} = await run('cat', [outfile])
    expect(stdout).toMatch(/dispatching hogs: 1 vm/)
  }, 60_000)

  it('burnin_disk runs fio on an allow-listed loop device (writing it), and refuses a mounted one or one outside the list', async () => {
    const a = await attachLoop(dir, 'burn-a', 64 * 1024 * 1024)
    loops.push(a)
    await run('partx', ['-d', a.device], {allowFailure: true})
    const b = await attachLoop(dir, 'burn-b', 64 * 1024 * 1024)
    loops.push(b)
    await run('partx', ['-d', b.device], {allowFailure: true})
    const dev = (name: string): BlockDevice => ({name}) as BlockDevice
    const log = captureLog()
    const ctx = {log, allowlist: [a.device, b.device], guardSpecial: true}
    const settings = node({agent_burnin_fio_disk_loops: 1, agent_burnin_fio_disk_runtime: 2})

    const r = await burninDisk(ctx, settings, [dev(a.device)])
    const jobs = r.metrics as {name: string; error: number; write_bytes: number; read_bytes: number}[]
    expect(jobs).toHaveLength(1)
    expect(jobs[0]).toMatchObject({name: a.device, error: 0})
    expect(jobs[0]!.write_bytes).toBeGreaterThan(0)
    // fio's verify blocks (crc32c headers) are now on the disk, which was all zeros
    const fh = await open(a.file, 'r')
    const head = Buffer.alloc(4096)
    await fh.read(head, 0, head.length, 0)
    await fh.close()
    expect(head.some((x) => x !== 0)).toBe(true)

    // a mounted filesystem on b: the whole step is refused before fio starts (a is not touched either)
    await run('mkfs.ext4', ['-q', '-F', b.device])
    await mkdir(join(dir, 'mnt'), {recursive: true})
    await run('mount', [b.device, join(dir, 'mnt')])
    const marker = randomBytes(4096)
    const fa = await open(a.file, 'r+')
    await fa.write(marker, 0, marker.length, 0)
    await fa.close()
    await expect(burninDisk(ctx, settings, [dev(a.device), dev(b.device)])).rejects.toBeInstanceOf(ProtectedDeviceError)
    await run('umount', [join(dir, 'mnt')])
    const check = Buffer.alloc(4096)
    const fc = await open(a.file, 'r')
    await fc.read(check, 0, check.length, 0)
    await fc.close()
    expect(check.equals(marker)).toBe(true)

    // outside the allow-list
    await expect(burninDisk({...ctx, allowlist: [a.device]}, settings, [dev(b.device)])).rejects.toThrow(/not in the agent's device allow-list/)
    // nothing to test
    await expect(burninDisk(ctx, settings, [])).rejects.toThrow(/no block device to burn in/)
  }, 120_000)
})

describe('burnin_network between two real agents in two network namespaces', () => {
  const tag = String(process.pid % 100000)
  const nsA = `rdk-bnA-${tag}`
  const nsB = `rdk-bnB-${tag}`
  const agents: AgentProcess[] = []

  /** One agent API call from inside a namespace (the test process itself stays outside). */
  async function inNs(ns: string, agent: AgentProcess, name: string, params: Record<string, unknown>): Promise<any> {
    const script = `const [port, token, body] = process.argv.slice(1);
fetch('http://127.0.0.1:' + port + '/v1/commands/?wait=true&agent_token=' + token, {method: 'POST', headers: {'Content-Type': 'application/json'}, body})
  .then((r) => r.text()).then((t) => process.stdout.write(t), (e) => { console.error(String(e)); process.exit(1) })`
    const r = await run('ip', ['netns', 'exec', ns, process.execPath, '-e', script, String(agent.port), agent.token, JSON.stringify({name, params})], {
      timeoutMs: 120_000,
    })
    return JSON.parse(r.stdout)
  }

  beforeAll(async () => {
    await run('npm', ['run', 'build'], {timeoutMs: 300_000})
    await run('ip', ['netns', 'add', nsA])
    await run('ip', ['netns', 'add', nsB])
    await run('ip', ['link', 'add', `rbA${tag}`, 'netns', nsA, 'type', 'veth', 'peer', 'name', `rbB${tag}`, 'netns', nsB])
    await run('ip', ['-n', nsA, 'addr', 'add', '10.231.77.1/30', 'dev', `rbA${tag}`])
    await run('ip', ['-n', nsB, 'addr', 'add', '10.231.77.2/30', 'dev', `rbB${tag}`])
    for (const [ns, nic] of [
      [nsA, `rbA${tag}`],
      [nsB, `rbB${tag}`],
    ] as const) {
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
      await run('ip', ['-n', ns, 'link', 'set', nic, 'up'])
    }
    // no disks are visible (the default allow-list names none): do not wait for one
    for (const ns of [nsA, nsB]) agents.push(await startAgentProcess({wrap: ['ip', 'netns', 'exec', ns], args: ['--disk-wait-attempts', '0']}))
  }, 360_000)

  afterAll(async () => {
    for (const a of agents) await a.stop()
    for (const ns of [nsA, nsB]) await run('ip', ['netns', 'delete', ns], {allowFailure: true})
  })

  it('writer and reader swap roles; each agent reports both directions', async () => {
    const step = (role: string, partner: string) => ({
      step: {step: 'burnin_network', interface: 'deploy', priority: 0},
      node: {
        uuid: `node-${role}`,
        driver_info: {agent_burnin_fio_network_config: {role, partner}, agent_burnin_fio_network_runtime: 2, agent_burnin_fio_network_pairing_timeout: 60},
      },
      ports: [],
    })
    const t0 = Date.now()
    const [a, b] = await Promise.all([
      inNs(nsA, agents[0]!, 'clean.execute_clean_step', step('writer', '10.231.77.2')),
      inNs(nsB, agents[1]!, 'clean.execute_clean_step', step('reader', '10.231.77.1')),
    ])
    const seconds = (Date.now() - t0) / 1000
    const logs = agents.map((x, i) => `--- agent ${i ? 'B' : 'A'} ---\n${x.logs().split('\n').slice(-40).join('\n')}`).join('\n')
    for (const r of [a, b]) {
      expect(r.command_error, `${JSON.stringify(r)}\n${logs}`).toBeNull()
      expect(r.command_status).toBe('SUCCEEDED')
      expect(r.command_result.clean_step.step).toBe('burnin_network')
    }
    const dirs = (r: any) =>
      r.command_result.clean_result.metrics as {role: string; jobs: {name: string; error: number; read_bytes: number; write_bytes: number}[]}[]
    expect(dirs(a).map((d) => d.role)).toEqual(['writer', 'reader'])
    expect(dirs(b).map((d) => d.role)).toEqual(['reader', 'writer'])
    // what one wrote, the other read (fio counts the same bytes at both ends, give or take the last buffer)
    const wroteA = dirs(a)[0]!.jobs[0]!.write_bytes
    const readB = dirs(b)[0]!.jobs[0]!.read_bytes
    expect(wroteA).toBeGreaterThan(1024 * 1024)
    expect(Math.abs(wroteA - readB) / wroteA).toBeLessThan(0.05)
    expect(dirs(b)[1]!.jobs[0]!.write_bytes).toBeGreaterThan(1024 * 1024)
    expect(dirs(a)[1]!.jobs[0]!.read_bytes).toBeGreaterThan(1024 * 1024)
    // two 2 s runs plus at most a few reader retries
    expect(seconds).toBeLessThan(40)
    console.log(`burnin_network: ${seconds.toFixed(1)} s, A wrote ${(wroteA / 1e6).toFixed(0)} MB`)
  }, 120_000)
})

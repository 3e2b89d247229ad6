/**
 * Step dispatch is closed: execute_{clean,deploy,service}_step runs only steps a hardware manager
 * advertises for that kind; everything else (life-cycle methods, Object.prototype, getters, the
 * internal dispatch names, `_private` helpers, data fields) answers IPA's unknown-step error,
 * HardwareManagerMethodNotFound as a FAILED command, and changes nothing. Every command result
 * serialises: one JSON cannot carry becomes a FAILED result and GET /v1/commands/ keeps answering.
 *
 * In-process first (every forbidden name × every kind, state compared before and after), then the
 * real agent bundle as a child process: a loop device outside --device-allowlist survives an
 * attempt to lift the allow-list through a step followed by erase steps, and custom managers
 * returning unserialisable results leave the command list answering 200.
 */
import {createHash, randomBytes} from 'node:crypto'
import {closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync, mkdirSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {CommandProcessor, MAX_RESULT_CHARS, type CommandResult} from '../src/agent/commands.js'
import {defaultConfig, type AgentConfig} from '../src/agent/config.js'
import {poll} from '../src/agent/extensions/misc.js'
import {stepsExtension} from '../src/agent/extensions/steps.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {HardwareManager, ManagerRegistry, type StepKind} from '../src/agent/hardware/manager.js'
import {HardwareSupport} from '../src/agent/hardware/types.js'
import {log} from '../src/agent/log.js'
import type {AgentRuntime} from '../src/agent/runtime.js'
import {agentRequest, startAgentProcess, type AgentProcess} from './helpers/agent-process.js'
import {attachLoop, detachLoop, type LoopDevice} from './helpers/loop.js'

const quiet = log.child({test: 'agent-dispatch'})
const KINDS: StepKind[] = ['clean', 'deploy', 'service']
const JSON_CT = {'Content-Type': 'application/json'}
const MIB = 1024 * 1024

/**
 * A node whose fields mimic a ManagerContext: what `attach(node)` would have installed. SAFETY: its
 * allow-list is never empty (empty means "every disk"): should the dispatch ever regress, the
 * lifted allow-list still names only devices these tests own.
 */
const HOSTILE_NODE = {
  uuid: 'node-hostile',
  config: {...defaultConfig(), deviceAllowlist: ['/dev/nonexistent-hostile-device'], guardSpecialFilesystems: false},
  log: {},
  registry: null,
  instance_info: {root_device: {name: '/dev/sda'}},
}

/** A custom manager with things that must never be reachable from a request. */
class Trap extends HardwareManager {
  touched: string[] = []
  evaluate_hardware_support() {
    return HardwareSupport.MAINLINE
  }
  override get_clean_steps() {
    // A reserved or malformed name is never advertised nor run, even if a manager lists it.
    return [
      {step: 'trap_step', priority: 0, interface: 'deploy', reboot_requested: false, abortable: true},
      {step: 'attach', priority: 0, interface: 'deploy', reboot_requested: false, abortable: true},
      {step: 'toString', priority: 0, interface: 'deploy', reboot_requested: false, abortable: true},
      {step: 'bad name!', priority: 0, interface: 'deploy', reboot_requested: false, abortable: true},
    ]
  }
  trap_step() {
    return {ran: 'trap_step'}
  }
  reconfigure() {
    this.touched.push('reconfigure')
    ;(this.ctx as {config: AgentConfig}).config = {...this.ctx.config, deviceAllowlist: ['/dev/nonexistent-trap-device']}
  }
  get settings(): unknown {
    this.touched.push('settings getter')
    return () => this.touched.push('settings call')
  }
  set settings(_v: unknown) {
    this.touched.push('settings setter')
  }
  override attach(ctx: Parameters<HardwareManager['attach']>[0]): void {
    if ((this as {ctx?: unknown}).ctx) this.touched.push('attach again')
    super.attach(ctx)
  }
}

const FORBIDDEN = [
  // life cycle and step lists of the base class
  'attach',
  'initialize',
  'evaluate_hardware_support',
  'get_version',
  'get_clean_steps',
  'get_deploy_steps',
  'get_service_steps',
  // JavaScript's own
  'constructor',
  'toString',
  'toLocaleString',
  'valueOf',
  'hasOwnProperty',
  'isPrototypeOf',
  'propertyIsEnumerable',
  '__proto__',
  '__defineGetter__',
  '__defineSetter__',
  '__lookupGetter__',
  '__lookupSetter__',
  'prototype',
  'then',
  'call',
  'apply',
  'bind',
  // data fields, getters and setters
  'ctx',
  'registry',
  'cachedNode',
  'skipBmcDetect',
  'collectorRoots',
  'settings',
  'touched',
  // private helpers
  '_guard',
  '_dispatcher',
  '_allowlist',
  '_piece',
  '_bmcInfo',
  '_notYet',
  '_md_scan_and_assemble',
  '_load_ipmi_modules',
  '_erasableDevices',
  // internal dispatch names (inventory, infrastructure): not steps
  'list_hardware_info',
  'list_block_devices',
  'list_block_devices_check_skip_list',
  'list_network_interfaces',
  'get_interface_info',
  'get_os_install_device',
  'erase_block_device',
  'filter_device',
  'wait_for_disks',
  'full_sync',
  'collect_system_logs',
  'collect_lldp_data',
  'collect_pci_devices',
  'get_cpus',
  'get_memory',
  'get_bmc_address',
  'get_boot_info',
  // a method a custom manager has but does not advertise
  'reconfigure',
  // not identifiers at all
  '',
  ' erase_devices',
  'erase_devices ',
  'erase_devices.call',
  'bad name!',
  'no_such_step',
]

async function inProcess() {
  const config: AgentConfig = {...defaultConfig(), diskWaitAttempts: 0, deviceAllowlist: ['/dev/nonexistent-test-device']}
  const generic = new GenericHardwareManager()
  generic.skipBmcDetect = true
  const trap = new Trap()
  const registry = new ManagerRegistry()
  await registry.load([generic, trap], {config, log: quiet, registry})
  const rt = {config, registry, log: quiet, version: 'test', partitionUuids: {}, node: undefined, stopServing: async () => {}} as unknown as AgentRuntime
  const processor = new CommandProcessor<AgentRuntime>(
    () => rt,
    quiet,
    () => {},
  )
  rt.processor = processor
  for (const ext of [stepsExtension('clean'), stepsExtension('deploy'), stepsExtension('service'), poll]) processor.register(ext)
  return {rt, processor, registry, generic, trap, config}
}

async function finished(r: Promise<CommandResult>): Promise<Record<string, any>> {
  const res = await r
  await res.done
  return JSON.parse(JSON.stringify(res))
}

describe('step dispatch in process', () => {
  it('runs advertised steps of the right kind only, and refuses every other name without changing anything', async () => {
    const {rt, processor, registry, generic, trap, config} = await inProcess()
    const genericCtx = (generic as unknown as {ctx: unknown}).ctx
    const trapCtx = (trap as unknown as {ctx: unknown}).ctx
    const configBefore = JSON.stringify(config)
    const order = registry.managers.map((m) => m.constructor.name)
    const versions = registry.currentVersions()
    let refused = 0
    for (const kind of KINDS) {
      for (const name of FORBIDDEN) {
        const body = await finished(
          processor.execute(`${kind}.execute_${kind}_step`, {
            step: {step: name, interface: 'deploy', priority: 0, args: HOSTILE_NODE},
            node: HOSTILE_NODE,
            ports: [],
            ...HOSTILE_NODE,
          }),
        )
        expect(body.command_status, `${kind} ${JSON.stringify(name)}`).toBe('FAILED')
        expect(body.command_name).toBe(`execute_${kind}_step`)
        expect(body.command_error, `${kind} ${JSON.stringify(name)}`).toEqual({
          type: 'HardwareManagerMethodNotFound',
          code: 500,
          message: 'No HardwareManager found to handle method',
          details: `Could not find method: ${name}`,
        })
        expect(body.command_result).toBeNull()
        refused++
        // nothing changed: same contexts, same config, no node cached, managers and versions as before
        expect((generic as unknown as {ctx: unknown}).ctx).toBe(genericCtx)
        expect((trap as unknown as {ctx: unknown}).ctx).toBe(trapCtx)
        expect(JSON.stringify(config)).toBe(configBefore)
        expect(rt.node).toBeUndefined()
        expect(generic.cachedNode).toBeUndefined()
        expect(registry.managers.map((m) => m.constructor.name)).toEqual(order)
        expect(registry.currentVersions()).toEqual(versions)
        expect(trap.touched).toEqual([])
      }
    }
    expect(refused).toBe(KINDS.length * FORBIDDEN.length)

    // A step of another kind is not a step of this kind.
    const cross = await finished(processor.execute('clean.execute_clean_step', {step: {step: 'write_image', interface: 'deploy'}, node: {}, ports: []}))
    expect(cross.command_error.type).toBe('HardwareManagerMethodNotFound')
    const cross2 = await finished(processor.execute('deploy.execute_deploy_step', {step: {step: 'erase_devices', interface: 'deploy'}, node: {}, ports: []}))
    expect(cross2.command_error.type).toBe('HardwareManagerMethodNotFound')
    expect(rt.node).toBeUndefined()

    // Reserved names a manager lists are left out of get_clean_steps: advertised = runnable.
    const steps = (await finished(processor.execute('clean.get_clean_steps', {node: {}, ports: []}))).command_result.clean_steps
    expect(steps.Trap.map((s: {step: string}) => s.step)).toEqual(['trap_step'])
    expect(steps.GenericHardwareManager.map((s: {step: string}) => s.step)).toContain('erase_devices')

    // An advertised step runs (and only then is the node cached, as IPA does).
    const ok = await finished(
      processor.execute('clean.execute_clean_step', {step: {step: 'trap_step', interface: 'deploy', priority: 0}, node: {uuid: 'n1'}, ports: []}),
    )
    expect(ok.command_status).toBe('SUCCEEDED')
    expect(ok.command_result).toEqual({clean_result: {ran: 'trap_step'}, clean_step: {step: 'trap_step', interface: 'deploy', priority: 0}})
    expect(rt.node).toEqual({uuid: 'n1'})
    expect(trap.touched).toEqual([])
  })

  it('masking never touches the protocol: a manager named like a secret keeps its version through get/execute', async () => {
    class TokenVault extends HardwareManager {
      static override HARDWARE_MANAGER_NAME = 'token_vault'
      static override HARDWARE_MANAGER_VERSION = '2.0'
      evaluate_hardware_support() {
        return HardwareSupport.MAINLINE
      }
      override get_clean_steps() {
        return [{step: 'vault_step', priority: 0, interface: 'deploy', reboot_requested: false, abortable: true}]
      }
      vault_step() {
        return {ok: true}
      }
    }
    const config: AgentConfig = {...defaultConfig(), diskWaitAttempts: 0, deviceAllowlist: ['/dev/nonexistent-test-device']}
    const registry = new ManagerRegistry()
    await registry.load([new TokenVault()], {config, log: quiet, registry})
    const rt = {config, registry, log: quiet} as unknown as AgentRuntime
    const processor = new CommandProcessor<AgentRuntime>(
      () => rt,
      quiet,
      () => {},
    )
    processor.register(stepsExtension('clean'))
    const got = await finished(processor.execute('clean.get_clean_steps', {node: {}, ports: []}))
    expect(got.command_result.hardware_manager_version).toEqual({token_vault: '2.0'})
    const ran = await finished(
      processor.execute('clean.execute_clean_step', {
        step: {step: 'vault_step', interface: 'deploy'},
        node: {},
        ports: [],
        clean_version: got.command_result.hardware_manager_version,
      }),
    )
    expect(ran.command_status).toBe('SUCCEEDED')
  })

  it('internal dispatch takes only the allow-listed infrastructure names', async () => {
    const {registry, trap} = await inProcess()
    for (const name of ['attach', 'initialize', 'reconfigure', 'trap_step', 'erase_devices', 'constructor', 'toString', 'settings', '_guard']) {
      await expect(registry.dispatchToManagers(name, HOSTILE_NODE), name).rejects.toThrow(
        `No HardwareManager found to handle method: Could not find method: ${name}`,
      )
      await expect(registry.dispatchToAllManagers(name, HOSTILE_NODE), name).rejects.toThrow('No HardwareManager found to handle method')
    }
    for (const name of ['system_logs', 'lldp_data', '../x', 'Constructor']) {
      await expect(registry.dispatchCollector(name, {}), name).rejects.toThrow('No HardwareManager found to handle method')
    }
    expect(await registry.dispatchToManagers('get_boot_info')).toMatchObject({current_boot_mode: expect.stringMatching(/^(uefi|bios)$/)})
    expect(trap.touched).toEqual([])
  })
})

// ------------------------------------------------------------------------------------------------
// The real agent, loop devices, and unserialisable results

/** Managers loaded by the agent process: results JSON cannot carry, sync and async. */
const BAD_RESULTS_MANAGER = `
export default (rdk) => new (class RdkBadResults extends rdk.HardwareManager {
  evaluate_hardware_support() { return rdk.HardwareSupport.SERVICE_PROVIDER }
  get_clean_steps() {
    return ['bad_cycle', 'bad_bigint', 'bad_function', 'bad_getter', 'bad_huge', 'bad_error', 'good_step']
      .map((step) => ({step, priority: 0, interface: 'deploy', reboot_requested: false, abortable: true}))
  }
  bad_cycle() { const o = {a: 1}; o.self = o; return o }
  bad_bigint() { return {n: 10n} }
  bad_function() { return {f: () => 1} }
  bad_getter() { return {get boom() { throw new Error('getter exploded') }} }
  bad_huge() { return {blob: 'x'.repeat(${MAX_RESULT_CHARS + 10})} }
  bad_error() { const e = new rdk.errors.CleaningError('odd'); e.details = 5n; throw e }
  good_step() { return {fine: true} }
  // sync: poll.get_hardware_info goes to the highest-ranked manager's list_hardware_info
  list_hardware_info() { const inv = {disks: []}; inv.loop = inv; return inv }
})()
`

describe('the agent process', () => {
  let dir: string
  let A: LoopDevice | undefined
  let B: LoopDevice | undefined
  let agent: AgentProcess | undefined

  const post = async (a: AgentProcess, name: string, params: unknown, wait = true) => {
    const res = await agentRequest(a.url, {
      method: 'POST',
      path: `/v1/commands/?agent_token=${encodeURIComponent(a.token)}${wait ? '&wait=true' : ''}`,
      headers: JSON_CT,
      body: JSON.stringify({name, params}),
      timeoutMs: 120_000,
    })
    expect(res.status, res.text).toBe(200)
    return res.json as Record<string, any>
  }
  const list = async (a: AgentProcess) => {
    const res = await agentRequest(a.url, {method: 'GET', path: '/v1/commands/'})
    expect(res.status, res.text).toBe(200)
    return res.json.commands as Record<string, any>[]
  }
  const hashOf = (dev: string) => createHash('sha256').update(readFileSync(dev)).digest('hex')
  const fill = (dev: string, size: number) => {
    const fd = openSync(dev, 'r+')
    try {
      writeSync(fd, randomBytes(size), 0, size, 0)
    } finally {
      closeSync(fd)
    }
  }
  const headBytes = (dev: string, len: number) => {
    const fd = openSync(dev, 'r')
    try {
      const b = Buffer.alloc(len)
      readSync(fd, b, 0, len, 0)
      return b
    } finally {
      closeSync(fd)
    }
  }

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('these tests need root (loop devices)')
    if (!existsSync('/dev/loop-control')) throw new Error('no loop device support (/dev/loop-control missing)')
    dir = mkdtempSync(join(tmpdir(), 'rdk-dispatch-'))
  })
  afterAll(async () => {
    await agent?.stop()
    for (const l of [A, B]) {
      if (!l) continue
      await run('partx', ['-d', l.device], {allowFailure: true})
      await detachLoop(l)
    }
    if (dir) rmSync(dir, {recursive: true, force: true})
  })

  it('a disk outside --device-allowlist is never listed nor touched, whatever steps a request names', async () => {
    A = await attachLoop(dir, 'inside', 16 * MIB)
    B = await attachLoop(dir, 'outside', 16 * MIB)
    await run('partx', ['-d', A.device], {allowFailure: true})
    await run('partx', ['-d', B.device], {allowFailure: true})
    fill(A.device, 16 * MIB)
    fill(B.device, 16 * MIB)
    const bBefore = hashOf(B.device)
    const a = (agent = await startAgentProcess({args: ['--device-allowlist', A.device, '--disk-wait-attempts', '0']}))

    const listed = async () => ((await post(a, 'poll.get_hardware_info', {})).command_result.disks as {name: string}[]).map((d) => d.name)
    expect(await listed()).toEqual([A.device])

    // Try to lift the allow-list: every name that could reach the manager's settings, with a node
    // shaped like a ManagerContext whose config widens the allow-list to B.
    // SAFETY: the "lifted" allow-list names our two loop devices only, never an empty list (= all disks).
    const hostile = {...HOSTILE_NODE, config: {...HOSTILE_NODE.config, deviceAllowlist: [A.device, B.device], device_allowlist: [A.device, B.device]}}
    for (const kind of KINDS) {
      for (const name of [
        'attach',
        'initialize',
        'constructor',
        '__proto__',
        'evaluate_hardware_support',
        'get_version',
        'ctx',
        'wait_for_disks',
        'list_block_devices',
        'erase_block_device',
      ]) {
        const r = await post(a, `${kind}.execute_${kind}_step`, {
          step: {step: name, interface: 'deploy', priority: 0, args: hostile},
          node: hostile,
          ports: [],
          ...hostile,
        })
        const final = r.command_status === 'RUNNING' ? (await agentRequest(a.url, {method: 'GET', path: `/v1/commands/${r.id}?wait=true`})).json : r
        expect(final.command_status, `${kind} ${name}`).toBe('FAILED')
        expect(final.command_error.type, `${kind} ${name}`).toBe('HardwareManagerMethodNotFound')
      }
    }
    expect(await listed()).toEqual([A.device])

    // Now the erase steps, with the hostile node: they erase A, and only A.
    for (const step of ['erase_devices_metadata', 'erase_devices']) {
      const r = await post(a, 'clean.execute_clean_step', {
        step: {step, interface: 'deploy', priority: 0},
        node: {...hostile, driver_internal_info: {agent_erase_devices_iterations: 0}},
        ports: [],
      })
      expect(r.command_status, JSON.stringify(r.command_error)).toBe('SUCCEEDED')
    }
    expect(headBytes(A.device, MIB).every((x) => x === 0)).toBe(true)
    expect(hashOf(A.device)).toBe(
      createHash('sha256')
        .update(Buffer.alloc(16 * MIB))
        .digest('hex'),
    )
    expect(hashOf(B.device)).toBe(bBefore)
    expect(await listed()).toEqual([A.device])
    expect(a.logs()).not.toContain(B.device)
    expect((await list(a)).length).toBeGreaterThan(30)
  }, 180_000)

  it('results JSON cannot carry become FAILED results, sync and async; GET /v1/commands/ keeps answering 200', async () => {
    await agent?.stop()
    agent = undefined
    const managers = join(dir, 'managers')
    mkdirSync(managers, {recursive: true})
    writeFileSync(join(managers, 'bad-results.mjs'), BAD_RESULTS_MANAGER)
    const a = (agent = await startAgentProcess({args: ['--hardware-managers-dir', managers, '--disk-wait-attempts', '0']}))

    const expectations: Record<string, RegExp> = {
      bad_cycle: /cannot be serialised to JSON: it contains a cycle/,
      bad_bigint: /cannot be serialised to JSON: it contains a BigInt/,
      bad_function: /cannot be serialised to JSON: it contains a function/,
      bad_getter: /cannot be serialised to JSON: serialising it threw: getter exploded/,
      bad_huge: /cannot be serialised to JSON: it is too big/,
      bad_error: /The command error cannot be serialised to JSON: it contains a BigInt/,
    }
    for (const [step, why] of Object.entries(expectations)) {
      const started = await post(a, 'clean.execute_clean_step', {step: {step, interface: 'deploy', priority: 0}, node: {}, ports: []}, false)
      expect(started.command_status).toBe('RUNNING')
      const done = await agentRequest(a.url, {method: 'GET', path: `/v1/commands/${started.id}?wait=true`})
      expect(done.status, done.text).toBe(200)
      expect(done.json.command_status, step).toBe('FAILED')
      expect(done.json.command_error.type, step).toBe('CommandExecutionError')
      expect(done.json.command_error.details, step).toMatch(why)
      expect(done.json.command_result).toBeNull()
      const all = await list(a)
      expect(all.at(-1)!.id).toBe(started.id)
    }
    // sync: the cyclic inventory
    const inv = await post(a, 'poll.get_hardware_info', {})
    expect(inv.command_status).toBe('FAILED')
    expect(inv.command_error.details).toMatch(/cannot be serialised to JSON: it contains a cycle/)
    // everything is still listed and readable, and the agent still works
    const all = await list(a)
    expect(all.length).toBe(Object.keys(expectations).length + 1)
    for (const c of all) expect((await agentRequest(a.url, {method: 'GET', path: `/v1/commands/${c.id}`})).status).toBe(200)
    const good = await post(a, 'clean.execute_clean_step', {step: {step: 'good_step', interface: 'deploy', priority: 0}, node: {}, ports: []})
    expect(good.command_status).toBe('SUCCEEDED')
    expect(good.command_result.clean_result).toEqual({fine: true})
    expect((await agentRequest(a.url, {method: 'GET', path: '/v1/commands/'})).status).toBe(200)
    expect(a.exitStatus()).toBeNull()
  }, 120_000)
})

/**
 * Hardware managers with IPA's semantics.
 *
 * Each manager rates its support for this machine (evaluate_hardware_support); managers with
 * support > 0 are kept, ordered by support (highest first, stable). Calls are dispatched by
 * *method name* — the same snake_case names IPA uses and Ironic sends as step names.
 *
 * What a name may reach is closed (stricter than IPA, which calls any attribute of that name):
 * - a **step** (execute_{clean,deploy,service}_step, dispatchStep) runs only if some manager
 *   advertises it in its get_{kind}_steps for that kind, and only on the managers that advertise
 *   it, in rank order;
 * - **internal dispatch** (dispatchToManagers / dispatchToAllManagers) takes only the names in
 *   INFRASTRUCTURE_METHODS / ALL_MANAGERS_METHODS: the ones IPA's own code dispatches (inventory
 *   pieces, get_os_install_device, erase_block_device, full_sync, collect_system_logs, …), plus
 *   `collect_<name>` inspection collectors (dispatchCollector).
 * Nothing else is ever called: not the base class's life-cycle methods (attach, initialize,
 * evaluate_hardware_support, get_version), not `constructor`, Object.prototype, `_private`
 * names, getters or setters. Anything else answers HardwareManagerMethodNotFound, as IPA does
 * for a method no manager has.
 */
import type {AgentConfig} from '../config.js'
import {HardwareManagerMethodNotFound, HardwareManagerNotFound, IncompatibleHardwareMethodError} from '../errors.js'
import type {Logger} from '../log.js'
import {HardwareSupport, type NodeInfo, type Port, type Step} from './types.js'

/** What a manager may use of the running agent. */
export interface ManagerContext {
  config: AgentConfig
  log: Logger
  /** The registry the manager is part of (dispatch inventory pieces through it). */
  registry?: ManagerRegistry
}

export abstract class HardwareManager {
  /** Name reported in hardware_manager_version (defaults to the class name). */
  static HARDWARE_MANAGER_NAME?: string
  /** Version reported to Ironic; a change between get_*_steps and execute_*_step is a mismatch. */
  static HARDWARE_MANAGER_VERSION?: string

  protected ctx!: ManagerContext

  /** Called by the registry before evaluate_hardware_support. */
  attach(ctx: ManagerContext): void {
    this.ctx = ctx
  }

  /** How well this manager supports the machine: a HardwareSupport value (0 = not at all). */
  abstract evaluate_hardware_support(): number | Promise<number>

  /** One-time set-up after ranking (IPA waits for disks here). */
  async initialize(): Promise<void> {}

  get_clean_steps(_node: NodeInfo, _ports: Port[]): Step[] | Promise<Step[]> {
    return []
  }

  get_deploy_steps(_node: NodeInfo, _ports: Port[]): Step[] | Promise<Step[]> {
    return []
  }

  get_service_steps(_node: NodeInfo, _ports: Port[]): Step[] | Promise<Step[]> {
    return []
  }

  get_version(): {name: string; version: string} {
    const ctor = this.constructor as typeof HardwareManager
    return {name: ctor.HARDWARE_MANAGER_NAME ?? ctor.name, version: ctor.HARDWARE_MANAGER_VERSION ?? '1.0'}
  }
}

export type AnyMethod = (...args: unknown[]) => unknown

interface Ranked {
  manager: HardwareManager
  support: number
}

const STEP_KINDS = ['clean', 'deploy', 'service'] as const
export type StepKind = (typeof STEP_KINDS)[number]

/**
 * Names the agent's own code dispatches to the first manager that implements them — IPA's
 * dispatch_to_managers call sites (agent.py, inspector.py, standby.py, image.py, inject_files.py,
 * raid_utils.py, hardware.py) plus the inventory pieces rdk's list_hardware_info dispatches.
 * Never reachable from a request.
 */
export const INFRASTRUCTURE_METHODS: ReadonlySet<string> = new Set([
  'list_hardware_info',
  'list_network_interfaces',
  'get_interface_info',
  'get_ipv4_addr',
  'get_cpus',
  'get_memory',
  'list_block_devices',
  'get_os_install_device',
  'get_bmc_address',
  'get_bmc_v6address',
  'get_bmc_mac',
  'get_system_vendor_info',
  'get_boot_info',
  'get_usb_devices',
  'collect_lldp_data',
  'erase_block_device',
  'filter_device',
  'wait_for_disks',
  'generate_tls_certificate',
])

/** Names dispatched to every manager (IPA's dispatch_to_all_managers call sites). */
export const ALL_MANAGERS_METHODS: ReadonlySet<string> = new Set([
  'get_clean_steps',
  'get_deploy_steps',
  'get_service_steps',
  'get_version',
  'full_sync',
  'collect_system_logs',
])

/** Inspection collectors (ipa-inspection-collectors) map to `collect_<name>` methods. */
const COLLECTOR_METHOD = /^collect_[a-z0-9][a-z0-9_]*$/

/** What a step name must look like (IPA's steps are snake_case identifiers). */
const STEP_NAME = /^[A-Za-z][A-Za-z0-9_]*$/

/**
 * Names no step may have, whatever a manager advertises: the base class's own methods (life
 * cycle, step lists, versions), the internal dispatch names and everything on Object.prototype.
 */
const RESERVED_NAMES: ReadonlySet<string> = new Set([
  ...Object.getOwnPropertyNames(HardwareManager.prototype),
  ...Object.getOwnPropertyNames(Object.prototype),
  ...INFRASTRUCTURE_METHODS,
  ...ALL_MANAGERS_METHODS,
])

/** Why `name` can never be a step, or null. */
export function reservedStepName(name: unknown): string | null {
  if (typeof name !== 'string' || !STEP_NAME.test(name)) return 'not a snake_case identifier'
  if (RESERVED_NAMES.has(name)) return 'a hardware manager infrastructure method'
  return null
}

/** The ordered set of managers in use, and IPA's dispatch rules over them. */
export class ManagerRegistry {
  private ranked: Ranked[] = []

  /** Rank and initialise `managers`; throws HardwareManagerNotFound if none supports the machine. */
  async load(managers: HardwareManager[], ctx: ManagerContext): Promise<void> {
    const ranked: Ranked[] = []
    for (const manager of managers) {
      manager.attach(ctx)
      const support = Number(await manager.evaluate_hardware_support()) || 0
      ctx.log.info('hardware manager evaluated', {manager: manager.constructor.name, support})
      if (support > HardwareSupport.NONE) ranked.push({manager, support})
    }
    if (ranked.length === 0) throw new HardwareManagerNotFound()
    // Array.prototype.sort is stable: equal support keeps load order.
    ranked.sort((a, b) => b.support - a.support)
    for (const r of ranked) await r.manager.initialize()
    this.ranked = ranked
    this.log = ctx.log
  }

  private log?: Logger

  get managers(): HardwareManager[] {
    return this.ranked.map((r) => r.manager)
  }

  supportOf(manager: HardwareManager): number {
    return this.ranked.find((r) => r.manager === manager)?.support ?? 0
  }

  /**
   * Call an infrastructure method (INFRASTRUCTURE_METHODS) on the highest-ranked manager that
   * implements it and does not declare it incompatible. Any other name: HardwareManagerMethodNotFound.
   */
  async dispatchToManagers(method: string, ...args: unknown[]): Promise<unknown> {
    if (!INFRASTRUCTURE_METHODS.has(method)) throw new HardwareManagerMethodNotFound(method)
    return this.firstOf(this.managers, method, args)
  }

  /** Inspection collector `name` (e.g. `pci-devices`) → `collect_pci_devices` on the first manager that has it. */
  async dispatchCollector(name: string, ...args: unknown[]): Promise<unknown> {
    const method = `collect_${name.replace(/-/g, '_')}`
    if (!COLLECTOR_METHOD.test(method) || RESERVED_NAMES.has(method)) throw new HardwareManagerMethodNotFound(method)
    return this.firstOf(this.managers, method, args)
  }

  /** Call an ALL_MANAGERS_METHODS method on every manager; returns {ClassName: result}. */
  async dispatchToAllManagers(method: string, ...args: unknown[]): Promise<Record<string, unknown>> {
    if (!ALL_MANAGERS_METHODS.has(method)) throw new HardwareManagerMethodNotFound(method)
    const out: Record<string, unknown> = {}
    for (const {manager} of this.ranked) {
      const fn = methodOf(manager, method)
      if (!fn) continue
      try {
        out[manager.constructor.name] = await fn.apply(manager, args)
      } catch (err) {
        if (err instanceof IncompatibleHardwareMethodError) continue
        throw err
      }
    }
    if (Object.keys(out).length === 0) throw new HardwareManagerMethodNotFound(method)
    return out
  }

  /**
   * Run step `step` of `kind` (execute_{kind}_step). The step must be advertised by some manager
   * in get_{kind}_steps(node, ports) — asked now, with the request's node and ports — and must not
   * have a reserved name; then it goes where IPA sends it: the highest-ranked manager that has the
   * method, IncompatibleHardwareMethodError passing on to the next. Otherwise nothing is called and
   * the answer is HardwareManagerMethodNotFound.
   */
  async dispatchStep(kind: StepKind, step: string, node: NodeInfo, ports: Port[], args: Record<string, unknown>): Promise<unknown> {
    const run = await this.resolveStep(kind, step, node, ports)
    if (!run) throw new HardwareManagerMethodNotFound(step)
    return run(node, ports, args)
  }

  /**
   * dispatchStep in two halves: null when `step` may not run (nothing called), else a function that
   * dispatches it — so the caller can cache the request's node only for a step that will run.
   */
  async resolveStep(
    kind: StepKind,
    step: string,
    node: NodeInfo,
    ports: Port[],
  ): Promise<((node: NodeInfo, ports: Port[], args: Record<string, unknown>) => Promise<unknown>) | null> {
    if (!(await this.isAdvertised(kind, step, node, ports))) return null
    return (n, p, a) => this.firstOf(this.managers, step, [n, p, a])
  }

  /** Whether some manager advertises a (well-formed, unreserved) step `step` for `kind`. */
  async isAdvertised(kind: StepKind, step: string, node: NodeInfo, ports: Port[]): Promise<boolean> {
    if (!STEP_KINDS.includes(kind) || reservedStepName(step)) return false
    for (const steps of (await this.rawSteps(kind, node, ports)).values()) if (steps.some((s) => s.step === step)) return true
    return false
  }

  private async firstOf(managers: HardwareManager[], method: string, args: unknown[]): Promise<unknown> {
    for (const manager of managers) {
      const fn = methodOf(manager, method)
      if (!fn) continue
      try {
        return await fn.apply(manager, args)
      } catch (err) {
        if (err instanceof IncompatibleHardwareMethodError) continue
        throw err
      }
    }
    throw new HardwareManagerMethodNotFound(method)
  }

  /** {name: version} of every manager in use. */
  currentVersions(): Record<string, string> {
    const out: Record<string, string> = {}
    for (const {manager} of this.ranked) {
      const v = manager.get_version()
      out[v.name] = v.version
    }
    return out
  }

  /**
   * Each manager's advertised steps of one kind (managers without the method, or declaring it
   * incompatible, are left out). Steps with a reserved or malformed name are dropped with a
   * warning, so what is advertised is what execute_*_step may run.
   */
  private async rawSteps(kind: StepKind, node: NodeInfo, ports: Port[]): Promise<Map<HardwareManager, Step[]>> {
    const out = new Map<HardwareManager, Step[]>()
    const method = `get_${kind}_steps`
    for (const {manager} of this.ranked) {
      const fn = methodOf(manager, method)
      if (!fn) continue
      let steps: unknown
      try {
        steps = await fn.apply(manager, [node, ports])
      } catch (err) {
        if (err instanceof IncompatibleHardwareMethodError) continue
        throw err
      }
      const kept: Step[] = []
      for (const s of Array.isArray(steps) ? (steps as unknown[]) : []) {
        const name = s && typeof s === 'object' ? (s as Step).step : undefined
        const why = reservedStepName(name)
        if (why) {
          this.log?.warn('hardware manager advertises a step that cannot run: left out', {
            manager: manager.constructor.name,
            kind,
            step: String(name),
            reason: why,
          })
          continue
        }
        kept.push(s as Step)
      }
      out.set(manager, kept)
    }
    if (out.size === 0) throw new HardwareManagerMethodNotFound(method)
    return out
  }

  /**
   * Steps of one kind from all managers, de-duplicated as IPA does: for a step name offered by
   * several managers keep the one from the manager with the highest support, then the highest
   * step priority, then the alphabetically first manager class name.
   */
  async getSteps(kind: StepKind, node: NodeInfo, ports: Port[]): Promise<Record<string, Step[]>> {
    const all = await this.rawSteps(kind, node, ports)
    const best = new Map<string, {cls: string; support: number; step: Step}>()
    for (const [manager, steps] of all) {
      const cls = manager.constructor.name
      const support = this.supportOf(manager)
      for (const step of steps) {
        const cur = best.get(step.step)
        if (
          !cur ||
          support > cur.support ||
          (support === cur.support && step.priority > cur.step.priority) ||
          (support === cur.support && step.priority === cur.step.priority && cls < cur.cls)
        ) {
          best.set(step.step, {cls, support, step})
        }
      }
    }
    const out: Record<string, Step[]> = {}
    for (const manager of all.keys()) out[manager.constructor.name] = []
    for (const {cls, step} of best.values()) out[cls]!.push(step)
    return out
  }
}

/**
 * The method `name` of `manager` as a plain function: a data property found on the instance or
 * its prototype chain below Object.prototype. Getters and setters are never invoked; `_private`
 * names and `constructor` are never methods.
 */
function methodOf(manager: HardwareManager, name: string): AnyMethod | undefined {
  if (typeof name !== 'string' || name === 'constructor' || name.startsWith('_')) return undefined
  for (let o: object | null = manager; o && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
    const d = Object.getOwnPropertyDescriptor(o, name)
    if (!d) continue
    return 'value' in d && typeof d.value === 'function' ? (d.value as AnyMethod) : undefined
  }
  return undefined
}

/**
 * Hardware managers with IPA's semantics.
 *
 * Each manager rates its support for this machine (evaluate_hardware_support); managers with
 * support > 0 are kept, ordered by support (highest first, stable). Calls are dispatched by
 * *method name* — the same snake_case names IPA uses and Ironic sends as step names — either to
 * the first manager that implements the method (dispatchToManagers) or to all (dispatchToAllManagers).
 */
import type {AgentConfig} from '../config.js'
import {
  HardwareManagerMethodNotFound,
  HardwareManagerNotFound,
  IncompatibleHardwareMethodError,
} from '../errors.js'
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
  }

  get managers(): HardwareManager[] {
    return this.ranked.map((r) => r.manager)
  }

  supportOf(manager: HardwareManager): number {
    return this.ranked.find((r) => r.manager === manager)?.support ?? 0
  }

  /** Call `method` on the highest-ranked manager that implements it and does not declare it incompatible. */
  async dispatchToManagers(method: string, ...args: unknown[]): Promise<unknown> {
    for (const {manager} of this.ranked) {
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

  /** Call `method` on every manager; returns {ClassName: result}. */
  async dispatchToAllManagers(method: string, ...args: unknown[]): Promise<Record<string, unknown>> {
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
   * Steps of one kind from all managers, de-duplicated as IPA does: for a step name offered by
   * several managers keep the one from the manager with the highest support, then the highest
   * step priority, then the alphabetically first manager class name.
   */
  async getSteps(kind: StepKind, node: NodeInfo, ports: Port[]): Promise<Record<string, Step[]>> {
    const all = await this.dispatchToAllManagers(`get_${kind}_steps`, node, ports)
    const best = new Map<string, {cls: string; support: number; step: Step}>()
    for (const [cls, steps] of Object.entries(all)) {
      const manager = this.ranked.find((r) => r.manager.constructor.name === cls)
      const support = manager?.support ?? 0
      for (const step of (steps as Step[]) ?? []) {
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
    for (const cls of Object.keys(all)) out[cls] = []
    for (const {cls, step} of best.values()) out[cls]!.push(step)
    return out
  }
}

function methodOf(manager: HardwareManager, method: string): AnyMethod | undefined {
  if (method === 'constructor' || method.startsWith('_')) return undefined
  const fn = (manager as unknown as Record<string, unknown>)[method]
  return typeof fn === 'function' ? (fn as AnyMethod) : undefined
}

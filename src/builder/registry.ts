/**
 * Flavors and their stage lists. A build is an ordered list of named stages, each
 * `async (ctx) => string | void` (the string is a short note for the progress line).
 *
 * Plug-in point for the flavor, Debian, kernel and agent code: a module
 * `src/flavors/<flavor>/index.ts` exporting `register(registry: StageRegistry)` is imported before
 * a build of that flavor (see loadFlavorModules in flavors.ts); it calls
 *
 *   registry.registerStage('tiny', myStage, {replace: 'fetch-packages'})
 *   registry.registerStage('tiny', addAgent, {after: 'assemble-tree'})
 *   registry.updateFlavor('tiny', {defaultElements: ['base', 'tiny-init', 'agent']})
 */
import type {BuildContext} from './context.js'
import {BuildError} from './errors.js'
import type {Format} from './spec.js'

export interface Stage {
  name: string
  /** One line for `rdk build --help`-style listings and docs. */
  description: string
  /** Artefact formats this stage produces (a requested format nobody produces is "not implemented yet"). */
  produces?: readonly Format[]
  /**
   * Do the work. Stages guard themselves: check what they need (and fail clearly) and skip what is
   * not requested, returning a note such as "skipped: no hooks".
   */
  run(ctx: BuildContext): Promise<string | void>
}

export interface FlavorDefinition {
  name: string
  description: string
  /** Elements every build of this flavor starts from (spec.elements are added). */
  defaultElements: string[]
  /** false: `rdk build --flavor X` says "not implemented yet". */
  implemented: boolean
  /** Kernel arguments every boot artefact of this flavor carries, before the spec's (which win). */
  kernelArgs?: Record<string, string | null>
}

export interface StagePosition {
  after?: string
  before?: string
  /** Take the place of the named stage (e.g. a placeholder). */
  replace?: string
}

/** The stage that commits the artefacts; it stays last. */
export const FINAL_STAGE = 'write-artefacts'

export class StageRegistry {
  private readonly flavors = new Map<string, {def: FlavorDefinition; stages: Stage[]}>()

  defineFlavor(def: FlavorDefinition, stages: Stage[] = []): void {
    this.flavors.set(def.name, {def: {...def, defaultElements: [...def.defaultElements]}, stages: [...stages]})
  }

  updateFlavor(name: string, patch: Partial<Omit<FlavorDefinition, 'name'>>): void {
    const f = this.need(name)
    f.def = {...f.def, ...patch, name}
  }

  flavor(name: string): FlavorDefinition | undefined {
    return this.flavors.get(name)?.def
  }

  flavorNames(): string[] {
    return [...this.flavors.keys()]
  }

  /** Add a stage to a flavor: after/before a named stage, or replacing one; default: just before write-artefacts. */
  registerStage(flavor: string, stage: Stage, at: StagePosition = {}): void {
    const f = this.need(flavor)
    const list = f.stages
    const index = (name: string) => {
      const i = list.findIndex((s) => s.name === name)
      if (i < 0) throw new BuildError(`registerStage(${flavor}, ${stage.name}): no stage '${name}' (stages: ${list.map((s) => s.name).join(', ')})`)
      return i
    }
    if (at.replace) {
      const i = index(at.replace)
      if (at.replace === FINAL_STAGE && stage.name !== FINAL_STAGE) throw new BuildError(`registerStage: ${FINAL_STAGE} can only be replaced by a stage of the same name`)
      if (stage.name !== at.replace && list.some((s) => s.name === stage.name)) throw new BuildError(`registerStage(${flavor}): a stage named '${stage.name}' is already registered`)
      list.splice(i, 1, stage)
      return
    }
    if (list.some((s) => s.name === stage.name)) throw new BuildError(`registerStage(${flavor}): a stage named '${stage.name}' is already registered (use {replace: '${stage.name}'})`)
    if (at.after === FINAL_STAGE) throw new BuildError(`registerStage(${flavor}, ${stage.name}): nothing may run after ${FINAL_STAGE} (it commits the artefacts)`)
    let i: number
    if (at.after) i = index(at.after) + 1
    else if (at.before) i = index(at.before)
    else i = list.some((s) => s.name === FINAL_STAGE) ? index(FINAL_STAGE) : list.length
    list.splice(i, 0, stage)
  }

  stages(flavor: string): Stage[] {
    return [...this.need(flavor).stages]
  }

  /** Formats some stage of the flavor produces. */
  formats(flavor: string): Set<Format> {
    return new Set(this.need(flavor).stages.flatMap((s) => s.produces ?? []))
  }

  private need(name: string) {
    const f = this.flavors.get(name)
    if (!f) throw new BuildError(`unknown flavor '${name}' (known: ${this.flavorNames().join(', ')})`)
    return f
  }
}

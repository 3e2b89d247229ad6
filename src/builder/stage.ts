/**
 * A build is one flat, ordered list of stages, and each flavor exports its whole list
 * (src/flavors/<flavor>/index.ts; src/flavors/index.ts is the table of flavors). Stages skip
 * themselves: `skip(ctx)` is a cheap predicate (no I/O, no downloads) that says why a stage does
 * nothing for this build; `rdk build --dry-run` shows it without running anything. Shared stages
 * live in src/builder/stages.ts (the generic ones and the boot formats).
 */
import type {BuildContext, FlavorInfo, PlanContext} from './context.js'
import type {Format} from './spec.js'

export interface Stage {
  name: string
  /** One line for `rdk build --dry-run` and docs. */
  description: string
  /** Artefact formats this stage produces (a requested format no stage produces is refused before the build). */
  produces?: readonly Format[]
  /**
   * Why this stage does nothing for this build (e.g. "kernel format not requested"), or undefined
   * when it runs. Cheap and pure: it sees the spec, the flavor and the resolved elements only, and
   * is asked right before `run` and by `rdk build --dry-run`.
   */
  skip?(ctx: PlanContext): string | undefined
  /** Do the work; the string is a short note for the progress line. */
  // biome-ignore lint/suspicious/noConfusingVoidType: a stage that has nothing to say returns nothing
  run(ctx: BuildContext): Promise<string | void>
}

export interface FlavorDefinition extends FlavorInfo {
  /** The whole build, in order; undefined: `rdk build --flavor X` says "not implemented yet". */
  stages?: readonly Stage[]
}

/** The stage that commits the artefacts; every flavor's list ends with it. */
export const FINAL_STAGE = 'write-artefacts'

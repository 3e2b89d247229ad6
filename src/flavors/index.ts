/**
 * The flavors rdk knows: a static table, flavor name → its definition (with its whole stage list,
 * src/flavors/<flavor>/index.ts). A flavor without stages is declared but not implemented yet.
 *
 * Layers: commands → flavors → builder → artefacts → common. The builder knows no flavor.
 */
import {SpecError} from '../builder/errors.js'
import type {BuildOptions, BuildResult} from '../builder/pipeline.js'
import {planBuild, runBuild, type BuildPlan} from '../builder/pipeline.js'
import type {FlavorDefinition} from '../builder/stage.js'
import {FLAVORS, type BuildSpec, type Flavor} from '../builder/spec.js'
import {tiny} from './tiny/index.js'

export const FLAVOR_TABLE: Readonly<Record<Flavor, FlavorDefinition>> = {
  tiny,
  debian: {name: 'debian', description: 'full Debian root filesystem with systemd (not implemented yet)', defaultElements: ['base']},
  container: {name: 'container', description: 'ramdisk from a container image (not implemented yet)', defaultElements: ['base']},
}

/** Flavors that build today. */
export function implementedFlavors(): Flavor[] {
  return FLAVORS.filter((f) => FLAVOR_TABLE[f].stages)
}

/** The flavor's definition; a declared flavor that is not implemented yet is a usage error (exit 2). */
export function flavorFor(name: string): FlavorDefinition {
  const def = (FLAVOR_TABLE as Record<string, FlavorDefinition | undefined>)[name]
  if (!def) throw new SpecError(`unknown flavor '${name}' (known: ${FLAVORS.join(', ')})`)
  if (!def.stages) {
    throw new SpecError(`flavor '${name}' is not implemented yet; flavors that build today: ${implementedFlavors().join(', ')}`, {
      hint: `use --flavor ${implementedFlavors()[0]}`,
    })
  }
  return def
}

/** Build `spec` with its flavor's stages. */
export async function buildImage(spec: BuildSpec, opts: Omit<BuildOptions, 'flavor'> = {}): Promise<BuildResult> {
  return runBuild(spec, {...opts, flavor: flavorFor(spec.flavor)})
}

/** What `rdk build --dry-run` shows: the stages of spec's flavor and which would skip. */
export async function planImage(spec: BuildSpec): Promise<BuildPlan> {
  return planBuild(spec, flavorFor(spec.flavor))
}

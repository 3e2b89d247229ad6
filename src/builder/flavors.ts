/**
 * Built-in flavors and the default stage registry.
 *
 * tiny: a busybox-based ramdisk. This file only provides its skeleton — default elements and the
 * generic stages with placeholders. The Debian-package, kernel and agent stages come from
 * `src/flavors/tiny/index.ts` (its `register(registry)`), loaded by loadFlavorModules().
 */
import {existsSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {StageRegistry} from './registry.js'
import {genericStages} from './stages.js'

export function createDefaultRegistry(): StageRegistry {
  const r = new StageRegistry()
  r.defineFlavor(
    {
      name: 'tiny',
      description: 'small busybox ramdisk: the agent, its tools and a kernel, no systemd',
      defaultElements: ['base', 'agent'],
      implemented: true,
      // Any root= makes the kernel unpack the initramfs into ramfs instead of a tmpfs capped at half
      // the RAM: the image then boots in 384 MiB instead of 416 (the /init inside is run either way).
      kernelArgs: {root: '/dev/ram0'},
    },
    genericStages(),
  )
  r.defineFlavor({name: 'debian', description: 'full Debian root filesystem with systemd (not implemented yet)', defaultElements: ['base'], implemented: false}, genericStages())
  r.defineFlavor({name: 'container', description: 'ramdisk from a container image (not implemented yet)', defaultElements: ['base'], implemented: false}, genericStages())
  return r
}

/** The registry `rdk build` uses; flavor modules add their stages to it. */
export const defaultRegistry = createDefaultRegistry()

/** Shorthand for defaultRegistry.registerStage(). */
export const registerStage: StageRegistry['registerStage'] = (flavor, stage, at) => defaultRegistry.registerStage(flavor, stage, at)

const loaded = new WeakMap<StageRegistry, Set<string>>()

/**
 * Import `src/flavors/<flavor>/index.js` (next to this module's parent), if there is one, and let
 * it register its stages: `export function register(registry: StageRegistry): void | Promise<void>`.
 * Each registry loads a flavor's module once.
 */
export async function loadFlavorModules(registry: StageRegistry, flavor: string): Promise<boolean> {
  const done = loaded.get(registry) ?? new Set<string>()
  loaded.set(registry, done)
  if (done.has(flavor)) return true
  const url = new URL(`../flavors/${flavor}/index.js`, import.meta.url)
  if (!existsSync(fileURLToPath(url))) return false
  const mod = (await import(url.href)) as {register?: (r: StageRegistry) => void | Promise<void>}
  if (typeof mod.register === 'function') await mod.register(registry)
  done.add(flavor)
  return true
}

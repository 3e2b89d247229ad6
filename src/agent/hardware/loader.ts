/**
 * Loading hardware managers: the built-in GenericHardwareManager plus every `*.js`/`*.mjs` module
 * in the configured directories (sorted by file name). A module's default export is a factory
 * `(rdk) => HardwareManager | HardwareManager[]`, where `rdk` hands it the base class, the
 * support levels, the error classes, the subprocess wrapper and a logger — so a manager never
 * needs to import anything from the agent bundle. See docs/hardware-managers.md.
 */
import {readdir} from 'node:fs/promises'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'
import {run} from '../../common/exec.js'
import * as errors from '../errors.js'
import type {Logger} from '../log.js'
import {GenericHardwareManager} from './generic.js'
import {HardwareManager} from './manager.js'
import {HardwareSupport} from './types.js'

export interface RdkManagerApi {
  HardwareManager: typeof HardwareManager
  HardwareSupport: typeof HardwareSupport
  GenericHardwareManager: typeof GenericHardwareManager
  errors: typeof errors
  run: typeof run
  log: Logger
}

export class ManagerLoadError extends Error {}

export async function loadManagerModule(path: string, log: Logger): Promise<HardwareManager[]> {
  let mod: {default?: unknown}
  try {
    mod = (await import(pathToFileURL(path).href)) as {default?: unknown}
  } catch (err) {
    throw new ManagerLoadError(`hardware manager ${path} failed to load: ${(err as Error).message}`)
  }
  if (typeof mod.default !== 'function') {
    throw new ManagerLoadError(`hardware manager ${path} must export a default factory function (rdk) => HardwareManager`)
  }
  const api: RdkManagerApi = {HardwareManager, HardwareSupport, GenericHardwareManager, errors, run, log: log.child({manager_module: path})}
  const made = await (mod.default as (rdk: RdkManagerApi) => unknown)(api)
  const list = Array.isArray(made) ? made : [made]
  for (const m of list) {
    if (!(m instanceof HardwareManager)) {
      throw new ManagerLoadError(`hardware manager ${path}: the factory must return instances of rdk.HardwareManager`)
    }
  }
  return list as HardwareManager[]
}

/** Generic manager first, then custom ones in directory and file-name order. */
export async function loadManagers(dirs: string[], log: Logger): Promise<HardwareManager[]> {
  const managers: HardwareManager[] = [new GenericHardwareManager()]
  for (const dir of dirs) {
    let names: string[]
    try {
      names = (await readdir(dir)).filter((n) => /\.(m?js)$/.test(n)).sort()
    } catch {
      continue
    }
    for (const name of names) {
      const loaded = await loadManagerModule(join(dir, name), log)
      log.info('loaded hardware manager module', {path: join(dir, name), managers: loaded.map((m) => m.constructor.name)})
      managers.push(...loaded)
    }
  }
  return managers
}

/** standby: image preparation (issue #5), power and sync, partition UUIDs. */
import type {Extension} from '../commands.js'
import {InvalidCommandParamsError, NotImplementedYet} from '../errors.js'
import type {AgentRuntime} from '../runtime.js'

/** IPA's image_info validation: id, non-empty urls, and a checksum it can verify. */
export function validateImageInfo(imageInfo: unknown): void {
  if (!imageInfo || typeof imageInfo !== 'object' || Array.isArray(imageInfo)) {
    throw new InvalidCommandParamsError('image_info must be an object')
  }
  const info = imageInfo as Record<string, unknown>
  for (const field of ['id', 'urls']) {
    if (!(field in info)) throw new InvalidCommandParamsError(`Image is missing '${field}' field.`)
  }
  if (!Array.isArray(info.urls) || info.urls.length === 0 || !info.urls.every((u) => typeof u === 'string' && u)) {
    throw new InvalidCommandParamsError(`Image 'urls' must be a list with at least one element.`)
  }
  const algo = info.os_hash_algo
  const value = info.os_hash_value
  const checksum = info.checksum
  if (algo || value) {
    if (!algo || !value || typeof algo !== 'string' || typeof value !== 'string') {
      throw new InvalidCommandParamsError(`Image 'os_hash_algo' and 'os_hash_value' must both be given.`)
    }
    return
  }
  if (typeof checksum !== 'string' || !checksum) {
    throw new InvalidCommandParamsError(`Image is missing a checksum: give 'os_hash_algo' and 'os_hash_value', or 'checksum'.`)
  }
}

async function fullSync(rt: AgentRuntime): Promise<void> {
  await rt.registry.dispatchToAllManagers('full_sync').catch((err) => {
    if ((err as Error).name !== 'HardwareManagerMethodNotFound') throw err
  })
  await rt.system.sync()
}

export const standby: Extension<AgentRuntime> = {
  name: 'standby',
  commands: {
    prepare_image: {
      async: true,
      params: {image_info: 'optional', configdrive: 'optional'},
      validate: (p) => validateImageInfo(p.image_info),
      run: async () => {
        throw new NotImplementedYet('standby.prepare_image (image writing)', 'the deploy issue, #5')
      },
    },
    execute_bootc_install: {
      async: true,
      params: {image_source: 'required', instance_info: 'optional', pull_secret: 'optional', configdrive: 'optional'},
      run: async () => {
        throw new NotImplementedYet('standby.execute_bootc_install', 'a later issue')
      },
    },
    run_image: {
      async: true,
      params: {},
      async run(_p, rt) {
        await fullSync(rt)
        rt.log.info('rebooting into the deployed image')
        setTimeout(() => void rt.system.reboot(), 100)
        return null
      },
    },
    power_off: {
      async: true,
      params: {},
      async run(_p, rt) {
        await fullSync(rt)
        rt.log.info('powering off')
        setTimeout(() => void rt.system.powerOff(), 100)
        return null
      },
    },
    sync: {
      async: false,
      params: {},
      async run(_p, rt) {
        await fullSync(rt)
        return null
      },
    },
    get_partition_uuids: {
      async: false,
      params: {},
      run: async (_p, rt) => rt.partitionUuids,
    },
  },
}

/**
 * standby: image preparation (whole-disk images: src/agent/image/), power and sync, partition UUIDs.
 * The write_image deploy step (GenericHardwareManager) runs the same prepareImage with the same
 * state, so get_partition_uuids answers for whichever wrote the image.
 */
import type {Extension} from '../commands.js'
import {NotImplementedYet} from '../errors.js'
import type {ImageInfo} from '../image/download.js'
import {deployState, prepareImage, validateImageInfo} from '../image/write.js'
import type {AgentRuntime} from '../runtime.js'

/** IPA's image_info validation (shared with the write_image deploy step). */
export {validateImageInfo}

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
      async run(p, rt) {
        const state = deployState(rt.registry)
        const msg = await prepareImage(
          {config: rt.config, log: rt.log, state, installDevice: async () => String(await rt.registry.dispatchToManagers('get_os_install_device', true))},
          p.image_info as ImageInfo,
          p.configdrive as string | null | undefined,
        )
        rt.partitionUuids = state.partitionUuids ?? {}
        return msg
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
      // IPA: {} until an image was written (a warning is logged then).
      run: async (_p, rt) => {
        const uuids = deployState(rt.registry).partitionUuids
        if (uuids === null && Object.keys(rt.partitionUuids).length === 0) rt.log.warn('no partition UUIDs recorded yet: prepare_image has to run first')
        return uuids ?? rt.partitionUuids
      },
    },
  },
}

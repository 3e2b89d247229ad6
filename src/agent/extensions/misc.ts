/** The smaller extensions: poll, image, flow, rescue, system. */
import {mkdir, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'
import type {Extension} from '../commands.js'
import {sha512Crypt} from '../crypt.js'
import {CommandExecutionError, InvalidCommandParamsError} from '../errors.js'
import {installSoftRaidBootloader, isMdDevice} from '../hardware/raid.js'
import {installBootloader, type InstallBootloaderArgs} from '../image/bootloader.js'
import {deployState} from '../image/write.js'
import type {AgentRuntime} from '../runtime.js'

export const poll: Extension<AgentRuntime> = {
  name: 'poll',
  commands: {
    get_hardware_info: {
      async: false,
      params: {},
      run: (_p, rt) => rt.registry.dispatchToManagers('list_hardware_info'),
    },
    set_node_info: {
      async: false,
      params: {node_info: 'required'},
      async run(p, rt) {
        if (!rt.config.standalone) throw new CommandExecutionError('set_node_info is only available in standalone mode')
        const info = p.node_info as {node?: Record<string, unknown>} | undefined
        rt.node = (info?.node ?? info ?? {}) as AgentRuntime['node']
        return null
      },
    },
  },
}

export const image: Extension<AgentRuntime> = {
  name: 'image',
  commands: {
    install_bootloader: {
      async: true,
      params: {
        root_uuid: 'required',
        efi_system_part_uuid: 'optional',
        prep_boot_part_uuid: 'optional',
        target_boot_mode: 'optional',
        ignore_bootloader_failure: 'optional',
        // Ironic 21.4 sends it (agent_client.install_bootloader) when the root device is software RAID.
        software_raid: 'optional',
      },
      run: (p, rt) =>
        installBootloader(
          {
            config: rt.config,
            log: rt.log,
            installDevice: async () => String(await rt.registry.dispatchToManagers('get_os_install_device', true)),
            imageType: deployState(rt.registry).imageType,
            // The RAID code finds the root array itself (the array holding partitions): after a reboot
            // the node may carry no target_raid_config, so get_os_install_device cannot name it.
            softRaid: (args) => installSoftRaidBootloader({config: rt.config, log: rt.log}, args),
            isSoftRaidDevice: isMdDevice,
          },
          p as InstallBootloaderArgs,
        ),
    },
  },
}

export const flow: Extension<AgentRuntime> = {
  name: 'flow',
  commands: {
    start_flow: {
      async: true,
      params: {flow: 'optional'},
      validate(p, rt) {
        const tasks = p.flow ?? []
        if (!Array.isArray(tasks)) throw new InvalidCommandParamsError('flow must be a list of {"<extension>.<command>": params}')
        const known = new Set(rt.processor.extensionNames())
        for (const task of tasks) {
          if (!task || typeof task !== 'object' || Array.isArray(task))
            throw new InvalidCommandParamsError(`flow task ${JSON.stringify(task)} is not an object`)
          for (const [name, params] of Object.entries(task)) {
            const ext = name.split('.')[0]!
            if (!name.includes('.') || !known.has(ext)) throw new InvalidCommandParamsError(`Extension ${ext} for ${name} not found`)
            if (params !== null && (typeof params !== 'object' || Array.isArray(params)))
              throw new InvalidCommandParamsError(`parameters of ${name} must be an object`)
          }
        }
      },
      async run(p, rt) {
        for (const task of (p.flow ?? []) as Record<string, Record<string, unknown> | null>[]) {
          for (const [name, params] of Object.entries(task)) {
            rt.log.info('flow: running', {name})
            const result = await rt.processor.runNested(name, params ?? {})
            if (result.status === 'FAILED') {
              throw new CommandExecutionError(`${name} was failed to be executed, with error ${result.error?.message ?? 'unknown'}`)
            }
          }
        }
        return null
      },
    },
  },
}

export const rescue: Extension<AgentRuntime> = {
  name: 'rescue',
  commands: {
    finalize_rescue: {
      async: false,
      params: {rescue_password: 'optional', hashed: 'optional'},
      async run(p, rt) {
        const password = typeof p.rescue_password === 'string' ? p.rescue_password : ''
        if (!password) throw new InvalidCommandParamsError('rescue_password is required')
        const hash = p.hashed ? password : sha512Crypt(password)
        const dir = rt.config.rescueConfigDir
        await mkdir(dir, {recursive: true, mode: 0o700})
        await writeFile(join(dir, 'ipa-rescue-password'), `${hash}\n`, {mode: 0o600})
        await writeFile(join(dirname(dir), '.rescued'), '')
        rt.log.info('rescue finalised; the agent stops serving')
        setTimeout(() => void rt.stopServing(), 100)
        return null
      },
    },
  },
}

export const system: Extension<AgentRuntime> = {
  name: 'system',
  commands: {
    lockdown: {
      async: false,
      params: {},
      async run(_p, rt) {
        rt.log.warn('lockdown requested: stopping the API and taking the network down')
        setTimeout(() => {
          void rt.stopServing().then(() => rt.system.networkDown())
        }, 100)
        return null
      },
    },
  },
}

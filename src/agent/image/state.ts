/**
 * What a deploy remembers between commands (IPA's StandbyExtension state) and the context a deploy
 * runs in: shared by the whole-disk deploy (write.ts), partition images (partition.ts), standby.*,
 * image.install_bootloader and the write_image step.
 */
import type {AgentConfig} from '../config.js'
import type {Logger} from '../log.js'
import type {WriteResult} from './stream.js'

/** What IPA's StandbyExtension remembers between commands. */
export interface DeployState {
  cachedImageId?: string
  /** null until an image was written (get_partition_uuids then answers {}). */
  partitionUuids: Record<string, unknown> | null
  lastWrite?: WriteResult
  /** What the last prepare_image wrote (image.install_bootloader acts on it). */
  imageType?: 'partition' | 'whole-disk'
}

const states = new WeakMap<object, DeployState>()

/** The deploy state shared by standby.* and the write_image step (keyed by the manager registry). */
export function deployState(key: object): DeployState {
  let s = states.get(key)
  if (!s) {
    s = {partitionUuids: null}
    states.set(key, s)
  }
  return s
}

export interface PrepareContext {
  config: AgentConfig
  log: Logger
  state: DeployState
  /** get_os_install_device through the managers. */
  installDevice: () => Promise<string>
}

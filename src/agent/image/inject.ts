/** deploy.inject_files (IPA's inject_files deploy step): files written into the deployed image's partitions. */
import type {AgentConfig} from '../config.js'
import {NotImplementedYet} from '../errors.js'
import type {Logger} from '../log.js'

export interface InjectContext {
  config: AgentConfig
  log: Logger
  /** get_os_install_device through the managers. */
  installDevice: () => Promise<string>
}

export async function injectFiles(_ctx: InjectContext, _node: Record<string, unknown>, _files: unknown, _verifyCa?: unknown): Promise<null> {
  throw new NotImplementedYet('inject_files', 'the deploy issue, #5')
}

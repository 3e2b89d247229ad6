/** What extensions and commands see of the running agent. */
import type {CommandProcessor} from './commands.js'
import type {AgentConfig} from './config.js'
import type {ManagerRegistry} from './hardware/manager.js'
import type {NodeInfo} from './hardware/types.js'
import type {Logger} from './log.js'
import type {SystemActions} from './system.js'

export interface AgentRuntime {
  config: AgentConfig
  registry: ManagerRegistry
  log: Logger
  /** rdk agent version, reported as agent_version and in /v1/status. */
  version: string
  processor: CommandProcessor<AgentRuntime>
  /** The node object last received from Ironic (lookup or a step command). */
  node?: NodeInfo
  /** Filled by image writing; returned by standby.get_partition_uuids. */
  partitionUuids: Record<string, unknown>
  system: SystemActions
  /** Stop the API and heartbeats (rescue, lockdown). */
  stopServing(): Promise<void>
}

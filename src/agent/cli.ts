/**
 * Turning command-line input into a running agent, shared by `rdk agent` (oclif) and the
 * standalone agent bundle that runs inside ramdisks (node:util parseArgs, no oclif).
 */
import {readFile} from 'node:fs/promises'
import {SETTINGS, flagName, readConfigFile, resolveConfig, type AgentConfig} from './config.js'
import {log} from './log.js'
import {startAgent} from './agent.js'
import {RDK_VERSION} from '../common/version.js'

export const DEFAULT_CONFIG_FILE = '/etc/rdk/agent.json'

export interface CliSources {
  /** File to read instead of /proc/cmdline ('' = none). */
  cmdlineFile?: string
  /** Config file; when not given the default is read if present. */
  configFile?: string
  flags: Record<string, unknown>
}

/** Flag descriptions derived from the settings table. */
export function agentFlagTable(): {name: string; type: 'string' | 'boolean'; help: string}[] {
  return SETTINGS.map((s) => ({name: flagName(s), type: s.type === 'bool' ? 'boolean' : 'string', help: `${s.help} [${s.param}]`}))
}

export async function configFromCli(src: CliSources): Promise<AgentConfig> {
  const file = await readConfigFile(src.configFile ?? DEFAULT_CONFIG_FILE, src.configFile !== undefined)
  let cmdline: string | undefined
  const cmdlinePath = src.cmdlineFile ?? '/proc/cmdline'
  if (cmdlinePath) {
    try {
      cmdline = await readFile(cmdlinePath, 'utf8')
    } catch (err) {
      if (src.cmdlineFile) throw new Error(`cannot read kernel command line file ${cmdlinePath}: ${(err as Error).message}`)
    }
  }
  return resolveConfig({file, cmdline, flags: src.flags})
}

/** Run the agent until it stops or a signal arrives; resolves with the exit code. */
export async function runAgentUntilStopped(config: AgentConfig): Promise<number> {
  const agent = await startAgent(config, {version: RDK_VERSION})
  let signalled = false
  const onSignal = (sig: string) => {
    if (signalled) return
    signalled = true
    log.info('signal received, stopping', {signal: sig})
    void agent.stop()
  }
  process.once('SIGTERM', () => onSignal('SIGTERM'))
  process.once('SIGINT', () => onSignal('SIGINT'))
  await agent.stopped
  return 0
}

/** `rdk inventory`: the inventory exactly as the agent would report it, without starting an agent. */
import {resolveConfig} from './config.js'
import {loadManagers} from './hardware/loader.js'
import {ManagerRegistry} from './hardware/manager.js'
import {log, setLogWriter} from './log.js'
import {redactJson} from './redact.js'

export async function collectInventory(flags: Record<string, unknown>): Promise<unknown> {
  const config = resolveConfig({flags: {...flags, 'disk-wait-attempts': '1', 'disk-wait-delay': '0'}})
  // Keep stdout clean JSON: logs go to stderr only when something is wrong.
  setLogWriter((line) => {
    if (!line.includes('"level":"info"') && !line.includes('"level":"debug"')) process.stderr.write(`${line}\n`)
  })
  const registry = new ManagerRegistry()
  await registry.load(await loadManagers(config.hardwareManagersDir, log), {config, log, registry})
  // As the agent reports it: plain JSON, secrets masked (redact.ts).
  return redactJson(JSON.parse(JSON.stringify(await registry.dispatchToManagers('list_hardware_info'))))
}

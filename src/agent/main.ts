/**
 * Entry point of the agent bundle (dist/agent.mjs) that ramdisks run:
 *   node agent.mjs [--api-url URL] [--standalone] [--cmdline FILE] [--config FILE] ...
 * Flags are the kernel parameter names without `ipa-` (see `rdk agent --help`).
 */
import {parseArgs} from 'node:util'
import {agentFlagTable, configFromCli, runAgentUntilStopped} from './cli.js'
import {log} from './log.js'
import {redactText} from './redact.js'

async function main(): Promise<number> {
  const options: Record<string, {type: 'string' | 'boolean'}> = {cmdline: {type: 'string'}, config: {type: 'string'}, help: {type: 'boolean'}}
  for (const f of agentFlagTable()) options[f.name] = {type: f.type}
  const {values} = parseArgs({options, allowPositionals: false, strict: true})
  if (values.help) {
    process.stdout.write(
      'usage: agent.mjs [options]\n' +
        agentFlagTable()
          .map((f) => `  --${f.name}${f.type === 'string' ? ' VALUE' : ''}\n      ${f.help}`)
          .join('\n') +
        '\n',
    )
    return 0
  }
  const {cmdline, config: configFile, help: _help, ...flags} = values
  const config = await configFromCli({cmdlineFile: cmdline as string | undefined, configFile: configFile as string | undefined, flags})
  return runAgentUntilStopped(config)
}

main().then(
  (code) => process.exit(code),
  (err) => {
    log.error('agent failed', {err})
    process.stderr.write(`rdk agent: ${redactText(String((err as Error)?.message ?? err))}\n`)
    process.exit(1)
  },
)

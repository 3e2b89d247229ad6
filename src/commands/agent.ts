import {Flags} from '@oclif/core'
import {agentFlagTable, configFromCli, runAgentUntilStopped} from '../agent/cli.js'
import {RdkCommand} from './base.js'

const settingFlags = Object.fromEntries(
  agentFlagTable().map((f) => [f.name, f.type === 'boolean' ? Flags.boolean({description: f.help, allowNo: true}) : Flags.string({description: f.help})]),
)

/** --debug is the agent's own setting (ipa-debug: debug logging); it also turns on stack traces. */
export default class Agent extends RdkCommand {
  static override summary = 'Run the IPA-compatible agent (what deploy ramdisks run)'
  static override description =
    'Settings come from the baked config file (/etc/rdk/agent.json), then the kernel command line (ipa-* parameters from /proc/cmdline), then these flags (the kernel parameter names without "ipa-"); later sources win.'
  static override examples = [
    '<%= config.bin %> agent --api-url http://192.0.2.1:6385',
    '<%= config.bin %> agent --standalone --listen-port 9999 --device-allowlist /dev/loop3,/dev/loop4',
    '<%= config.bin %> agent --cmdline ./cmdline.txt',
  ]
  static override flags = {
    cmdline: Flags.string({description: 'read kernel parameters from this file instead of /proc/cmdline ("" for none)'}),
    config: Flags.string({description: 'agent config file (JSON) [default: /etc/rdk/agent.json if present]'}),
    ...settingFlags,
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Agent)
    const {cmdline, config: configFile, ...settings} = flags
    const config = await configFromCli({cmdlineFile: cmdline, configFile, flags: settings})
    process.exitCode = await runAgentUntilStopped(config)
  }
}

import {Flags} from '@oclif/core'
import {RdkCommand} from './base.js'
import {collectInventory} from '../agent/inventory-cli.js'

export default class Inventory extends RdkCommand {
  static override summary = "Print this machine's hardware inventory as JSON (what the agent reports to Ironic)"
  static override flags = {
    'device-allowlist': Flags.string({description: 'only report these block devices (comma-separated /dev paths)'}),
    'collect-lldp': Flags.boolean({description: 'capture LLDP frames on every interface (waits up to --lldp-timeout)'}),
    'lldp-timeout': Flags.string({description: 'seconds to wait for LLDP frames'}),
    'hardware-managers-dir': Flags.string({description: 'directories of custom hardware managers (comma-separated)'}),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Inventory)
    const {debug: _debug, ...options} = flags
    const inventory = await collectInventory(options)
    this.log(JSON.stringify(inventory, null, 2))
  }
}

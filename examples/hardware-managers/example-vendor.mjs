// An example custom hardware manager for the rdk agent.
//
// Put this file in one of the agent's hardware-manager directories (default
// /usr/share/rdk/hardware-managers and /etc/rdk/hardware-managers; `rdk build --hardware-manager`
// places it there) and the agent loads it at start. The default export is a factory that gets
// the agent's API (`rdk`) and returns one or more managers — no imports needed.
export default (rdk) => {
  class ExampleVendorHardwareManager extends rdk.HardwareManager {
    static HARDWARE_MANAGER_NAME = 'example_vendor_hardware_manager'
    static HARDWARE_MANAGER_VERSION = '1.0'

    // Claim MAINLINE support only on machines this manager knows (here: when a marker file is set
    // through the environment, so the example is safe to load anywhere).
    evaluate_hardware_support() {
      return process.env.RDK_EXAMPLE_VENDOR ? rdk.HardwareSupport.MAINLINE : rdk.HardwareSupport.NONE
    }

    // Offer one extra clean step, run manually ("interface": "deploy", "step": "example_firmware_check").
    get_clean_steps(_node, _ports) {
      return [
        {
          step: 'example_firmware_check',
          priority: 0,
          interface: 'deploy',
          reboot_requested: false,
          abortable: true,
          argsinfo: {minimum: {description: 'lowest acceptable BIOS version', required: false}},
        },
      ]
    }

    // Steps are called as (node, ports, args); throw an rdk error class to fail with a clear message.
    async example_firmware_check(_node, _ports, args) {
      const {stdout} = await rdk.run('cat', ['/sys/class/dmi/id/bios_version'], {allowFailure: true})
      const version = stdout.trim() || 'unknown'
      if (args.minimum && version < String(args.minimum)) {
        throw new rdk.errors.CleaningError(`BIOS ${version} is older than ${args.minimum}`)
      }
      rdk.log.info('firmware check passed', {version})
      return {bios_version: version}
    }

    // Overriding an inventory method wins over the generic manager (higher support).
    async get_system_vendor_info() {
      const generic = new rdk.GenericHardwareManager()
      generic.attach(this.ctx)
      const info = await generic.get_system_vendor_info()
      return {...info, manufacturer: info.manufacturer || 'Example Vendor'}
    }
  }
  return new ExampleVendorHardwareManager()
}

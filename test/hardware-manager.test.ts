import {describe, expect, it} from 'vitest'
import {defaultConfig} from '../src/agent/config.js'
import {HardwareManagerMethodNotFound, HardwareManagerNotFound, IncompatibleHardwareMethodError} from '../src/agent/errors.js'
import {HardwareManager, ManagerRegistry} from '../src/agent/hardware/manager.js'
import {HardwareSupport, type Step} from '../src/agent/hardware/types.js'
import {log} from '../src/agent/log.js'

const ctx = {config: defaultConfig(), log: log.child({test: true})}
const step = (name: string, priority: number, iface = 'deploy'): Step => ({step: name, priority, interface: iface, reboot_requested: false, abortable: true})

class Generic extends HardwareManager {
  static override HARDWARE_MANAGER_NAME = 'generic_hardware_manager'
  static override HARDWARE_MANAGER_VERSION = '1.2'
  evaluate_hardware_support() {
    return HardwareSupport.GENERIC
  }
  override get_clean_steps() {
    return [step('erase_devices', 10), step('erase_devices_metadata', 99), step('shared', 5)]
  }
  who() {
    return 'generic'
  }
  only_generic() {
    return 'g'
  }
}
class Vendor extends HardwareManager {
  evaluate_hardware_support() {
    return HardwareSupport.MAINLINE
  }
  override get_clean_steps() {
    return [step('erase_devices', 0), step('vendor_step', 50)]
  }
  who() {
    return 'vendor'
  }
  only_generic(): string {
    throw new IncompatibleHardwareMethodError('not on this box')
  }
}
class Unsupported extends HardwareManager {
  evaluate_hardware_support() {
    return HardwareSupport.NONE
  }
  who() {
    return 'unsupported'
  }
}
class AlsoMainlineA extends HardwareManager {
  evaluate_hardware_support() {
    return HardwareSupport.MAINLINE
  }
  override get_clean_steps() {
    return [step('tie', 20)]
  }
}
class AlsoMainlineB extends HardwareManager {
  evaluate_hardware_support() {
    return HardwareSupport.MAINLINE
  }
  override get_clean_steps() {
    return [step('tie', 20)]
  }
}

describe('hardware manager dispatch (IPA semantics)', () => {
  it('orders by support, drops unsupported, first implementer wins, incompatibility falls through', async () => {
    class Base extends HardwareManager {
      evaluate_hardware_support() {
        return HardwareSupport.GENERIC
      }
      override get_clean_steps() {
        return [step('who', 0), step('only_base', 0)]
      }
      who() {
        return 'base'
      }
      only_base() {
        return 'b'
      }
      get_memory() {
        return 'base memory'
      }
      full_sync() {
        return 'base synced'
      }
    }
    class Top extends HardwareManager {
      evaluate_hardware_support() {
        return HardwareSupport.MAINLINE
      }
      // Top advertises nothing itself: as in IPA, a step advertised by any manager goes to the
      // highest-ranked manager that has the method.
      who() {
        return 'top'
      }
      only_base(): string {
        throw new IncompatibleHardwareMethodError('not on this box')
      }
      get_memory(): string {
        throw new IncompatibleHardwareMethodError('no memory here')
      }
      full_sync() {
        return 'top synced'
      }
    }
    const r = new ManagerRegistry()
    await r.load([new Base(), new Unsupported(), new Top()], ctx)
    expect(r.managers.map((m) => m.constructor.name)).toEqual(['Top', 'Base'])
    expect(await r.dispatchStep('clean', 'who', {}, [], {})).toBe('top')
    expect(await r.dispatchStep('clean', 'only_base', {}, [], {})).toBe('b')
    // advertised for clean only: not a deploy step
    await expect(r.dispatchStep('deploy', 'who', {}, [], {})).rejects.toThrow('No HardwareManager found to handle method: Could not find method: who')
    await expect(r.dispatchStep('clean', 'nope', {}, [], {})).rejects.toThrow(HardwareManagerMethodNotFound)
    // infrastructure dispatch: the allow-listed names only
    expect(await r.dispatchToManagers('get_memory')).toBe('base memory')
    await expect(r.dispatchToManagers('who')).rejects.toThrow('No HardwareManager found to handle method: Could not find method: who')
    expect(await r.dispatchToAllManagers('full_sync')).toEqual({Top: 'top synced', Base: 'base synced'})
    await expect(r.dispatchToAllManagers('who')).rejects.toThrow(HardwareManagerMethodNotFound)
  })

  it('refuses to start with no supporting manager', async () => {
    await expect(new ManagerRegistry().load([new Unsupported()], ctx)).rejects.toThrow(HardwareManagerNotFound)
  })

  it('de-duplicates steps: higher support wins, then priority, then class name', async () => {
    const r = new ManagerRegistry()
    await r.load([new Generic(), new Vendor(), new AlsoMainlineB(), new AlsoMainlineA()], ctx)
    const steps = await r.getSteps('clean', {}, [])
    const names = (cls: string) => (steps[cls] ?? []).map((s) => s.step).sort()
    // erase_devices from Vendor (higher support) even though its priority is lower
    expect(names('Vendor')).toEqual(['erase_devices', 'vendor_step'])
    expect(names('Generic')).toEqual(['erase_devices_metadata', 'shared'])
    expect(names('AlsoMainlineA')).toEqual(['tie'])
    expect(names('AlsoMainlineB')).toEqual([])
  })

  it('reports versions by manager name', async () => {
    const r = new ManagerRegistry()
    await r.load([new Generic(), new Vendor()], ctx)
    expect(r.currentVersions()).toEqual({generic_hardware_manager: '1.2', Vendor: '1.0'})
  })
})

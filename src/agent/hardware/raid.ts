/** Software RAID with mdadm (IPA's create/delete/apply_configuration and deploying onto md devices). */
import type {AgentConfig} from '../config.js'
import {NotImplementedYet} from '../errors.js'
import type {Logger} from '../log.js'

export interface SoftRaidBootloaderArgs {
  /** The root filesystem's UUID (Ironic: instance_info image_rootfs_uuid, else the root uuid/disk id). */
  rootUuid?: string | null
  efiSystemPartUuid?: string | null
  targetBootMode: 'uefi' | 'bios'
}

/** image.install_bootloader when Ironic says software_raid=true: boot partitions on every holder disk. */
export async function installSoftRaidBootloader(_ctx: {config: AgentConfig; log: Logger}, _args: SoftRaidBootloaderArgs): Promise<void> {
  throw new NotImplementedYet('image.install_bootloader with software RAID', 'the deploy issue, #5')
}

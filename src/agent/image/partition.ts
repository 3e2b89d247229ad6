/** Partition images (image_type "partition"): the partition table, root/swap/ephemeral/ESP, and the image written into root. */
import {NotImplementedYet} from '../errors.js'
import type {ImageInfo} from './download.js'
import type {PrepareContext} from './write.js'

export async function preparePartitionImage(_ctx: PrepareContext, _info: ImageInfo, _configdrive: string | null): Promise<string> {
  throw new NotImplementedYet('writing partition images (image_type "partition")', 'partition images: later; whole-disk images work')
}

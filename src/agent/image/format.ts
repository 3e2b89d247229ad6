/**
 * Image format detection by magic bytes, never by the declared disk_format alone (IPA's
 * format_inspector, CVE-2024-44082): the first 64 KiB of the image are enough for every format
 * rdk knows. The declared format must agree with what the bytes say, and the detected format must
 * be in `permitted_image_formats`.
 */
import {InvalidImage} from '../errors.js'

/** How many leading bytes detection wants (the ISO 9660 volume descriptor sits at 32 KiB). */
export const DETECT_BYTES = 64 * 1024

export type ImageFormat = 'raw' | 'gpt' | 'qcow2' | 'vmdk' | 'vhd' | 'vhdx' | 'vdi' | 'qed' | 'iso' | 'luks'

/** The format the bytes say (`head` = the first DETECT_BYTES bytes, or the whole image if shorter). */
export function detectFormat(head: Buffer): ImageFormat {
  const ascii = (off: number, len: number): string => head.subarray(off, off + len).toString('latin1')
  if (head.length >= 4 && head.readUInt32BE(0) === 0x514649fb) return 'qcow2'
  if (ascii(0, 4) === 'QED\0') return 'qed'
  if (ascii(0, 4) === 'KDMV' || /^# Disk DescriptorFile/.test(ascii(0, 64))) return 'vmdk'
  if (ascii(0, 8) === 'vhdxfile') return 'vhdx'
  if (ascii(0, 8) === 'conectix') return 'vhd'
  if (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) return 'vdi'
  if (ascii(0, 6) === 'LUKS\xba\xbe') return 'luks'
  if (ascii(0x8001, 5) === 'CD001') return 'iso'
  if (head.length >= 520 && head[510] === 0x55 && head[511] === 0xaa && ascii(512, 8) === 'EFI PART') return 'gpt'
  return 'raw'
}

/** raw and gpt are the same bytes on disk: a GPT image declared raw is fine. */
function sameFamily(a: string, b: string): boolean {
  const fam = (x: string): string => (x === 'gpt' ? 'raw' : x)
  return fam(a) === fam(b)
}

/**
 * IPA's get_and_validate_image_format: the detected format must be permitted, and must match a
 * declared disk_format. Throws InvalidImage with IPA's "Security: …" texts.
 */
export function validateFormat(detected: ImageFormat, declared: string | null | undefined, permitted: readonly string[]): void {
  const allowed = permitted.map((f) => f.toLowerCase())
  const ok = allowed.includes(detected) || (detected === 'gpt' && allowed.includes('raw'))
  if (!ok) {
    throw new InvalidImage(`Security: Detected image format was ${detected}, but only ${permitted.join(', ')} are allowed`)
  }
  if (declared && !sameFamily(declared.toLowerCase(), detected)) {
    throw new InvalidImage(`Security: Expected format was ${declared}, but image was actually ${detected}`)
  }
}

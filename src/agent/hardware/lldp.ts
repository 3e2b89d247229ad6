/**
 * LLDP for the inventory, IPA-compatible: per interface, the raw TLVs of the first LLDP frame seen,
 * as `[[type, "<hex value>"], ...]` (IPA's `lldp` field; Ironic/inspector parse it server-side).
 *
 * Node has no AF_PACKET sockets, so frames are captured with tcpdump (`-c 1 -w -`, pcap on stdout,
 * bounded by the LLDP timeout) and decoded here: pcap file → Ethernet frame → LLDP TLVs
 * (7-bit type, 9-bit length, up to and including the End TLV).
 *
 * Like IPA: an interface that sees no frame before the timeout reports `[]`; when capture is
 * impossible (no tcpdump, capture error) the interface reports null.
 */
import {runBuffer, ToolMissingError} from '../../common/exec.js'
import type {Logger} from '../log.js'

export const LLDP_ETHERTYPE = 0x88cc
const VLAN_ETHERTYPES = new Set([0x8100, 0x88a8, 0x9100])
/** pcap link types we can decode. */
export const LINKTYPE_ETHERNET = 1
export const LINKTYPE_LINUX_SLL = 113

export type LldpTlvs = [number, string][]

export interface PcapFile {
  linkType: number
  packets: Buffer[]
}

/**
 * Parse a classic pcap file (either byte order, micro- or nanosecond magic). A truncated last
 * record (capture killed mid-write) is ignored.
 */
export function parsePcap(buf: Buffer): PcapFile {
  if (buf.length < 24) throw new Error(`not a pcap file: ${buf.length} bytes`)
  const magicLE = buf.readUInt32LE(0)
  let le: boolean
  if (magicLE === 0xa1b2c3d4 || magicLE === 0xa1b23c4d) le = true
  else if (buf.readUInt32BE(0) === 0xa1b2c3d4 || buf.readUInt32BE(0) === 0xa1b23c4d) le = false
  else throw new Error(`not a pcap file: magic 0x${buf.readUInt32BE(0).toString(16)}`)
  const u32 = (off: number): number => (le ? buf.readUInt32LE(off) : buf.readUInt32BE(off))
  const linkType = u32(20) & 0x0fffffff
  const packets: Buffer[] = []
  let off = 24
  while (off + 16 <= buf.length) {
    const inclLen = u32(off + 8)
    const start = off + 16
    if (start + inclLen > buf.length) break
    packets.push(buf.subarray(start, start + inclLen))
    off = start + inclLen
  }
  return {linkType, packets}
}

/** Decode LLDP TLVs from an LLDPDU: [type, hex] pairs up to and including the End TLV (type 0). */
export function parseLldpTlvs(pdu: Buffer, log?: Logger): LldpTlvs {
  const out: LldpTlvs = []
  let off = 0
  while (off + 2 <= pdu.length) {
    const hdr = pdu.readUInt16BE(off)
    const type = hdr >> 9
    const len = hdr & 0x1ff
    const value = pdu.subarray(off + 2, off + 2 + len)
    if (value.length < len) log?.warn('truncated LLDP TLV', {type, declared: len, got: value.length})
    out.push([type, value.toString('hex')])
    off += 2 + len
    if (type === 0) break
  }
  return out
}

/**
 * The LLDP payload of a captured frame, or null if the frame is not LLDP. Ethernet (with optional
 * 802.1Q/802.1ad tags) and Linux cooked captures are understood.
 */
export function lldpPayload(frame: Buffer, linkType = LINKTYPE_ETHERNET): Buffer | null {
  let off: number
  if (linkType === LINKTYPE_ETHERNET) off = 12
  else if (linkType === LINKTYPE_LINUX_SLL) off = 14
  else return null
  while (off + 2 <= frame.length) {
    const ethertype = frame.readUInt16BE(off)
    if (ethertype === LLDP_ETHERTYPE) return frame.subarray(off + 2)
    if (!VLAN_ETHERTYPES.has(ethertype)) return null
    off += 4
  }
  return null
}

/** TLVs of the first LLDP frame in a pcap capture; [] when it holds none. */
export function lldpFromPcap(buf: Buffer, log?: Logger): LldpTlvs {
  const {linkType, packets} = parsePcap(buf)
  for (const p of packets) {
    const pdu = lldpPayload(p, linkType)
    if (pdu) return parseLldpTlvs(pdu, log)
  }
  return []
}

export interface CaptureOptions {
  /** Run tcpdump inside this network namespace (`ip netns exec`); tests use it. */
  netns?: string
  log?: Logger
}

/**
 * Wait up to `timeoutS` seconds for one LLDP frame on `iface`. [] on timeout; throws
 * ToolMissingError without tcpdump and Error when the capture cannot start.
 */
export async function captureLldp(iface: string, timeoutS: number, opts: CaptureOptions = {}): Promise<LldpTlvs> {
  const tcpdump = ['tcpdump', '-i', iface, '-c', '1', '-U', '-s', '1600', '-w', '-', `ether proto 0x${LLDP_ETHERTYPE.toString(16)}`]
  const [file, ...args] = opts.netns ? ['ip', 'netns', 'exec', opts.netns, ...tcpdump] : tcpdump
  const r = await runBuffer(file!, args, {allowFailure: true, timeoutMs: Math.max(1, Math.round(timeoutS * 1000))})
  if (r.stdout.length < 24) {
    if (/not found|No such file/i.test(r.stderr) && /tcpdump/.test(r.stderr)) throw new ToolMissingError('tcpdump')
    // A link that is down cannot receive anything: like IPA's raw socket, it just sees no frame.
    if (/not up/i.test(r.stderr)) return []
    throw new Error(`tcpdump on ${iface} failed (exit ${r.exitCode}): ${r.stderr.trim().slice(-500)}`)
  }
  return lldpFromPcap(r.stdout, opts.log)
}

/**
 * LLDP for several interfaces at once (in parallel, each bounded by `timeoutS`).
 * Returns name → TLVs ([] when nothing arrived) or null when capture was impossible.
 */
export async function collectLldp(ifaces: readonly string[], timeoutS: number, opts: CaptureOptions = {}): Promise<Map<string, LldpTlvs | null>> {
  const out = new Map<string, LldpTlvs | null>()
  let missing = false
  await Promise.all(
    ifaces
      .filter((i) => i !== 'lo')
      .map(async (iface) => {
        try {
          const tlvs = await captureLldp(iface, timeoutS, opts)
          out.set(iface, tlvs)
          opts.log?.[tlvs.length ? 'info' : 'warn'](tlvs.length ? 'found LLDP info' : 'no LLDP frame before the timeout', {interface: iface})
        } catch (err) {
          out.set(iface, null)
          if (err instanceof ToolMissingError) missing = true
          else opts.log?.warn('LLDP capture failed', {interface: iface, err})
        }
      }),
  )
  if (missing) opts.log?.warn('tcpdump is not installed: LLDP is not collected', {package: 'tcpdump'})
  return out
}

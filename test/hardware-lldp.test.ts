/**
 * LLDP: pcap + Ethernet + TLV decoding on hand-built frames, and real capture with tcpdump inside a
 * network namespace this test creates (frames injected with tcpreplay on a veth pair; no traffic
 * leaves the namespace).
 */
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {captureLldp, collectLldp, lldpFromPcap, lldpPayload, parseLldpTlvs, parsePcap} from '../src/agent/hardware/lldp.js'

function tlv(type: number, value: Buffer): Buffer {
  const hdr = Buffer.alloc(2)
  hdr.writeUInt16BE((type << 9) | value.length)
  return Buffer.concat([hdr, value])
}

const CHASSIS = tlv(1, Buffer.from([4, 0x00, 0x1c, 0x73, 0xaa, 0xbb, 0xcc])) // subtype 4: MAC
const PORT = tlv(2, Buffer.concat([Buffer.from([5]), Buffer.from('Ethernet1/7')])) // subtype 5: ifname
const TTL = tlv(3, Buffer.from([0x00, 0x78]))
const SYSNAME = tlv(5, Buffer.from('leaf-01'))
const VLAN = tlv(127, Buffer.from([0x00, 0x80, 0xc2, 0x01, 0x00, 0x64])) // 802.1 PVID 100
const END = tlv(0, Buffer.alloc(0))
const PDU = Buffer.concat([CHASSIS, PORT, TTL, SYSNAME, VLAN, END])

const EXPECTED: [number, string][] = [
  [1, '04001c73aabbcc'],
  [2, `05${Buffer.from('Ethernet1/7').toString('hex')}`],
  [3, '0078'],
  [5, Buffer.from('leaf-01').toString('hex')],
  [127, '0080c2010064'],
  [0, ''],
]

function ethernet(payload: Buffer, ethertype = 0x88cc, vlan?: number): Buffer {
  const dst = Buffer.from([0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e])
  const src = Buffer.from([0x00, 0x1c, 0x73, 0xaa, 0xbb, 0xcc])
  const tag = vlan === undefined ? Buffer.alloc(0) : Buffer.from([0x81, 0x00, (vlan >> 8) & 0x0f, vlan & 0xff])
  const et = Buffer.alloc(2)
  et.writeUInt16BE(ethertype)
  const frame = Buffer.concat([dst, src, tag, et, payload])
  return frame.length < 60 ? Buffer.concat([frame, Buffer.alloc(60 - frame.length)]) : frame
}

function pcap(frames: Buffer[], littleEndian = true, linkType = 1): Buffer {
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(4)
    if (littleEndian) b.writeUInt32LE(v)
    else b.writeUInt32BE(v)
    return b
  }
  const u16 = (v: number): Buffer => {
    const b = Buffer.alloc(2)
    if (littleEndian) b.writeUInt16LE(v)
    else b.writeUInt16BE(v)
    return b
  }
  const header = Buffer.concat([u32(0xa1b2c3d4), u16(2), u16(4), u32(0), u32(0), u32(262144), u32(linkType)])
  return Buffer.concat([header, ...frames.flatMap((f, i) => [u32(1700000000 + i), u32(0), u32(f.length), u32(f.length), f])])
}

describe('LLDP decoding', () => {
  it('decodes TLVs (7-bit type, 9-bit length) into [type, hex] up to and including End', () => {
    expect(parseLldpTlvs(PDU)).toEqual(EXPECTED)
    // Ethernet padding after End is not read as more TLVs
    expect(parseLldpTlvs(Buffer.concat([PDU, Buffer.alloc(10)]))).toEqual(EXPECTED)
  })

  it('handles a 511-byte TLV value (all 9 length bits)', () => {
    const big = Buffer.alloc(511, 0xab)
    expect(parseLldpTlvs(Buffer.concat([tlv(127, big), END]))).toEqual([
      [127, big.toString('hex')],
      [0, ''],
    ])
  })

  it('finds the LLDP payload in plain and VLAN-tagged frames, rejects other ethertypes', () => {
    expect(lldpPayload(ethernet(PDU))!.subarray(0, PDU.length)).toEqual(PDU)
    expect(lldpPayload(ethernet(PDU, 0x88cc, 100))!.subarray(0, PDU.length)).toEqual(PDU)
    expect(lldpPayload(ethernet(PDU, 0x0800))).toBeNull()
  })

  it('reads pcap files in both byte orders; the first LLDP frame wins; header-only capture gives []', () => {
    const other = ethernet(Buffer.from('not lldp'), 0x0800)
    for (const le of [true, false]) {
      const file = pcap([other, ethernet(PDU)], le)
      expect(parsePcap(file).packets).toHaveLength(2)
      expect(lldpFromPcap(file)).toEqual(EXPECTED)
    }
    expect(lldpFromPcap(pcap([]))).toEqual([])
    // a record cut short (capture killed mid-write) is ignored
    const cut = pcap([ethernet(PDU)])
    expect(lldpFromPcap(cut.subarray(0, cut.length - 5))).toEqual([])
    expect(() => parsePcap(Buffer.from('garbage garbage garbage garbage'))).toThrow(/not a pcap file/)
  })
})

describe('LLDP capture with tcpdump (network namespace)', () => {
  const ns = `rdk-lldp-${process.pid}`
  let dir: string

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rdk-lldp-'))
    await run('ip', ['netns', 'add', ns])
    await run('ip', ['-n', ns, 'link', 'add', 'lldpa', 'type', 'veth', 'peer', 'name', 'lldpb'])
    await run('ip', ['-n', ns, 'link', 'set', 'lldpa', 'up'])
    await run('ip', ['-n', ns, 'link', 'set', 'lldpb', 'up'])
    await run('ip', ['-n', ns, 'link', 'add', 'lldpc', 'type', 'veth', 'peer', 'name', 'lldpd']) // left down
  })

  afterAll(async () => {
    await run('ip', ['netns', 'del', ns], {allowFailure: true})
    if (dir) rmSync(dir, {recursive: true, force: true})
  })

  it('captures the first LLDP frame arriving on an interface', async () => {
    const file = path.join(dir, 'lldp.pcap')
    writeFileSync(file, pcap([ethernet(PDU)]))
    const capture = captureLldp('lldpa', 10, {netns: ns})
    // give tcpdump time to start listening, then inject the frame from the peer (retry a few times)
    let result: [number, string][] | undefined
    void capture.then((r) => (result = r))
    for (let i = 0; i < 20 && result === undefined; i++) {
      await new Promise((r) => setTimeout(r, 250))
      await run('ip', ['netns', 'exec', ns, 'tcpreplay', '-q', '-i', 'lldpb', file])
    }
    expect(await capture).toEqual(EXPECTED)
  })

  it('reports [] when no frame arrives before the timeout (or the link is down), null when capture is impossible', async () => {
    const t0 = Date.now()
    const map = await collectLldp(['lldpa', 'lldpc', 'no-such-if0', 'lo'], 1, {netns: ns})
    expect(Date.now() - t0).toBeLessThan(5000)
    expect(map.get('lldpa')).toEqual([])
    expect(map.get('lldpc')).toEqual([]) // link down: nothing can arrive
    expect(map.get('no-such-if0')).toBeNull()
    expect(map.has('lo')).toBe(false)
  })
})

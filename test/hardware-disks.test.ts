/** Block device parsing, selection, the allow-list and device hints (pure functions, captured fixtures). */
import {readFileSync} from 'node:fs'
import {describe, expect, it} from 'vitest'
import {isAllowed} from '../src/agent/disk/allowlist.js'
import {parseLsblkJson, parseUdevProperties} from '../src/agent/disk/probe.js'
import {guessRootDisk, deviceHintsProblem, matchDeviceHints, selectBlockDevices} from '../src/agent/hardware/disks.js'
import type {BlockDevice} from '../src/agent/hardware/types.js'

const fixture = (name: string): string => readFileSync(new URL(`./fixtures/hardware/${name}`, import.meta.url), 'utf8')
const GIB = 1024 ** 3

function dev(name: string, size: number, extra: Partial<BlockDevice> = {}): BlockDevice {
  return {
    name,
    model: '',
    size,
    rotational: false,
    wwn: null,
    serial: null,
    vendor: null,
    wwn_with_extension: null,
    wwn_vendor_extension: null,
    hctl: null,
    by_path: null,
    logical_sectors: 512,
    physical_sectors: 512,
    tran: null,
    ...extra,
  }
}

describe('parseLsblkJson', () => {
  it('reads lsblk 2.38 --json --list output captured on this machine (numbers and booleans)', () => {
    const rows = parseLsblkJson(fixture('lsblk-list.json'))
    const loop0 = rows.find((r) => r.kname === 'loop0')!
    expect(loop0).toMatchObject({type: 'loop', size: 67108864, rotational: true, model: null, logicalSectors: 512, physicalSectors: 512, readOnly: false})
    expect(rows.find((r) => r.kname === 'loop0p1')).toMatchObject({type: 'part', pkname: 'loop0', size: 8388608})
    expect(rows.find((r) => r.kname === 'vda')).toMatchObject({type: 'disk', size: 274877906944})
  })

  it('reads old string-valued output and flattens the tree, keeping every parent', () => {
    const rows = parseLsblkJson(fixture('lsblk-server-strings.json'))
    const sda = rows.find((r) => r.kname === 'sda')!
    expect(sda).toMatchObject({
      size: 480103981056,
      rotational: false,
      serial: 'S45PNA0M123456',
      wwn: '0x5002538e40a1b2c3',
      tran: 'sata',
      logicalSectors: 512,
      physicalSectors: 4096,
    })
    expect(rows.find((r) => r.kname === 'sda1')).toMatchObject({pkname: 'sda', type: 'part'})
    const md = rows.filter((r) => r.kname === 'md127')
    expect(md).toHaveLength(1)
    expect(md[0]!.parents).toEqual(['sda2', 'sdb1'])
    expect(rows.find((r) => r.kname === 'dm-0')!.parents).toEqual(['sdc', 'sdd'])
  })

  it('reads the tree form (lsblk without --list) too', () => {
    const rows = parseLsblkJson(fixture('lsblk-tree.json'))
    expect(rows.map((r) => r.kname)).toEqual(['loop0', 'loop0p1', 'loop0p2'])
  })
})

describe('selectBlockDevices', () => {
  const server = parseLsblkJson(fixture('lsblk-server-strings.json'))

  it('reports disks, RAID and multipath maps like IPA; skips ram, zram, floppies, empty devices, roms, loops and multipath members', () => {
    const names = selectBlockDevices(server, {allowed: new Set()}).map((r) => r.kname)
    expect(names).toEqual(['sda', 'md127', 'sdb', 'dm-0', 'nvme0n1'])
  })

  it('lists partitions separately', () => {
    expect(selectBlockDevices(server, {allowed: new Set(), blockType: 'part'}).map((r) => r.kname)).toEqual(['sda1', 'sda2', 'sdb1'])
  })

  it('with an allow-list shows only the listed devices and their partitions; listed loops are disks', () => {
    const host = parseLsblkJson(fixture('lsblk-list.json'))
    const allowed = new Set(['loop0'])
    expect(selectBlockDevices(host, {allowed}).map((r) => r.kname)).toEqual(['loop0'])
    expect(selectBlockDevices(host, {allowed, blockType: 'part'}).map((r) => r.kname)).toEqual(['loop0p1', 'loop0p2'])
    // the host's own disk is invisible, and unattached loops stay out even when listed
    expect(selectBlockDevices(host, {allowed: new Set(['loop0', 'loop1'])}).map((r) => r.kname)).toEqual(['loop0'])
    expect(selectBlockDevices(server, {allowed: new Set(['sdb'])}).map((r) => r.kname)).toEqual(['sdb'])
  })

  it('isAllowed: empty list allows all; a partition is visible through its disk', () => {
    expect(isAllowed('sda', null, new Set())).toBe(true)
    expect(isAllowed('sda1', 'sda', new Set(['sda']))).toBe(true)
    expect(isAllowed('sdb', null, new Set(['sda']))).toBe(false)
  })
})

describe('udev properties', () => {
  it('parses KEY=value lines', () => {
    const p = parseUdevProperties('DEVNAME=/dev/sda\nID_SERIAL=Samsung_SSD_860_S3Z2\nID_SERIAL_SHORT=S3Z2\nID_WWN=0x5002538e40a1b2c3\n')
    expect(p).toMatchObject({ID_SERIAL_SHORT: 'S3Z2', ID_WWN: '0x5002538e40a1b2c3'})
  })
})

describe('device hints', () => {
  const sda = dev('/dev/sda', 480 * GIB, {model: 'SAMSUNG MZ7LH480', serial: 'S45PNA0M123456', rotational: false, wwn: '0x5002538e40a1b2c3', hctl: '0:0:0:0'})

  it('matches name (with or without /dev/), strings case-insensitively, size in GiB with operators, rotational', () => {
    expect(matchDeviceHints(sda, {name: '/dev/sda'})).toBe(true)
    expect(matchDeviceHints(sda, {name: 'sda'})).toBe(true)
    expect(matchDeviceHints(sda, {name: '/dev/sdb'})).toBe(false)
    expect(matchDeviceHints(sda, {model: 'samsung mz7lh480'})).toBe(true)
    expect(matchDeviceHints(sda, {model: '<in> MZ7'})).toBe(true)
    expect(matchDeviceHints(sda, {serial: 's== S45PNA0M123456'})).toBe(true)
    expect(matchDeviceHints(sda, {serial: '<or> X <or> S45PNA0M123456'})).toBe(true)
    expect(matchDeviceHints(sda, {size: 480})).toBe(true)
    expect(matchDeviceHints(sda, {size: '>= 400'})).toBe(true)
    expect(matchDeviceHints(sda, {size: '< 400'})).toBe(false)
    expect(matchDeviceHints(sda, {rotational: false, hctl: '0:0:0:0'})).toBe(true)
    expect(matchDeviceHints(sda, {rotational: 'true'})).toBe(false)
    expect(matchDeviceHints(sda, {unknown_key: 'x'})).toBe(false)
    expect(matchDeviceHints(sda, {})).toBe(false)
  })

  it('compares as ironic-lib does: size as real GiB, oslo\'s "=" (at least), names lower-cased', () => {
    const odd = dev('/dev/sdb', 10.5 * GIB, {by_path: '/dev/disk/by-path/pci-0000:00:1f.2-ata-2'})
    expect(matchDeviceHints(odd, {size: '> 10'})).toBe(true)
    expect(matchDeviceHints(odd, {size: '!= 10'})).toBe(true)
    expect(matchDeviceHints(odd, {size: '<= 10'})).toBe(false)
    expect(matchDeviceHints(odd, {size: 10})).toBe(false)
    expect(matchDeviceHints(odd, {size: '= 10'})).toBe(true)
    expect(matchDeviceHints(odd, {size: '= 11'})).toBe(false)
    expect(matchDeviceHints(odd, {name: '/dev/SDB'})).toBe(true)
    expect(matchDeviceHints(odd, {by_path: '/dev/disk/by-path/PCI-0000:00:1F.2-ata-2'})).toBe(true)
  })

  it("deviceHintsProblem: ironic-lib's validation messages", () => {
    expect(deviceHintsProblem({serial: 'x', size: '>= 10', rotational: 'no'})).toBeNull()
    expect(deviceHintsProblem({colour: 'red'})).toMatch(/^The hints "colour" are invalid\. Valid hints are: "model, vendor, serial/)
    expect(deviceHintsProblem({size: 'big'})).toBe('Root device hint "size" is not an integer value. Current value: big')
    expect(deviceHintsProblem({size: '0'})).toBe('Root device hint "size" should be a positive integer. Current value: 0')
    expect(deviceHintsProblem({size: '<or> 10 <or> x'})).toMatch(/is not an integer value/)
    expect(deviceHintsProblem({serial: ''})).toBe('Root device hint "serial" expression is empty')
    expect(deviceHintsProblem({model: 5})).toBe('Root device hint "model" is not a string value. Hint expression: 5')
    expect(deviceHintsProblem({rotational: 'maybe'})).toBe('Root device hint "rotational" is not a Boolean value. Current value: maybe')
  })

  it('guessRootDisk picks the smallest disk of at least 4 GiB, ties by name', () => {
    const devices = [dev('/dev/sdb', 100 * GIB), dev('/dev/sda', 100 * GIB), dev('/dev/sdc', 2 * GIB), dev('/dev/nvme0n1', 500 * GIB)]
    expect(guessRootDisk(devices)?.name).toBe('/dev/sda')
    expect(guessRootDisk([dev('/dev/loop0', 64 * 1024 * 1024)])).toBeUndefined()
  })
})

/**
 * The tiny ramdisk in qemu (TCG, 1 vCPU, 1 GiB; virtio rdk-disk0 5 GiB + NVMe rdk-disk1 2 GiB) driven
 * by a REAL Ironic 29.0.5 (OpenStack 2025.1, Debian trixie's python3-ironic, run from the chroot
 * .ci/install-deps builds; see test/helpers/ironic.ts) on the host's loopback. fake power/boot/
 * management; two test-only patches in test/helpers/ironic-launcher.py: fake management accepts
 * boot device `disk` (else a direct deploy fails at its very end), and the 29.0.5 (deb13u3)
 * parent_node bug (every node PATCH made the node its own parent; the deploy then failed with
 * ChildNodeLocked) is worked around. Ironic 29 requires TLS from the agent (the agent's auto-TLS).
 *
 *  1. inspect with Ironic's built-in inspection (inspect interface `agent`, no ironic-inspector):
 *     the agent posts to /v1/continue_inspection at API 1.84 and keeps the agent token from the
 *     answer; Ironic stores the inventory (GET /v1/nodes/N/inventory) and its hooks fill the
 *     properties → `manageable`.
 *  2. provide: automated cleaning (metadata erase) → `available`. The same VM keeps running (fake
 *     power never stops it): Ironic wiped the agent token when it powered the node off, so the
 *     agent's heartbeats are refused; manage + provide again: the agent looks up again, gets a
 *     fresh token and cleans a second time without a reboot.
 *  3. deploy a whole-disk qcow2 (sha256 checksum) → `active`; disk0 holds the image.
 *  4. service with the agent's `deploy.inject_files` service step → back to `active`; the file is
 *     in the image's FAT partition. Ironic 29.0.x allows lookups in `service wait` only with fast
 *     track (bug 2136818, fixed in Ironic 35.0): the node gets driver_info fast_track = true first.
 */
import {createHash, randomBytes} from 'node:crypto'
import {readFileSync} from 'node:fs'
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import type {DiskSpec} from '../src/boot/qemu.js'
import {readAt, writeAt} from './helpers/disk-files.js'
import {sleep} from './helpers/http.js'
import {MIB, qemuImg, sha256File} from './helpers/image.js'
import {startLab, type Lab} from './helpers/vm-lab.js'

const MAC = '52:54:00:5e:72:01'
const GiB = 1024 ** 3
const IMG_MIB = 24
/** A marker in the middle of the NVMe disk: metadata-only cleaning must leave it alone. */
const MARK_OFFSET = 1 * GiB
const MARK = randomBytes(64 * 1024)
const SERVICED = `serviced by Ironic 29 at ${new Date().toISOString()}\n`

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** A raw whole-disk image: DOS table, one 4 MiB FAT partition at 1 MiB, random data behind it. */
async function makeFatImage(file: string): Promise<void> {
  await run('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${IMG_MIB}`, 'status=none'])
  await run('sfdisk', ['-q', file], {input: 'label: dos\nlabel-id: 0x29abcdef\nstart=2048, size=8192, type=c\n'})
  await run('mkfs.vfat', ['--offset', '2048', '-n', 'RDKIMG', file, '4096'])
}

describe('in-VM lab: a real Ironic 29 (2025.1) drives the tiny ramdisk in qemu', () => {
  let dir: string
  let lab: Lab
  let uuid: string
  let disks: DiskSpec[]
  let passed = 0
  let lastSerial = ''

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-ironic29-vm-'))
    const t0 = Date.now()
    lab = await startLab({dir, ironic: '29', heartbeatTimeout: 30})
    const rss = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${lab.ironic.pid}/status`, 'utf8'))?.[1]
    console.log(
      `ironic29-vm: lab ready in ${Date.now() - t0} ms; Ironic ${lab.ironic.maxVersion} answered ${lab.ironic.startMs} ms after spawn, RSS ${Math.round(Number(rss) / 1024)} MiB`,
    )
    expect(lab.ironic.release).toBe('29')
    expect(lab.ironic.maxVersion).toBe('1.96')
    disks = [
      {path: join(dir, 'disk0.img'), size: '5G', bus: 'virtio'},
      {path: join(dir, 'disk1.img'), size: '2G', bus: 'nvme'},
    ]
    for (const d of disks) await run('qemu-img', ['create', '-q', '-f', 'raw', d.path, String(d.size)])
    await writeAt(disks[1]!.path, MARK_OFFSET, MARK)
    const node = await lab.ironic.createNode({
      name: 'rdk-vm-ironic29',
      properties: {root_device: {serial: 'rdk-disk0'}, capabilities: 'boot_mode:bios'},
    })
    uuid = node.uuid
    expect(node.inspect_interface).toBe('agent')
    await lab.ironic.createPort(uuid, MAC)
    await lab.ironic.setProvisionState(uuid, 'manage')
    await lab.ironic.waitForProvisionState(uuid, ['manageable'], {timeoutMs: 60_000})
  }, 900_000)

  const phase = async (fn: () => Promise<void>) => {
    lastSerial = ''
    try {
      await fn()
    } catch (err) {
      const e = err as Error
      if (!/--- VM serial/.test(e.message) && lab) {
        e.message += `\n--- VM serial of this phase (last lines) ---\n${lastSerial.slice(-6000)}\n${await lab.diagnostics(60)}`
      }
      throw e
    }
  }
  afterAll(async () => {
    await lab?.stop()
    if (dir && passed === 4) await rm(dir, {recursive: true, force: true})
    else if (dir) console.error(`ironic29-vm e2e: logs kept in ${dir}`)
  })

  it(
    '1. inspect (built-in): the agent posts to /v1/continue_inspection, Ironic stores the inventory and fills the properties',
    () =>
      phase(async () => {
        const t0 = Date.now()
        const r = await lab.runPhase(uuid, {target: 'inspect', until: ['manageable'], boot: {mac: MAC, disks}, timeoutMs: 300_000})
        lastSerial = r.serial
        console.log(`ironic29-vm: inspection ${Date.now() - t0} ms`)
        expect(r.states).toContain('inspect wait')
        expect(r.boots).toBe(1)
        expect(r.node.last_error).toBeNull()
        // API 1.84: a lookup-style answer with a token the agent kept.
        expect(r.serial).toMatch(/"msg":"inspection data posted"[^\n]*"lookup_answer":true/)
        expect(r.serial).toMatch(/"msg":"agent token received from inspection"/)

        const {body} = await lab.ironic.api('GET', `/v1/nodes/${uuid}/inventory`)
        const inv = body.inventory
        const names = inv.disks.map((d: {name: string}) => d.name).sort()
        expect(names).toEqual(['/dev/nvme0n1', '/dev/vda'])
        const vda = inv.disks.find((d: {name: string}) => d.name === '/dev/vda')
        expect(vda.serial).toBe('rdk-disk0')
        expect(vda.size).toBe(5 * GiB)
        expect(inv.disks.find((d: {name: string}) => d.name === '/dev/nvme0n1').serial).toBe('rdk-disk1')
        const nic = inv.interfaces.find((i: {mac_address: string}) => i.mac_address === MAC)
        expect(nic, JSON.stringify(inv.interfaces)).toBeDefined()
        expect(nic.ipv4_address).toBe('10.0.2.15')
        expect(inv.memory.physical_mb).toBeGreaterThanOrEqual(900)
        expect(inv.memory.physical_mb).toBeLessThanOrEqual(1024)
        expect(inv.cpu.architecture).toBe('x86_64')
        // The rest of what the agent sent is plugin data (the logs bundle is stored apart).
        expect(body.plugin_data.root_disk.name).toBe('/dev/vda')
        expect(body.plugin_data.boot_interface).toBe(`01-${MAC.replace(/:/g, '-')}`)

        // Ironic 29's hooks (memory, cpu-capabilities, boot-mode, root-device, architecture): memory_mb
        // is an integer, local_gb a string (as the hooks write them).
        const props = r.node.properties
        expect(props.memory_mb).toBe(inv.memory.physical_mb)
        expect(props.cpu_arch).toBe('x86_64')
        // root_device {serial: rdk-disk0} → the 5 GiB disk, minus 1 GiB kept spare.
        expect(props.local_gb).toBe('4')
        expect(body.plugin_data.local_gb).toBe(4)
        expect(String(props.capabilities)).toMatch(/(^|,)boot_mode:bios(,|$)/)
        // The ports hook finds our port (and adds none: it already exists).
        const ports = (await lab.ironic.api('GET', `/v1/ports?node=${uuid}`)).body.ports
        expect(ports.map((p: {address: string}) => p.address)).toEqual([MAC])
        passed++
      }),
    360_000,
  )

  it(
    '2. provide: cleaning → available; the running agent survives the token wipe, looks up again and cleans once more',
    () =>
      phase(async () => {
        if (passed !== 1) throw new Error('an earlier phase failed: this one cannot run')
        const t0 = Date.now()
        await lab.ironic.setProvisionState(uuid, 'provide')
        await lab.ironic.waitForProvisionState(uuid, ['clean wait'], {timeoutMs: 60_000})
        const vm = await lab.bootNode({mac: MAC, disks})
        try {
          const clean1 = await lab.ironic.waitForProvisionState(uuid, ['available'], {timeoutMs: 300_000})
          expect(clean1.last_error).toBeNull()
          // Powering the node off at the end of cleaning wiped token and URL; the VM still runs.
          expect(clean1.driver_internal_info.agent_secret_token).toBeUndefined()
          expect(clean1.driver_internal_info.agent_url).toBeUndefined()
          expect(vm.vm.serialLog()).toMatch(/"disk metadata destroyed","device":"\/dev\/vda"/)
          expect(vm.vm.serialLog()).toMatch(/"disk metadata destroyed","device":"\/dev\/nvme0n1"/)
          console.log(`ironic29-vm: first cleaning ${Date.now() - t0} ms`)

          const t1 = Date.now()
          await lab.ironic.setProvisionState(uuid, 'manage')
          await lab.ironic.waitForProvisionState(uuid, ['manageable'], {timeoutMs: 60_000})
          await lab.ironic.setProvisionState(uuid, 'provide')
          const clean2 = await lab.ironic.waitForProvisionState(uuid, ['available'], {timeoutMs: 300_000})
          expect(clean2.last_error).toBeNull()
          console.log(`ironic29-vm: second cleaning (re-lookup, no reboot) ${Date.now() - t1} ms`)
          // Still the first boot: the VM never stopped.
          expect(await Promise.race([vm.vm.exited.then(() => 'exited'), sleep(0).then(() => 'running')])).toBe('running')
        } finally {
          lastSerial = vm.vm.serialLog()
          await vm.stop()
        }
        // One boot, two tokens: the second from the lookup after Ironic refused the first.
        expect(lastSerial).toMatch(/Ironic refused our agent token/)
        expect(lastSerial.match(/"msg":"agent token received from lookup"/g)?.length).toBe(2)
        expect(lastSerial.match(/"disk metadata destroyed","device":"\/dev\/vda"/g)?.length).toBe(2)
        expect(lastSerial.match(/rdk agent starting/g)?.length).toBe(1)
        // Metadata only: the marker in the middle of the NVMe disk survives.
        expect((await readAt(disks[1]!.path, MARK_OFFSET, MARK.length)).equals(MARK)).toBe(true)
        passed++
      }),
    660_000,
  )

  let raw: string
  it(
    '3. deploy: a whole-disk qcow2 (sha256) lands on rdk-disk0; the node is active',
    () =>
      phase(async () => {
        if (passed !== 2) throw new Error('an earlier phase failed: this one cannot run')
        const t0 = Date.now()
        raw = join(dir, 'image.raw')
        await makeFatImage(raw)
        const qcow2 = join(dir, 'image.qcow2')
        await qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', '-c', raw, qcow2])
        const url = lab.serve('/image.qcow2', qcow2)
        // A PATCH like this one made the node its own parent_node in 29.0.5 (launcher patch).
        await lab.ironic.api('PATCH', `/v1/nodes/${uuid}`, [
          {op: 'add', path: '/instance_info/image_source', value: url},
          {op: 'add', path: '/instance_info/image_os_hash_algo', value: 'sha256'},
          {op: 'add', path: '/instance_info/image_os_hash_value', value: await sha256File(qcow2)},
        ])
        expect((await lab.ironic.getNode(uuid)).parent_node).toBeNull()
        const r = await lab.runPhase(uuid, {target: 'active', until: ['active'], boot: {mac: MAC, disks}, timeoutMs: 420_000})
        lastSerial = r.serial
        console.log(`ironic29-vm: deploy ${Date.now() - t0} ms`)
        expect(r.states).toContain('wait call-back')
        expect(r.node.last_error).toBeNull()
        expect(r.serial).toMatch(/image written/)
        expect(lab.proxy.seen.filter((s) => !s.allowed)).toEqual([])
        const head = await readAt(disks[0]!.path, 0, IMG_MIB * MIB)
        expect(sha(head)).toBe(sha(readFileSync(raw)))
        passed++
      }),
    480_000,
  )

  it(
    '4. service: the agent runs its deploy.inject_files service step; the node is active again',
    () =>
      phase(async () => {
        if (passed !== 3) throw new Error('an earlier phase failed: this one cannot run')
        const t0 = Date.now()
        // Ironic 29.0.x only lets a ramdisk look up in `service wait` with fast track (bug 2136818).
        await lab.ironic.api('PATCH', `/v1/nodes/${uuid}`, [{op: 'add', path: '/driver_info/fast_track', value: 'true'}])
        const serviceSteps = [
          {
            interface: 'deploy',
            step: 'inject_files',
            args: {files: [{path: '/rdk-serviced.txt', partition: 1, content: Buffer.from(SERVICED).toString('base64')}]},
          },
        ]
        const r = await lab.runPhase(uuid, {
          target: 'service',
          extra: {service_steps: serviceSteps},
          until: ['active'],
          boot: {mac: MAC, disks},
          timeoutMs: 300_000,
        })
        lastSerial = r.serial
        console.log(`ironic29-vm: servicing ${Date.now() - t0} ms`)
        expect(r.states).toContain('service wait')
        expect(r.boots).toBe(1)
        expect(r.node.last_error).toBeNull()
        expect(r.node.service_step ?? {}).toEqual({})
        expect(r.serial).toMatch(/"msg":"agent token received from lookup"/)
        expect(r.serial).toMatch(/inject_files: written/)
        const file = join(dir, 'serviced.txt')
        await run('mcopy', ['-n', '-i', `${disks[0]!.path}@@1M`, '::rdk-serviced.txt', file])
        expect(readFileSync(file, 'utf8')).toBe(SERVICED)
        // Only the file changed: the rest of the image is as deployed (past the FAT partition).
        const tail = await readAt(disks[0]!.path, 5 * MIB, (IMG_MIB - 5) * MIB)
        expect(sha(tail)).toBe(sha(readFileSync(raw).subarray(5 * MIB)))
        passed++
      }),
    360_000,
  )
})

/**
 * A whole-disk deploy driven by a REAL Ironic 21.4 (Debian python3-ironic on 127.0.0.1, fake power
 * and boot; the launcher lets fake management accept boot device `disk`): the agent bundle looks
 * up, cleans, then Ironic's `direct` deploy sends deploy.execute_deploy_step write_image with the
 * image URL of a loopback image server, a qcow2 image and a config drive; the node must end up
 * `active` and the allow-listed loop device must hold the image and the config drive.
 */
import {createHash} from 'node:crypto'
import {mkdtemp, rm} from 'node:fs/promises'
import {readFileSync} from 'node:fs'
import {open} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {gzipSync} from 'node:zlib'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig} from '../src/agent/config.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {log} from '../src/agent/log.js'
import {run} from '../src/common/exec.js'
import {startAgentProcess} from './helpers/agent-process.js'
import {join, makeRawImage, MIB, qemuImg, startImageServer, type ImageServer} from './helpers/image.js'
import {freePort, startIronic, type Ironic} from './helpers/ironic.js'
import {attachLoop, detachLoop, type LoopDevice} from './helpers/loop.js'

const IMG_MIB = 20

async function agentMac(): Promise<string> {
  const m = new GenericHardwareManager()
  m.attach({config: defaultConfig(), log})
  const mac = (await m.list_network_interfaces()).map((i) => i.mac_address).find((x) => x && x !== '00:00:00:00:00:00')
  if (!mac) throw new Error('this machine has no network interface with a MAC: the agent could not look up')
  return mac
}

describe('whole-disk deploy driven by a real Ironic', () => {
  let dir: string
  let ironic: Ironic
  let srv: ImageServer
  let disk: LoopDevice
  let agent: Awaited<ReturnType<typeof startAgentProcess>> | undefined

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-image-ironic-'))
    disk = await attachLoop(dir, 'disk', 96 * MIB)
    srv = await startImageServer()
    ironic = await startIronic({dir, heartbeatTimeout: 30})
  }, 180_000)

  afterAll(async () => {
    await agent?.stop()
    await ironic?.stop()
    await srv?.close()
    if (disk) {
      await run('partx', ['-d', disk.device], {allowFailure: true})
      await detachLoop(disk)
    }
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('cleans, then deploys a qcow2 with a config drive; the node goes active', async () => {
    const raw = join(dir, 'disk.raw')
    await makeRawImage(raw, IMG_MIB, {dos: true})
    const qcow2 = join(dir, 'disk.qcow2')
    await qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2])
    srv.files.set('/disk.qcow2', qcow2)
    const sum = createHash('sha256').update(readFileSync(qcow2)).digest('hex')
    await run('mkfs.vfat', ['-C', '-n', 'config-2', join(dir, 'cd.img'), '1024'])
    const cd = readFileSync(join(dir, 'cd.img'))

    const mac = await agentMac()
    const node = await ironic.createNode({
      name: 'rdk-deploy-e2e',
      // BIOS: for a whole-disk image Ironic then needs no image.install_bootloader (not in rdk yet)
      properties: {root_device: {name: disk.device}, capabilities: 'boot_mode:bios'},
      instanceInfo: {image_source: `${srv.url}/disk.qcow2`, image_os_hash_algo: 'sha256', image_os_hash_value: sum},
    })
    await ironic.createPort(node.uuid, mac)
    await ironic.setProvisionState(node.uuid, 'manage')
    await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
    await ironic.setProvisionState(node.uuid, 'provide')
    await ironic.waitForProvisionState(node.uuid, ['clean wait'], {timeoutMs: 60_000})

    const startAgent = async () =>
      startAgentProcess({
        standalone: false,
        args: [
          '--api-url',
          ironic.url,
          '--listen-host',
          '127.0.0.1',
          '--listen-port',
          String(await freePort()),
          '--advertise-host',
          '127.0.0.1',
          '--device-allowlist',
          disk.device,
          '--lookup-interval',
          '1',
        ],
      })
    agent = await startAgent()
    const cleaned = await ironic.waitForProvisionState(node.uuid, ['available'], {timeoutMs: 240_000})
    expect(cleaned.last_error).toBeNull()
    // A real node reboots into a fresh ramdisk for the deploy (fake power does not), and Ironic
    // counts on it: a deploy starts from an agent whose command list is empty.
    await agent.stop()

    await ironic.setProvisionState(node.uuid, 'active', {configdrive: gzipSync(cd).toString('base64')})
    await ironic.waitForProvisionState(node.uuid, ['wait call-back'], {timeoutMs: 60_000})
    agent = await startAgent()
    const active = await ironic.waitForProvisionState(node.uuid, ['active'], {timeoutMs: 300_000})
    expect(active.last_error).toBeNull()

    // The image, apart from the MBR sector that now also lists the config drive partition.
    const fh = await open(disk.device, 'r')
    try {
      const head = Buffer.alloc(IMG_MIB * MIB)
      await fh.read(head, 0, head.length, 0)
      expect(createHash('sha256').update(head.subarray(512)).digest('hex')).toBe(createHash('sha256').update(readFileSync(raw).subarray(512)).digest('hex'))
      const table = JSON.parse((await run('sfdisk', ['--json', disk.device])).stdout).partitiontable
      expect(table.id).toBe('0x1234abcd')
      expect(table.partitions).toHaveLength(2)
      const got = Buffer.alloc(cd.length)
      await fh.read(got, 0, got.length, table.partitions[1].start * 512)
      expect(got.equals(cd)).toBe(true)
    } finally {
      await fh.close()
    }
    const logs = agent.logs()
    expect(logs).toMatch(/"msg":"image written"/)
    expect(logs).toMatch(/stream-qcow2/)
    // Ironic asked for the partition UUIDs after write_image, as the wire capture shows.
    expect(logs).toMatch(/standby\.get_partition_uuids/)
    expect(logs).not.toMatch(/\/dev\/(vd|sd|nvme|xvd)[a-z0-9]/)
  }, 600_000)
})

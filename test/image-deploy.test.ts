/**
 * Whole-disk deploy for real, on loop devices this test creates (root required), through the real
 * CommandProcessor with the standby and deploy extensions and a GenericHardwareManager whose device
 * allow-list names only those loop devices: Ironic 21.4's `deploy.execute_deploy_step` write_image
 * and `standby.prepare_image`, config drives on GPT and MBR disks, get_partition_uuids, and bad
 * input (each a clear IPA error while the processor keeps serving).
 */
import {createHash} from 'node:crypto'
import {existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {open} from 'node:fs/promises'
import os from 'node:os'
import {gzipSync} from 'node:zlib'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {CommandProcessor, type CommandResult} from '../src/agent/commands.js'
import {defaultConfig, type AgentConfig} from '../src/agent/config.js'
import {stepsExtension} from '../src/agent/extensions/steps.js'
import {standby} from '../src/agent/extensions/standby.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {ManagerRegistry} from '../src/agent/hardware/manager.js'
import type {AgentRuntime} from '../src/agent/runtime.js'
import {run} from '../src/common/exec.js'
import {agentRequest, startAgentProcess} from './helpers/agent-process.js'
import {attachLoop, detachLoop, type LoopDevice} from './helpers/loop.js'
import {join, makeRawImage, MIB, qemuImg, quiet, sha256File, startImageServer, type ImageServer} from './helpers/image.js'

const IMG_MIB = 20
let dir: string
let srv: ImageServer
let A: LoopDevice // 96 MiB target
let B: LoopDevice // 16 MiB: too small for anything, must never be picked
const sums = new Map<string, string>()
let rawSha: string
let iso: Buffer

function imageInfo(name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: name,
    urls: [`${srv.url}/${name}`],
    disk_format: null,
    container_format: null,
    stream_raw_images: true,
    os_hash_algo: 'sha256',
    os_hash_value: sums.get(name),
    node_uuid: 'node-1',
    ...extra,
  }
}

async function agent(overrides: Partial<AgentConfig> = {}) {
  const allow = [A.device, B.device]
  if (!allow.every((d) => /^\/dev\/loop\d+$/.test(d))) throw new Error('test bug: allow-list must name only our loop devices')
  const config: AgentConfig = {
    ...defaultConfig(),
    diskWaitAttempts: 0,
    deviceAllowlist: allow,
    imageDownloadConnectionRetries: 1,
    imageDownloadConnectionRetryInterval: 0.05,
    ...overrides,
  }
  const m = new GenericHardwareManager()
  m.skipBmcDetect = true
  const registry = new ManagerRegistry()
  // eslint-disable-next-line prefer-const
  let rt: AgentRuntime
  const processor = new CommandProcessor<AgentRuntime>(
    () => rt,
    quiet,
    () => {},
  )
  rt = {
    config,
    registry,
    log: quiet,
    version: 'test',
    processor,
    partitionUuids: {},
    system: {} as AgentRuntime['system'],
    stopServing: async () => {},
  }
  await registry.load([m], {config, log: quiet, registry})
  processor.register(standby)
  processor.register(stepsExtension('deploy'))
  return {rt, processor}
}

async function finished(r: CommandResult): Promise<Record<string, any>> {
  await r.done
  return JSON.parse(JSON.stringify(r))
}

const node = (hints: Record<string, unknown> = {name: '__A__'}): Record<string, unknown> => ({
  uuid: 'node-1',
  properties: {root_device: Object.fromEntries(Object.entries(hints).map(([k, v]) => [k, v === '__A__' ? A.device : v]))},
  instance_info: {},
  driver_internal_info: {},
})

async function readAt(dev: string, pos: number, len: number): Promise<Buffer> {
  const fh = await open(dev, 'r')
  try {
    const buf = Buffer.alloc(len)
    await fh.read(buf, 0, len, pos)
    return buf
  } finally {
    await fh.close()
  }
}

async function table(dev: string): Promise<any> {
  const r = await run('sfdisk', ['--json', dev], {allowFailure: true})
  return r.exitCode === 0 ? JSON.parse(r.stdout).partitiontable : null
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (loop devices)')
  if (!existsSync('/dev/loop-control')) throw new Error('no loop device support (/dev/loop-control missing): cannot test image writing')
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-deploy-'))
  srv = await startImageServer()
  const raw = join(dir, 'dos.raw')
  await makeRawImage(raw, IMG_MIB, {dos: true})
  rawSha = await sha256File(raw)
  await qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', raw, join(dir, 'dos.qcow2')])
  const gpt = join(dir, 'gpt.raw')
  await makeRawImage(gpt, IMG_MIB)
  await run('sgdisk', ['-o', '-n', '1:2048:+4M', '-t', '1:ef00', '-n', '2:0:+8M', gpt])
  for (const name of ['dos.raw', 'dos.qcow2', 'gpt.raw']) {
    srv.files.set(`/${name}`, join(dir, name))
    sums.set(
      name,
      createHash('sha256')
        .update(readFileSync(join(dir, name)))
        .digest('hex'),
    )
  }
  // A config drive: a filesystem labelled config-2 (Ironic makes ISO 9660; a vfat one is also
  // valid, and dosfstools is already in the CI package list), gzipped and base64'd.
  await run('mkfs.vfat', ['-C', '-n', 'config-2', join(dir, 'cd.img'), '2048'])
  iso = readFileSync(join(dir, 'cd.img'))
  writeFileSync(join(dir, 'cd.b64'), gzipSync(iso).toString('base64'))
  srv.files.set('/cd.b64', join(dir, 'cd.b64'))
  A = await attachLoop(dir, 'a', 96 * MIB)
  B = await attachLoop(dir, 'b', 16 * MIB)
  // Old data everywhere: holes in the image must come back as zeros.
  const fh = await open(A.device, 'r+')
  await fh.write(Buffer.alloc(96 * MIB, 0x5a), 0, 96 * MIB, 0)
  await fh.close()
})

afterAll(async () => {
  for (const l of [A, B]) {
    if (!l) continue
    await run('partx', ['-d', l.device], {allowFailure: true})
    await detachLoop(l)
  }
  await srv?.close()
  if (dir) rmSync(dir, {recursive: true, force: true})
})

describe('whole-disk deploy on loop devices', () => {
  it('deploy.execute_deploy_step write_image (as Ironic 21.4 sends it) streams a qcow2 onto the hinted disk', async () => {
    const {processor} = await agent()
    const step = {interface: 'deploy', step: 'write_image', args: {image_info: imageInfo('dos.qcow2'), configdrive: null}}
    const r = await processor.execute('deploy.execute_deploy_step', {step, node: node(), ports: [], deploy_version: {generic_hardware_manager: '1.2'}})
    expect(r.status).toBe('RUNNING')
    const body = await finished(r)
    expect(body.command_error).toBeNull()
    expect(body).toMatchObject({
      command_name: 'execute_deploy_step',
      command_status: 'SUCCEEDED',
      command_result: {deploy_result: {result: `prepare_image: image (dos.qcow2) written to device ${A.device} root_uuid=0x1234abcd`}, deploy_step: step},
    })
    expect(await sha256File(A.device, IMG_MIB * MIB)).toBe(rawSha)
    const uuids = await finished(await processor.execute('standby.get_partition_uuids', {}))
    expect(uuids.command_result).toEqual({'root uuid': '0x1234abcd'})
  })

  it('standby.prepare_image with a GPT image and a config drive: partition config-2 at the end, ESP uuid reported', async () => {
    const {processor, rt} = await agent()
    rt.node = node() as AgentRuntime['node']
    for (const m of rt.registry.managers) (m as GenericHardwareManager).cachedNode = rt.node
    const cd = readFileSync(join(dir, 'cd.b64'), 'utf8')
    const body = await finished(
      await processor.execute('standby.prepare_image', {image_info: imageInfo('gpt.raw', {deploy_boot_mode: 'uefi'}), configdrive: cd}),
    )
    expect(body.command_error).toBeNull()
    const t = await table(A.device)
    expect(t.label).toBe('gpt')
    const esp = t.partitions.find((p: any) => p.type === 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B')
    const cdPart = t.partitions.at(-1)
    expect(cdPart.name).toBe('config-2')
    // the config drive partition sits in the last 64 MiB, after the backup GPT moved to the end
    expect((cdPart.start + cdPart.size) * 512).toBeGreaterThan(95 * MIB)
    expect(cdPart.size * 512).toBeGreaterThanOrEqual(60 * MIB)
    expect((await readAt(A.device, cdPart.start * 512, iso.length)).equals(iso)).toBe(true)
    expect(body.command_result.result).toBe(
      `prepare_image: image (gpt.raw) written to device ${A.device} root_uuid=0x00000000 efi_system_partition_uuid=${esp.uuid.toLowerCase()}`,
    )
    const uuids = await finished(await processor.execute('standby.get_partition_uuids', {}))
    expect(uuids.command_result).toEqual({
      'root uuid': '0x00000000',
      'efi system partition uuid': esp.uuid.toLowerCase(),
      partitions: {'efi system partition': `${A.device}p1`, configdrive: `${A.device}p3`},
    })
    expect(rt.partitionUuids).toEqual(uuids.command_result)
  })

  it('MBR image + config drive from a URL: a primary partition at the end holds the ISO, the disk signature is kept', async () => {
    const {processor} = await agent()
    const step = {interface: 'deploy', step: 'write_image', args: {image_info: imageInfo('dos.raw'), configdrive: `${srv.url}/cd.b64`}}
    const body = await finished(await processor.execute('deploy.execute_deploy_step', {step, node: node(), ports: []}))
    expect(body.command_error).toBeNull()
    const t = await table(A.device)
    expect(t.label).toBe('dos')
    expect(t.partitions).toHaveLength(2)
    const cdPart = t.partitions[1]
    expect((cdPart.start + cdPart.size) * 512).toBeGreaterThan(95 * MIB)
    expect((await readAt(A.device, cdPart.start * 512, iso.length)).equals(iso)).toBe(true)
    // everything but the partition table in sector 0 is the image
    expect(
      createHash('sha256')
        .update((await readAt(A.device, 0, IMG_MIB * MIB)).subarray(512))
        .digest('hex'),
    ).toBe(
      createHash('sha256')
        .update(readFileSync(join(dir, 'dos.raw')).subarray(512))
        .digest('hex'),
    )
    const uuids = await finished(await processor.execute('standby.get_partition_uuids', {}))
    expect(uuids.command_result).toEqual({'root uuid': '0x1234abcd', partitions: {configdrive: `${A.device}p2`}})
  })

  it('bad input: each a clear IPA error, the disk is left without a bootable table, and the processor keeps serving', async () => {
    const {processor} = await agent()
    const deploy = async (info: Record<string, unknown>, configdrive: unknown = null, hints?: Record<string, unknown>) =>
      finished(
        await processor.execute('deploy.execute_deploy_step', {
          step: {interface: 'deploy', step: 'write_image', args: {image_info: info, configdrive}},
          node: node(hints),
          ports: [],
        }),
      )

    let b = await deploy(imageInfo('dos.raw', {os_hash_value: 'ab'.repeat(32)}))
    expect(b.command_error).toMatchObject({type: 'ImageChecksumError', message: 'Error verifying image checksum'})
    expect(b.command_error.details).toMatch(/image ID: dos\.raw; image checksum: (ab){32} \(sha256\); verification checksum: [0-9a-f]{64} \(sha256\)/)
    expect(await table(A.device)).toBeNull()

    b = await deploy(imageInfo('missing.raw', {os_hash_value: 'ab'.repeat(32)}))
    expect(b.command_error).toMatchObject({type: 'ImageDownloadError', message: 'Error downloading image'})
    expect(b.command_error.details).toMatch(/Received status code 404/)

    b = await deploy(imageInfo('dos.raw', {id: 'dos-again'}), 'this is not base64!')
    expect(b.command_error).toMatchObject({type: 'CommandExecutionError'})
    expect(b.command_error.details).toBe(
      'Config drive for node node-1 is not base64 encoded or the content is malformed. Error: characters outside the base64 alphabet.',
    )

    b = await deploy(imageInfo('dos.raw', {id: 'dos-dict'}), {meta_data: {}})
    expect(b.command_error).toMatchObject({type: 'InvalidCommandParamsError', code: 400})

    b = await deploy(imageInfo('dos.raw'), null, {serial: 'no-such-serial'})
    expect(b.command_error).toMatchObject({type: 'DeviceNotFound', code: 404})
    expect(b.command_error.details).toBe('No suitable device was found for deployment using these hints {"serial":"no-such-serial"}')

    b = await deploy(imageInfo('dos.raw'), null, {size: 'large'})
    expect(b.command_error).toMatchObject({type: 'DeviceNotFound', code: 404})
    expect(b.command_error.details).toBe(
      'No devices could be found using the root device hints {"size":"large"} because they failed to validate. Error: Root device hint "size" is not an integer value. Current value: large',
    )

    // a 20 MiB image on the 16 MiB disk: refused before writing (qcow2 header size)
    b = await deploy(imageInfo('dos.qcow2', {id: 'too-big'}), null, {name: B.device})
    expect(b.command_error).toMatchObject({type: 'ImageWriteError', message: 'Error writing image to device'})
    expect(b.command_error.details).toMatch(new RegExp(`the image needs ${IMG_MIB * MIB} bytes but ${B.device} holds only ${16 * MIB}`))

    // partition images are written by partition.ts (test/image-partition.test.ts): root_mb is required
    b = await deploy(imageInfo('dos.raw', {id: 'part', image_type: 'partition'}))
    expect(b.command_error).toMatchObject({type: 'InvalidCommandParamsError', code: 400})
    expect(b.command_error.details).toBe("Image is missing 'root_mb' field, which partition images require.")

    b = await deploy({id: 'x', urls: []})
    expect(b.command_error).toMatchObject({type: 'InvalidCommandParamsError', code: 400})
    await expect(processor.execute('standby.prepare_image', {image_info: {id: 'x'}})).rejects.toThrow(
      "Invalid command parameters: Image is missing 'urls' field.",
    )

    const ok = await finished(await processor.execute('standby.get_partition_uuids', {}))
    expect(ok.command_status).toBe('SUCCEEDED')
    // and a good deploy still works afterwards
    b = await deploy(imageInfo('dos.raw', {id: 'dos-final'}))
    expect(b.command_status).toBe('SUCCEEDED')
    expect(await sha256File(A.device, IMG_MIB * MIB)).toBe(rawSha)
  })

  it('through the real agent bundle (dist/agent.mjs) and its REST API, as Ironic drives it', async () => {
    const agentProc = await startAgentProcess({args: ['--device-allowlist', `${A.device},${B.device}`, '--disk-wait-attempts', '0']})
    try {
      const q = `?agent_token=${encodeURIComponent(agentProc.token)}`
      const post = (name: string, params: unknown, wait: boolean) =>
        agentRequest(agentProc.url, {
          method: 'POST',
          path: `/v1/commands/${q}&wait=${wait}`,
          headers: {'Content-Type': 'application/json'},
          body: JSON.stringify({name, params}),
        })
      const last = async (): Promise<any> => {
        for (let i = 0; i < 600; i++) {
          const r = await agentRequest(agentProc.url, {path: `/v1/commands/${q}`})
          const cmd = r.json.commands.at(-1)
          if (cmd.command_status !== 'RUNNING') return cmd
          await new Promise((res) => setTimeout(res, 100))
        }
        throw new Error('command still running')
      }
      const step = {interface: 'deploy', step: 'write_image', args: {image_info: imageInfo('dos.qcow2', {id: 'via-api'}), configdrive: null}}
      const started = await post('deploy.execute_deploy_step', {step, node: node(), ports: [], deploy_version: {generic_hardware_manager: '1.2'}}, false)
      expect(started.status, started.text).toBe(200)
      expect(started.json.command_status).toBe('RUNNING')
      // IPA's rule: one command at a time
      expect((await post('standby.get_partition_uuids', {}, true)).status).toBe(409)
      const done = await last()
      expect(done).toMatchObject({
        command_status: 'SUCCEEDED',
        command_result: {deploy_result: {result: `prepare_image: image (via-api) written to device ${A.device} root_uuid=0x1234abcd`}},
      })
      expect(await sha256File(A.device, IMG_MIB * MIB)).toBe(rawSha)
      const uuids = await post('standby.get_partition_uuids', {}, true)
      expect(uuids.json.command_result).toEqual({'root uuid': '0x1234abcd'})
      // a failing write is a FAILED result with IPA's error, and the API keeps answering
      const bad = {...step, args: {image_info: imageInfo('missing.qcow2', {os_hash_value: 'ab'.repeat(32)}), configdrive: null}}
      await post('deploy.execute_deploy_step', {step: bad, node: node(), ports: []}, false)
      const failed = await last()
      expect(failed).toMatchObject({command_status: 'FAILED', command_error: {type: 'ImageDownloadError', code: 500}})
      expect((await agentRequest(agentProc.url, {path: '/v1/status'})).status).toBe(200)
    } finally {
      await agentProc.stop()
    }
  })
})

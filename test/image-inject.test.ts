/**
 * deploy.inject_files for real on a loop disk this test creates (root required), through the
 * generic hardware manager's step as Ironic calls it: files found by path (partitions mounted in
 * turn), by partition number, label and UUID, merged with node.properties.inject_files, deleted,
 * fetched from a URL with {node[...]} fields, modes/owners, and writes that try to leave the image
 * through '..' or symlinks. Partitions are ext4: this host's kernel cannot mount vfat (no module),
 * vfat mounting runs in the UEFI VM test (the ESP).
 */
import {existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {chmod, readFile, symlink} from 'node:fs/promises'
import os from 'node:os'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig} from '../src/agent/config.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {ManagerRegistry} from '../src/agent/hardware/manager.js'
import {withMount} from '../src/agent/image/bootloader.js'
import {formatUrl, validateFiles} from '../src/agent/image/inject.js'
import {run} from '../src/common/exec.js'
import {join, quiet, startImageServer, type ImageServer} from './helpers/image.js'
import {attachLoop, detachLoop, type LoopDevice} from './helpers/loop.js'

let dir: string
let L: LoopDevice
let srv: ImageServer
let registry: ManagerRegistry
let manager: GenericHardwareManager
let rootUuid: string
const b64 = (s: string) => Buffer.from(s).toString('base64')

async function step(files: unknown, node: Record<string, unknown> = {uuid: 'node-i', properties: {}}): Promise<unknown> {
  // The loop disk is below 4 GiB: a root device hint names it, as an operator would; the step
  // extension caches the node before dispatching (as execute_deploy_step does).
  const n = {...node, instance_info: {root_device: {name: L.device}}}
  manager.cachedNode = n as never
  return registry.dispatchStep('deploy', 'inject_files', n, [], {files})
}

async function inImage(part: number, fn: (d: string) => Promise<void>): Promise<void> {
  await withMount(`${L.device}p${part}`, fn)
}

beforeAll(async () => {
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-inject-'))
  srv = await startImageServer()
  L = await attachLoop(dir, 'disk', 64 * 1024 * 1024)
  if (!/^\/dev\/loop\d+$/.test(L.device)) throw new Error('test bug')
  // 1: "boot" (ext4, no /etc), 2: swap type (never mounted), 3: root (ext4 with /etc).
  await run('sgdisk', ['-n', '1:0:+12M', '-c', '1:boot', '-n', '2:0:+4M', '-t', '2:8200', '-n', '3:0:0', '-c', '3:rootpart', L.device])
  await run('partprobe', [L.device])
  await run('udevadm', ['settle'], {allowFailure: true})
  const src = join(dir, 'root')
  mkdirSync(join(src, 'etc'), {recursive: true})
  writeFileSync(join(src, 'etc/old.conf'), 'old')
  await run('mkfs.ext4', ['-q', '-F', '-L', 'bootfs', `${L.device}p1`])
  await run('mkswap', [`${L.device}p2`])
  await run('mkfs.ext4', ['-q', '-F', '-L', 'img-root', '-d', src, `${L.device}p3`])
  rootUuid = (await run('blkid', ['-s', 'UUID', '-o', 'value', `${L.device}p3`])).stdout.trim()
  manager = new GenericHardwareManager()
  manager.skipBmcDetect = true
  registry = new ManagerRegistry()
  const config = {...defaultConfig(), diskWaitAttempts: 0, deviceAllowlist: [L.device], imageDownloadConnectionRetries: 0}
  await registry.load([manager], {config, log: quiet, registry})
})

afterAll(async () => {
  if (L) await detachLoop(L)
  await srv?.close()
  rmSync(dir, {recursive: true, force: true})
})

describe('inject_files on a loop disk', () => {
  it('finds the partition holding the path, writes content, mode, owner, a new leaf directory with dirmode', async () => {
    await expect(
      step([
        {path: '/etc/hello.conf', content: b64('hello\n'), mode: 0o600, owner: 1234, group: 99},
        {path: '/etc/new.d/x.conf', content: b64('x'), dirmode: 0o700},
      ]),
    ).resolves.toBeNull()
    await inImage(3, async (d) => {
      expect(await readFile(join(d, 'etc/hello.conf'), 'utf8')).toBe('hello\n')
      const st = statSync(join(d, 'etc/hello.conf'))
      expect([st.mode & 0o777, st.uid, st.gid]).toEqual([0o600, 1234, 99])
      expect(statSync(join(d, 'etc/new.d')).mode & 0o777).toBe(0o700)
      expect(await readFile(join(d, 'etc/new.d/x.conf'), 'utf8')).toBe('x')
    })
    await inImage(1, async (d) => expect(existsSync(join(d, 'etc'))).toBe(false))
    expect(await readFile('/proc/self/mounts', 'utf8')).not.toContain(L.device)
  })

  it('by partition number, label and UUID; node.properties.inject_files first; deleted removes', async () => {
    await step(
      [
        {path: '/etc/old.conf', deleted: true, partition: rootUuid},
        {path: '/by-label', partition: 'bootfs', content: b64('label')},
      ],
      {
        uuid: 'node-i',
        properties: {
          inject_files: [
            {path: '/grub.cfg', partition: 1, content: b64('set timeout=1\n')},
            {path: '/etc/old.conf', partition: '3', content: b64('rewritten')},
          ],
        },
      },
    )
    await inImage(1, async (d) => {
      expect(await readFile(join(d, 'grub.cfg'), 'utf8')).toBe('set timeout=1\n')
      expect(await readFile(join(d, 'by-label'), 'utf8')).toBe('label')
    })
    // properties (rewrite) ran before the argument (delete)
    await inImage(3, async (d) => expect(existsSync(join(d, 'etc/old.conf'))).toBe(false))
    await expect(step([{path: '/x', partition: 9, content: b64('x')}])).rejects.toMatchObject({type: 'DeviceNotFound'})
    await expect(step([{path: '/x', partition: '/dev/sda1', content: b64('x')}])).rejects.toThrow(/\/dev\/sda1 is not a partition of the install device/)
  })

  it('content from a URL with {node[...]} fields', async () => {
    writeFileSync(join(dir, 'node-i.key'), 'ssh-ed25519 AAAA test\n')
    srv.files.set('/keys/node-i.key', join(dir, 'node-i.key'))
    await step([{path: '/etc/key', content: `${srv.url}/keys/{node[uuid]}.key`}])
    await inImage(3, async (d) => expect(await readFile(join(d, 'etc/key'), 'utf8')).toBe('ssh-ed25519 AAAA test\n'))
    expect(formatUrl('http://h/{node[properties][x]}/{ports[0][address]}', {properties: {x: 'a'}}, [{address: 'm'}])).toBe('http://h/a/m')
    await expect(step([{path: '/etc/k2', content: `${srv.url}/keys/none`}])).rejects.toThrow(/Failed to process file .*Received status code 404/)
  })

  it('a failing content URL (404, or a connection dropped mid-body) leaves no file, no partial file, and an existing file unchanged', async () => {
    writeFileSync(join(dir, 'big.bin'), Buffer.alloc(4 * 1024 * 1024, 7))
    srv.files.set('/big.bin', join(dir, 'big.bin'))
    srv.behaviour.set('/big.bin', {dropAfter: 1024 * 1024, times: Infinity})
    await inImage(3, async (d) => {
      writeFileSync(join(d, 'etc/keep.conf'), 'keep')
      await chmod(join(d, 'etc/keep.conf'), 0o640)
    })
    await expect(step([{path: '/etc/absent.conf', content: `${srv.url}/missing`}])).rejects.toThrow(/Failed to process file .*Received status code 404/)
    await expect(step([{path: '/etc/keep.conf', content: `${srv.url}/big.bin`}])).rejects.toThrow(/Failed to process file/)
    await expect(step([{path: '/etc/keep.conf', content: `${srv.url}/missing`}])).rejects.toThrow(/Received status code 404/)
    await expect(step([{path: '/etc/fresh.d/x.conf', content: `${srv.url}/missing`}])).rejects.toThrow(/Received status code 404/)
    await inImage(3, async (d) => {
      expect(existsSync(join(d, 'etc/absent.conf'))).toBe(false)
      expect(existsSync(join(d, 'etc/fresh.d'))).toBe(false) // the leaf directory made for it is gone too
      expect(await readFile(join(d, 'etc/keep.conf'), 'utf8')).toBe('keep')
      expect(statSync(join(d, 'etc/keep.conf')).mode & 0o777).toBe(0o640)
      expect(readdirSync(join(d, 'etc')).filter((f) => f.includes('.rdk-'))).toEqual([]) // no temporary file left
    })
    // A successful rewrite replaces the content and keeps the existing file's mode (IPA opens it 'wb').
    await step([{path: '/etc/keep.conf', content: b64('new')}])
    await inImage(3, async (d) => {
      expect(await readFile(join(d, 'etc/keep.conf'), 'utf8')).toBe('new')
      expect(statSync(join(d, 'etc/keep.conf')).mode & 0o777).toBe(0o640)
    })
  })

  it('symlinks resolve inside the image, never into the ramdisk', async () => {
    const outside = join(dir, 'outside')
    const pwn2 = `rdk-pwn2-${process.pid}-${Date.now()}` // unique: a leftover from another run cannot fail this one
    mkdirSync(outside)
    await inImage(3, async (d) => {
      await symlink(outside, join(d, 'etc/abs-link')) // absolute: means <image>/<outside>
      await symlink('../../../../../../../..', join(d, 'etc/up')) // relative, climbing: stops at the image root
      await symlink('/etc/hello.conf', join(d, 'etc/file-link'))
    })
    await step([
      {path: '/etc/abs-link/pwn', content: b64('in image')},
      {path: `/etc/up/tmp/${pwn2}`, content: b64('also in image')},
      {path: '/etc/file-link', content: b64('through a file link')},
    ])
    expect(existsSync(join(outside, 'pwn'))).toBe(false)
    expect(existsSync(`/tmp/${pwn2}`)).toBe(false) // where a climbing link would land on the host
    await inImage(3, async (d) => {
      expect(await readFile(join(d, outside.slice(1), 'pwn'), 'utf8')).toBe('in image')
      expect(await readFile(join(d, 'tmp', pwn2), 'utf8')).toBe('also in image')
      expect(await readFile(join(d, 'etc/hello.conf'), 'utf8')).toBe('through a file link')
    })
  })

  it('no partition holds the path: DeviceNotFound naming what was scanned; no files: nothing happens', async () => {
    await expect(step([{path: '/nowhere/x', content: b64('x')}])).rejects.toMatchObject({
      type: 'DeviceNotFound',
      details: expect.stringMatching(/No partition found with path \/nowhere, scanned: \[".*p1",".*p2",".*p3"\]/),
    })
    await expect(step([])).resolves.toBeNull()
    await expect(step(undefined)).resolves.toBeNull()
  })
})

describe('validation (IPA _validate_files)', () => {
  it('each problem is named, nothing is mounted', async () => {
    expect(() => validateFiles({}, [])).toThrow('The `inject_files` node property must be a list, got dict')
    expect(() => validateFiles([], 'x')).toThrow('The `files` argument must be a list, got str')
    const bad = [
      {path: '/etc/../../x', content: 'eA=='},
      {path: '/top', content: 'eA=='},
      {path: '/etc/dir/', content: 'eA=='},
      {path: '/etc/a', content: 'eA==', deleted: true},
      {path: '/etc/b', content: 'eA==', mode: '0644'},
      {path: '/etc/c', content: 'eA==', colour: 'red'},
      {content: 'eA=='},
      {path: '/etc/d'},
    ]
    let msg = ''
    try {
      validateFiles([], bad)
    } catch (e) {
      msg = (e as {details: string}).details
    }
    expect(msg).toMatch(/^Validation of files failed: /)
    for (const part of [
      "'..' is not allowed",
      'in root directory requires "partition"',
      'directories not supported',
      'content cannot be used with deleted',
      'mode must be a number',
      'unexpected fields in .*: colour',
      'expected a path in',
      'expected content \\(base64 or a URL\\) or deleted',
    ]) {
      expect(msg).toMatch(new RegExp(part))
    }
    await expect(step([{path: '/etc/e', content: 'not base64!'}])).rejects.toThrow(/Failed to process file .*content is not valid base64/)
  })
})

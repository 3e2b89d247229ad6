/**
 * Real ramdisks in qemu (TCG on CI's two cores), without `rdk build`: the test assembles the
 * initramfs itself from Debian's kernel (the Debian layer's prepareKernel/installKernelModules:
 * virtio-net/blk/rng/efivarfs and depmod output), busybox-static, the base and tiny-init elements
 * (/init, the udhcpc script, /dev/console and /dev/null) and, for the agent case, Node + the agent
 * bundle + the tiny-agent element; packed with the build engine's deterministic cpio writer, gzip'd, and booted
 * with startVm (src/boot/qemu.ts).
 *
 * Case 1 (busybox): the serial console shows /init's progress lines, DHCP gives 10.0.2.15, and a
 *   busybox httpd (started by an /etc/rdk/init.d hook) answers through the forwarded 127.0.0.1 port.
 * Case 2 (agent): `GET /v1/status` through the forwarded port answers the agent's JSON.
 *
 * The agent guest runs with `restrict=on` user networking: DHCP (without router or DNS) and the
 * forwarded ports work, and it cannot open connections to the host or beyond. The busybox guest
 * runs unrestricted to get a router and DNS in its lease; it opens no connections itself. Packages are cached under
 * node_modules/.cache/rdk-test/ (the first run downloads ~72 MB with apt-get).
 */
import {randomBytes} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, mkdtemp, rm, stat} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'
import {formatCommand, startVm, type Vm} from '../src/boot/qemu.js'
import {assembleElement} from '../src/builder/assemble.js'
import {gzipTo} from '../src/builder/compress.js'
import {writeCpio} from '../src/builder/cpio.js'
import {loadElement} from '../src/builder/elements.js'
import {finishSpec} from '../src/builder/spec.js'
import {FileTree} from '../src/builder/tree.js'
import {addUsrMergeLinks, extractDeb, noDocs} from '../src/debian/extract.js'
import {installKernelModules, prepareKernel, type PreparedKernel} from '../src/debian/kernel.js'
import {fetchPackages, resolvePackages} from '../src/debian/packages.js'
import {addAgentBundle, addNodeRuntime, AGENT_BUNDLE} from '../src/flavors/tiny/node.js'

const REPO = fileURLToPath(new URL('..', import.meta.url))
const CACHE = join(REPO, 'node_modules', '.cache', 'rdk-test')
const MAC = '52:54:00:12:34:56'
const BOOTIF = `01-${MAC.replace(/:/g, '-')}`
const MODULES = ['virtio_pci', 'virtio_net', 'virtio_blk', 'virtio_rng', 'efivarfs']
const MTIME = 1704067200

let work: string
let kernel: PreparedKernel
let busyboxDeb: string
const vms: Vm[] = []

/** "init 3.0 s, dhcp 4.3 s, … (tcg, PVH)": seconds since qemu started, for the log. */
function timeline(vm: Vm, marks: Record<string, number>): string {
  const steps = Object.entries(marks).map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`)
  return `${steps.join(', ')} (${vm.accel}, ${vm.pvh ? 'PVH' : 'bzImage'})`
}

async function mark(vm: Vm, re: RegExp, timeoutMs: number): Promise<number> {
  await vm.waitForSerial(re, timeoutMs)
  return Date.now() - vm.startedAt
}

async function element(tree: FileTree, name: string, kernelArgs: Record<string, string | null> = {}): Promise<void> {
  const dir = join(REPO, 'elements', name)
  const el = await loadElement({name, dir, searchPath: join(REPO, 'elements'), builtin: true})
  const spec = await finishSpec({flavor: 'tiny', kernelArgs, output: join(work, 'out'), cacheDir: CACHE, debianMirror: 'http://deb.debian.org/debian'})
  await assembleElement(tree, el, spec, [name])
}

/** The base element + busybox + kernel modules + tiny-init, in a fresh tree. */
async function baseTree(): Promise<FileTree> {
  const tree = new FileTree()
  addUsrMergeLinks(tree)
  await element(tree, 'base')
  await tree.withSource('busybox-static', () => extractDeb(busyboxDeb, tree, {source: 'busybox-static', filter: noDocs}))
  await installKernelModules(kernel, tree, {workDir: work, compress: false})
  await element(tree, 'tiny-init')
  return tree
}

/** newc cpio, gzip'd (or not: the kernel takes a bare cpio too, and skips ~1.5 s of unpacking). */
async function pack(tree: FileTree, name: string, gzip = true): Promise<{path: string; raw: number; size: number; ms: number}> {
  const t0 = Date.now()
  const cpio = join(work, `${name}.cpio`)
  const stats = await writeCpio(tree, cpio, {mtime: MTIME})
  if (!gzip) return {path: cpio, raw: stats.bytes, size: stats.bytes, ms: Date.now() - t0}
  const gz = join(work, `${name}.initramfs`)
  await gzipTo(createReadStream(cpio), gz)
  await rm(cpio)
  return {path: gz, raw: stats.bytes, size: (await stat(gz)).size, ms: Date.now() - t0}
}

describe('tiny ramdisks boot in qemu', () => {
  beforeAll(async () => {
    await mkdir(CACHE, {recursive: true})
    work = await mkdtemp(join(tmpdir(), 'rdk-boot-e2e-'))
    kernel = await prepareKernel({cacheDir: CACHE, modules: MODULES, firmwarePackages: []})
    const [bb] = await resolvePackages(['busybox-static'], {noDependencies: true})
    ;[busyboxDeb] = await fetchPackages([bb!], CACHE)
  }, 300_000)

  afterEach(async () => {
    for (const vm of vms.splice(0)) {
      await vm.stop()
      if (process.env.RDK_TEST_LOGS) console.log(`--- serial console ---\n${vm.serialLog()}`)
    }
  })

  afterAll(async () => {
    if (process.env.RDK_TEST_KEEP) console.log(`kept the images in ${work}`)
    else if (work) await rm(work, {recursive: true, force: true})
  })

  it('busybox /init: progress, coldplug, DHCP 10.0.2.15, logins, hooks, agent supervisor, httpd through the forwarded port', async () => {
    const tree = await baseTree()
    // An init.d hook (the extension point /init offers) reports what /init set up and starts a
    // web server; a stand-in `node` that exits at once exercises the agent supervisor.
    tree.addFile('/srv/www/index.html', 'rdk boot test: hello from the guest\n')
    tree.addFile(
      '/etc/rdk/init.d/50-test',
      [
        '#!/bin/sh',
        'echo "rdk-test: resolv: $(grep nameserver /etc/resolv.conf)"',
        'echo "rdk-test: route: $(ip route show default)"',
        'echo "rdk-test: hostname: $(hostname)"',
        'echo "rdk-test: key: $(cat /root/.ssh/authorized_keys)"',
        'echo "rdk-test: shadow: $(grep ^root: /etc/shadow | cut -d: -f1-2)"',
        'echo "rdk-test: modules: $(cut -d" " -f1 /proc/modules | sort | tr "\\n" " ")"',
        'httpd -p 8080 -h /srv/www && echo "rdk-test: httpd listening on 8080"',
        '',
      ].join('\n'),
      {mode: 0o755},
    )
    tree.addFile('/usr/lib/rdk/agent.mjs', '// stand-in\n')
    tree.addFile('/usr/bin/node', '#!/bin/sh\necho "fake-agent: $* env: $(env | cut -d= -f1 | sort | tr "\\n" " ")"\nexit 3\n', {mode: 0o755})
    const image = await pack(tree, 'busybox')

    const hash = '$6$rdktest$abcdefghijklmnopqrstuv' // a crypt(3)-style hash; only stored, never checked
    const vm = await startVm({
      kernel: kernel.vmlinuz,
      initrd: image.path,
      append: [
        `BOOTIF=${BOOTIF}`,
        'rdk.hostname=rdk-test',
        'rdk.agent-restart=1',
        'sshkey="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRDKtestkey rdk@test"',
        `rootpwd="${Buffer.from(hash).toString('base64')}"`,
      ].join(' '),
      memoryMiB: 128,
      cacheDir: CACHE,
      mac: MAC,
      // Unrestricted, so slirp's DHCP hands out a router and DNS (restrict=on leaves both out) and
      // the udhcpc script's route/resolv.conf handling is exercised. This guest sends nothing out.
      portForwards: [{guestPort: 8080}],
    })
    vms.push(vm)
    const marks: Record<string, number> = {}
    marks.init = await mark(vm, /rdk-init: started: kernel \S+, bios boot/, 60_000)
    marks.drivers = await mark(vm, /rdk-init: drivers: \d+ modules loaded/, 30_000)
    marks.dhcp = await mark(vm, /rdk-init: network: eth0 10\.0\.2\.15\/24 via 10\.0\.2\.2 dns 10\.0\.2\.3/, 30_000)
    const res = await vm.waitForHttp(8080, '/index.html', 30_000)
    marks.http = res.ms
    expect(res.status).toBe(200)
    expect(res.body).toBe('rdk boot test: hello from the guest\n')
    // The supervisor restarts the agent after it exits, counting the exits.
    await vm.waitForSerial(/rdk-init: agent: starting \(\/usr\/bin\/node \/usr\/lib\/rdk\/agent\.mjs, run 2\)/, 30_000)

    const log = vm.serialLog()
    expect(log).toMatch(/rdk-init: network: DHCP on eth0 \(BOOTIF 52:54:00:12:34:56\)/)
    expect(log).toMatch(/rdk-init: hardware: NICs: eth0; disks: none/)
    // Nothing names virtio_net: busybox modprobe found it through modules.alias (virtio:d00000001v*).
    expect(log).toMatch(/rdk-test: modules: .*\bvirtio_net\b/)
    expect(log).toMatch(/rdk-test: resolv: nameserver 10\.0\.2\.3/)
    expect(log).toMatch(/rdk-test: route: default via 10\.0\.2\.2 dev eth0 +metric 10\d/)
    expect(log).toMatch(/rdk-test: hostname: rdk-test/)
    expect(log).toContain('rdk-test: key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRDKtestkey rdk@test')
    expect(log).toContain(`rdk-test: shadow: root:${hash}`)
    expect(log).toMatch(/rdk-init: login: a key or password is set but the image has no SSH server/)
    expect(log).toMatch(/rdk-init: hook: 50-test/)
    expect(log).toMatch(/rdk-init: agent: exited with status 3 \(exit 1 since boot\); restarting in 1 s/)
    // The agent gets a clean environment (the kernel hands unknown parameters like BOOTIF to PID 1's).
    const env = /fake-agent: \/usr\/lib\/rdk\/agent\.mjs env: (.*)/.exec(log)?.[1]?.trim().split(/\s+/)
    expect(env).toEqual(expect.arrayContaining(['HOME', 'LANG', 'PATH', 'TERM']))
    expect(env).not.toContain('BOOTIF')
    console.log(
      `busybox initramfs ${(image.raw / 1e6).toFixed(1)} MB raw, ${(image.size / 1e6).toFixed(1)} MB gz, packed in ${image.ms} ms; qemu start → ${timeline(vm, marks)}\n${formatCommand(vm.argv)}`,
    )
  }, 150_000)

  it('UEFI (OVMF): /init sees a UEFI boot and mounts efivarfs', async () => {
    const tree = await baseTree()
    tree.addFile(
      '/etc/rdk/init.d/50-test',
      '#!/bin/sh\necho "rdk-test: efivars: $(grep -c efivarfs /proc/mounts) $(ls /sys/firmware/efi/efivars | grep -c .)"\n',
      {mode: 0o755},
    )
    const image = await pack(tree, 'uefi')
    const vm = await startVm({kernel: kernel.vmlinuz, initrd: image.path, memoryMiB: 256, uefi: true, mac: MAC, restrictNetwork: true, portForwards: []})
    vms.push(vm)
    const marks: Record<string, number> = {}
    marks.init = await mark(vm, /rdk-init: started: kernel \S+, uefi boot/, 90_000)
    marks.dhcp = await mark(vm, /rdk-init: network: eth0 10\.0\.2\.15\/24/, 30_000)
    const m = await vm.waitForSerial(/rdk-test: efivars: (\d+) (\d+)/, 30_000)
    expect(m[1]).toBe('1')
    expect(Number(m[2])).toBeGreaterThan(0)
    expect(vm.argv).toContain('-bios')
    console.log(`UEFI: qemu start → ${timeline(vm, marks)}`)
  }, 150_000)

  it('node + agent: GET /v1/status answers the agent through the forwarded port', async () => {
    const token = randomBytes(32).toString('base64url') // 43 characters
    const tree = await baseTree()
    const node = await addNodeRuntime(tree, {cacheDir: CACHE})
    await addAgentBundle(tree, AGENT_BUNDLE)
    // Baked settings: the agent reads them from /etc/rdk/agent.json (the kernel command line wins).
    await element(tree, 'tiny-agent', {'ipa-disk-wait-attempts': '1', 'ipa-disk-wait-delay': '0'})
    const image = await pack(tree, 'agent', process.env.RDK_TEST_GZIP_AGENT === '1')
    const disk = join(work, 'disk0.img')

    const vm = await startVm({
      kernel: kernel.vmlinuz,
      initrd: image.path,
      append: `BOOTIF=${BOOTIF} ipa-standalone=1 ipa-listen-port=9999 ipa-agent-token=${token}`,
      memoryMiB: 512,
      cacheDir: CACHE,
      mac: MAC,
      restrictNetwork: true,
      disks: [{path: disk, size: '64M'}],
    })
    vms.push(vm)
    const marks: Record<string, number> = {}
    marks.init = await mark(vm, /rdk-init: started/, 90_000)
    marks.dhcp = await mark(vm, /rdk-init: network: eth0 10\.0\.2\.15\/24/, 30_000)
    marks.agentStart = await mark(vm, /rdk-init: agent: starting/, 30_000)
    const res = await vm.waitForHttp(9999, '/v1/status', 90_000)
    marks.http = res.ms
    expect(res.status).toBe(200)
    const body = JSON.parse(res.body) as {version: string; started_at: number}
    expect(typeof body.version).toBe('string')
    expect(body.version.length).toBeGreaterThan(0)
    expect(vm.serialLog()).toMatch(/rdk-init: hardware: NICs: eth0; disks: vda/)
    // The agent's own log lines reach the console through /init's supervisor (tee).
    expect(vm.serialLog()).toMatch(/agent API listening/)

    // POSTing a command needs the token from the kernel command line: the agent read /proc/cmdline.
    const url = `http://127.0.0.1:${vm.hostPort(9999)}/v1/commands/`
    const post = (t: string) =>
      fetch(`${url}?agent_token=${t}`, {
        method: 'POST',
        headers: {'content-type': 'application/json'},
        body: JSON.stringify({name: 'rdk_test.no_such_command', params: {}}),
      })
    expect((await post('x'.repeat(43))).status).toBe(401)
    const known = await post(token)
    expect(known.status).not.toBe(401)
    expect(await known.text()).toMatch(/rdk_test/)
    console.log(
      `agent initramfs ${(image.raw / 1e6).toFixed(1)} MB raw, ${(image.size / 1e6).toFixed(1)} MB packed in ${image.ms} ms (node ${node.version}, ${(node.size / 1e6).toFixed(1)} MB stripped); ` +
        `qemu start → ${timeline(vm, marks)}\n${formatCommand(vm.argv)}`,
    )
  }, 240_000)
})

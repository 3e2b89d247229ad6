/**
 * The in-VM Ironic lab: a REAL Ironic 21.4 (and optionally a REAL ironic-inspector 11.1), or a REAL
 * Ironic 29 with its built-in inspection (`ironic: '29'`, docs/ironic.md), on the host's loopback
 * driving our tiny ramdisk booted in qemu (TCG) with virtual disks.
 *
 *   const lab = await startLab({dir, inspector: true})          // builds the tiny image (shared cache)
 *   const node = await lab.ironic.createNode({properties: {root_device: {serial: 'rdk-disk0'}}})
 *   await lab.ironic.createPort(node.uuid, mac)
 *   const disks = [{path: join(dir, 'd0.img'), size: '2G', bus: 'virtio'}, {path: join(dir, 'd1.img'), size: '2G', bus: 'nvme'}]
 *   await lab.runPhase(node.uuid, {target: 'provide', until: ['available'], boot: {mac, disks}})
 *   await lab.stop()
 *
 * Networking: the guest reaches the host's 127.0.0.1 as 10.0.2.2 (qemu user networking), so every
 * URL the agent gets says 10.0.2.2 (lab.guestUrl). Ironic HEADs those image URLs itself, and no host
 * process may send traffic to 10.0.2.2: Ironic (and inspector) run with http_proxy = lab.proxy
 * (test/helpers/proxy.ts), which maps 10.0.2.2:P to 127.0.0.1:P and refuses everything else.
 * Ironic reaches the agent through the 127.0.0.1 port forward the agent advertises
 * (ipa-advertise-host=127.0.0.1 ipa-advertise-port=<hostfwd port>).
 *
 * Power: fake. Nothing boots the VM but the test: runPhase() boots the ramdisk when Ironic waits for
 * an agent ('inspect wait', 'clean wait', 'wait call-back', 'rescue wait', …) and stops the VM when
 * the node leaves the phase (reaches `until` or a fail state), as a real node reboots between phases.
 * A VM that powers itself off or reboots (the agent's standby.power_off at the end of a deploy) is
 * not restarted within the phase; a VM that dies otherwise fails the phase.
 * An inspection boot (agent state 'inspect wait') also gets ipa-inspection-callback-url.
 *
 * Images: lab.images is a loopback image server (test/helpers/image.ts); lab.serve(path, file)
 * publishes a file and returns its guest URL. Use image_source = that URL with image_os_hash_algo /
 * image_os_hash_value.
 *
 * Failures: runPhase errors carry the VM's serial tail and Ironic's (and inspector's) log tails;
 * lab.diagnostics() gives the same text for your own assertions.
 */
import {readFile} from 'node:fs/promises'
import {mkdirSync} from 'node:fs'
import path from 'node:path'
import {startVm, type DiskSpec, type Vm} from '../../src/boot/qemu.js'
import {buildTiny} from './artefacts.js'
import {startImageServer, type ImageServer} from './image.js'
import {startInspector, type Inspector} from './inspector.js'
import {freePort, mergeConfig, startIronic, type Config, type Ironic, type IronicRelease} from './ironic.js'
import {GUEST_HOST, startGuestProxy, type GuestProxy} from './proxy.js'
import {sleep} from './http.js'

/** The built ramdisk the lab boots. */
export interface LabBuild {
  kernel: string
  initramfs: string
  /** The manifest's kernel command line (e.g. root=/dev/ram0): always first on the VM's command line. */
  kernelCmdline: string
  manifest: Record<string, unknown>
}

export interface LabOptions {
  /** A fresh directory owned by the test: Ironic, inspector, build output, VM logs go under it. */
  dir: string
  /** Also run ironic-inspector and make `inspector` the nodes' default inspect interface (21.4 only). */
  inspector?: boolean
  /** Which real Ironic (default '21.4'). '29' inspects with Ironic's built-in inspection: an
   * 'inspect wait' boot gets ipa-inspection-callback-url=<ironic>/v1/continue_inspection. */
  ironic?: IronicRelease
  /** Merged last into ironic.conf (section -> key -> value). The lab sets [deploy]
   * erase_devices_priority = 0 and erase_devices_metadata_priority = 10 (metadata-only cleaning). */
  ironicConfig?: Config
  /** Merged last into inspector.conf. */
  inspectorConfig?: Config
  /** [api] ramdisk_heartbeat_timeout. Default 30. */
  heartbeatTimeout?: number
  /** A ramdisk built already (e.g. shared between labs); default: buildTiny into <dir>/build. */
  build?: LabBuild
  /** Extra `--kernel-arg`s baked into the default build. */
  buildKernelArgs?: string[]
  /** Extra elements (`--element`) for the default build, e.g. ['burnin']. */
  buildElements?: string[]
}

export interface BootOptions {
  /** The NIC's MAC (the node's port must carry it). */
  mac: string
  disks: DiskSpec[]
  /** Boot with OVMF (UEFI) instead of SeaBIOS/PVH. */
  uefi?: boolean
  /** Extra kernel command-line words, after the lab's. */
  extraArgs?: string[]
  /** Pass ipa-inspection-callback-url (runPhase sets it for an 'inspect wait' boot). */
  inspection?: boolean
  /** Default 1024. */
  memoryMiB?: number
  /** Extra qemu arguments. */
  qemuArgs?: string[]
}

export interface LabVm {
  vm: Vm
  /** The 127.0.0.1 port forwarded to the agent's 9999 (what the agent advertises). */
  agentPort: number
  /** The whole kernel command line given (without console=ttyS0). */
  append: string
  serialLogFile: string
  serialTail(chars?: number): string
  stop(): Promise<void>
}

export interface PhaseOptions {
  /** PUT /states/provision target ('inspect', 'provide', 'active', 'deleted', 'rescue', …); omit to only watch. */
  target?: string
  /** Extra body fields for the provision request (configdrive, clean_steps, …). */
  extra?: Record<string, unknown>
  /** Provision states that end the phase successfully. */
  until: string[]
  /** How the VM boots when Ironic waits for an agent. */
  boot: BootOptions
  /** States in which Ironic waits for an agent (the VM is booted on the first). */
  agentStates?: string[]
  /** States that end the phase with an error. Default: the *failed states and 'error'. */
  failStates?: string[]
  /** Default 600 s. */
  timeoutMs?: number
}

export interface PhaseResult {
  node: any
  /** Provision states seen, in order (deduplicated runs). */
  states: string[]
  /** The VM's serial log of this phase (empty if no VM was needed). */
  serial: string
  /** Boots done during the phase. */
  boots: number
}

export interface Lab {
  dir: string
  ironic: Ironic
  inspector?: Inspector
  proxy: GuestProxy
  images: ImageServer
  build: LabBuild
  /** http://10.0.2.2:<image server port><urlPath>: a URL for the GUEST (and for Ironic via the proxy). */
  guestUrl(urlPath: string): string
  /** Serve `file` at urlPath on the image server; returns its guest URL. */
  serve(urlPath: string, file: string): string
  /** Boot the ramdisk for a node (you stop it). Usually runPhase does this for you. */
  bootNode(opts: BootOptions): Promise<LabVm>
  /** Run one provisioning phase with a VM booted while Ironic waits for an agent; see PhaseOptions. */
  runPhase(uuid: string, opts: PhaseOptions): Promise<PhaseResult>
  /** Ironic (and inspector) log tails, for error messages. */
  diagnostics(lines?: number): Promise<string>
  stop(): Promise<void>
}

export const DEFAULT_AGENT_STATES = ['inspect wait', 'clean wait', 'wait call-back', 'rescue wait', 'service wait']
export const DEFAULT_FAIL_STATES = ['clean failed', 'deploy failed', 'inspect failed', 'rescue failed', 'service failed', 'error']

/** Build the tiny ramdisk (rdk build, shared package cache) into `out`. */
export async function buildLabImage(out: string, kernelArgs: string[] = [], elements: string[] = []): Promise<LabBuild> {
  const r = await buildTiny(out, ['kernel', 'initramfs'], kernelArgs, {}, {elements})
  const find = (suffix: string) => {
    const a = r.artefacts.find((x) => x.path.endsWith(suffix))
    if (!a) throw new Error(`rdk build produced no *${suffix}: ${JSON.stringify(r.artefacts.map((x) => x.path))}`)
    return a.path
  }
  const manifestPath = find('.manifest.json')
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as Record<string, unknown>
  const kernelCmdline = typeof manifest.kernelCmdline === 'string' ? manifest.kernelCmdline : ''
  return {kernel: find('.kernel'), initramfs: find('.initramfs'), kernelCmdline, manifest}
}

export async function startLab(opts: LabOptions): Promise<Lab> {
  const dir = path.resolve(opts.dir)
  mkdirSync(dir, {recursive: true})
  const cleanups: (() => Promise<void>)[] = []
  const stopAll = async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined)
    cleanups.length = 0
  }
  try {
    if (opts.ironic === '29' && opts.inspector) throw new Error('startLab: ironic-inspector is for Ironic 21.4; Ironic 29 inspects by itself')
    const build = opts.build ?? (await buildLabImage(path.join(dir, 'build'), opts.buildKernelArgs, opts.buildElements))
    const proxy = await startGuestProxy()
    cleanups.push(() => proxy.close())
    const images = await startImageServer()
    cleanups.push(() => images.close())
    const inspectorPort = opts.inspector ? await freePort() : undefined
    const ironic = await startIronic({
      dir: path.join(dir, 'ironic'),
      ironic: opts.ironic,
      heartbeatTimeout: opts.heartbeatTimeout ?? 30,
      // Anything Ironic derives from http_url must be reachable by the guest.
      httpUrl: `http://${GUEST_HOST}:${images.port}`,
      env: proxy.env(),
      inspector: inspectorPort ? {url: `http://127.0.0.1:${inspectorPort}`, callbackUrl: `http://${GUEST_HOST}:${inspectorPort}`} : undefined,
      // Cleaning erases metadata only (IPA's erase_devices_metadata: signatures, partition tables):
      // a full erase_devices of every virtual disk would take minutes under TCG.
      extraConfig: mergeConfig({deploy: {erase_devices_priority: '0', erase_devices_metadata_priority: '10'}}, opts.ironicConfig),
    })
    cleanups.push(() => ironic.stop())
    let inspector: Inspector | undefined
    if (inspectorPort) {
      inspector = await startInspector({
        dir: path.join(dir, 'inspector'),
        ironicUrl: ironic.url,
        port: inspectorPort,
        env: proxy.env(),
        extraConfig: opts.inspectorConfig,
      })
      cleanups.push(() => inspector!.stop())
    }
    const vmDir = path.join(dir, 'vm')
    mkdirSync(vmDir, {recursive: true})
    const running = new Set<LabVm>()
    cleanups.push(async () => {
      for (const v of running) await v.stop()
    })
    let bootCount = 0

    const guestUrl = (urlPath: string) => `http://${GUEST_HOST}:${images.port}${urlPath.startsWith('/') ? '' : '/'}${urlPath}`

    const diagnostics = async (lines = 40) => {
      let out = `--- ironic (${ironic.logFile}) ---\n${await ironic.logTail(lines)}\n`
      if (inspector) out += `--- inspector (${inspector.logFile}) ---\n${await inspector.logTail(lines)}\n`
      return out
    }

    const bootNode = async (b: BootOptions): Promise<LabVm> => {
      const agentPort = await freePort()
      const words = [
        build.kernelCmdline,
        `ipa-api-url=http://${GUEST_HOST}:${ironic.port}`,
        b.inspection && inspector ? `ipa-inspection-callback-url=http://${GUEST_HOST}:${inspector.port}/v1/continue` : '',
        b.inspection && !inspector && ironic.release === '29' ? `ipa-inspection-callback-url=http://${GUEST_HOST}:${ironic.port}/v1/continue_inspection` : '',
        'ipa-advertise-host=127.0.0.1',
        `ipa-advertise-port=${agentPort}`,
        `BOOTIF=01-${b.mac.toLowerCase().replace(/:/g, '-')}`,
        ...(b.extraArgs ?? []),
      ].filter(Boolean)
      const append = words.join(' ')
      const serialLogFile = path.join(vmDir, `serial-${++bootCount}.log`)
      const vm = await startVm({
        kernel: build.kernel,
        initrd: build.initramfs,
        append,
        memoryMiB: b.memoryMiB ?? 1024,
        cpus: 1,
        mac: b.mac,
        disks: b.disks,
        uefi: b.uefi,
        portForwards: [{guestPort: 9999, hostPort: agentPort}],
        serialLogFile,
        extraArgs: b.qemuArgs,
      })
      const lv: LabVm = {
        vm,
        agentPort,
        append,
        serialLogFile,
        serialTail: (chars = 6000) => vm.serialLog().slice(-chars),
        stop: async () => {
          running.delete(lv)
          await vm.stop()
        },
      }
      running.add(lv)
      return lv
    }

    const runPhase = async (uuid: string, p: PhaseOptions): Promise<PhaseResult> => {
      const agentStates = p.agentStates ?? DEFAULT_AGENT_STATES
      const failStates = p.failStates ?? DEFAULT_FAIL_STATES
      const timeoutMs = p.timeoutMs ?? 600_000
      const states: string[] = []
      let vm: LabVm | undefined
      let serial = ''
      let boots = 0
      let vmDown = false
      const fail = async (why: string, node: any): Promise<never> => {
        const tail = vm?.serialTail() ?? serial.slice(-6000)
        throw new Error(
          `node ${uuid}: phase ${p.target ?? '(watch)'} → ${p.until.join('/')}: ${why}; states seen: ${states.join(' → ')}; ` +
            `provision_state=${JSON.stringify(node?.provision_state)} target=${JSON.stringify(node?.target_provision_state)} ` +
            `power=${JSON.stringify(node?.power_state)} last_error=${JSON.stringify(node?.last_error)}\n` +
            `--- VM serial (${vm?.serialLogFile ?? 'no VM'}; last lines) ---\n${tail}\n${await diagnostics(60)}`,
        )
      }
      try {
        if (p.target) await ironic.setProvisionState(uuid, p.target, p.extra ?? {})
        const deadline = Date.now() + timeoutMs
        for (;;) {
          const node = await ironic.getNode(uuid)
          const st: string = node.provision_state
          if (states[states.length - 1] !== st) states.push(st)
          // A stable state has no target; right after the request the old state may still show.
          if (p.until.includes(st) && !node.target_provision_state) {
            return {node, states, serial: vm?.vm.serialLog() ?? serial, boots}
          }
          if (failStates.includes(st)) await fail(`reached fail state "${st}"`, node)
          if (Date.now() > deadline) await fail(`timed out after ${timeoutMs} ms`, node)
          if (!vm && agentStates.includes(st)) {
            vm = await bootNode({...p.boot, inspection: p.boot.inspection ?? st === 'inspect wait'})
            boots++
          } else if (vm && !vmDown) {
            const exit = await Promise.race([vm.vm.exited, sleep(0).then(() => undefined)])
            if (exit) {
              // The agent powers the machine off at the end of a deploy (standby.power_off) or
              // reboots it (qemu runs with -no-reboot): fine. Anything else is a crash.
              if (/reboot: (Power down|Restarting system)/.test(vm.vm.serialLog())) vmDown = true
              else await fail(`the VM exited (code ${exit.code}, signal ${exit.signal}) while the node was "${st}"`, node)
            }
          }
          await sleep(1000)
        }
      } finally {
        if (vm) {
          serial = vm.vm.serialLog()
          await vm.stop()
        }
      }
    }

    return {
      dir,
      ironic,
      inspector,
      proxy,
      images,
      build,
      guestUrl,
      serve(urlPath, file) {
        const p = urlPath.startsWith('/') ? urlPath : `/${urlPath}`
        images.files.set(p, file)
        return guestUrl(p)
      },
      bootNode,
      runPhase,
      diagnostics,
      stop: stopAll,
    }
  } catch (err) {
    await stopAll()
    throw err
  }
}

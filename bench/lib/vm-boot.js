// One benchmark boot: start qemu (dist/boot/qemu.js) with the image, wait for the first heartbeat
// at the Ironic stub, note when /init's milestones show on the serial console and (optionally) when
// the agent's API answers /v1/status through the forwarded port, then stop the VM at once.
//
// A boot fails fast when the serial console shows the kernel giving up (panic, OOM killer,
// "Initramfs unpacking failed": too little RAM for the initramfs) or qemu exits; otherwise after
// `timeoutMs`.
import {randomBytes} from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import {rm} from 'node:fs/promises'
import {join} from 'node:path'
import {AGENT_PORT, freeLoopbackPort, startVm} from '../../dist/boot/qemu.js'

/** What ends a boot early, most specific first. */
const FAILURES = [
  {re: /Initramfs unpacking failed[^\r\n]*(?=\r?\n)/, what: 'initramfs unpacking failed'},
  {re: /Out of memory[^\r\n]*(?=\r?\n)/, what: 'out of memory'},
  {re: /Kernel panic[^\r\n]*(?=\r?\n)/, what: 'kernel panic'},
]

let seq = 0

export function randomMac() {
  return ['52', '54', '00', ...[...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0'))].join(':')
}

/** GET /v1/status over https (auto-TLS, self-signed) or http; resolves with the status code or rejects. */
function getStatus(port, timeoutMs) {
  const attempt = (mod, extra) =>
    new Promise((resolve, reject) => {
      const req = mod.get({host: '127.0.0.1', port, path: '/v1/status', agent: false, timeout: timeoutMs, ...extra}, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode))
        res.on('error', reject)
      })
      req.on('timeout', () => req.destroy(new Error('timeout')))
      req.on('error', reject)
    })
  // The agent serves https once Ironic's API is ≥ 1.68 (auto-TLS); a plain-http agent makes the
  // TLS handshake fail with a protocol error, and then http is tried.
  return attempt(https, {rejectUnauthorized: false}).catch((err) => {
    if (/EPROTO|wrong version number|WRONG_VERSION_NUMBER|packet length too long/i.test(`${err.code} ${err.message}`)) return attempt(http, {})
    throw err
  })
}

/** Poll /v1/status until it answers (ms since qemu started) or `signal` aborts (undefined). */
async function pollStatus(vm, port, signal) {
  while (!signal.aborted) {
    try {
      const status = await getStatus(port, 3000)
      return {ms: Date.now() - vm.startedAt, status}
    } catch {
      // slirp accepts the connection and drops it while nothing listens in the guest
    }
    await new Promise((r) => setTimeout(r, 200))
  }
  return undefined
}

/**
 * Boot `initrd` on `kernel` with `memoryMiB`; `kind` 'agent' (the rdk image: lookup + heartbeat) or
 * 'busybox' (the baseline: a wget to the stub). Returns {ok, memoryMiB, heartbeatMs, statusMs,
 * marks, failure, serialTail, argv}.
 */
export async function benchBoot({
  kind,
  kernel,
  initrd,
  memoryMiB,
  stub,
  workDir,
  cacheDir,
  timeoutMs = 120_000,
  probeStatus = false,
  marks = {},
  bootArgs = '',
}) {
  const mac = randomMac()
  const node = stub.addNode({mac, memoryMiB, baseline: kind === 'busybox'})
  const disk = join(workDir, `disk-${process.pid}-${++seq}.img`)
  const hostPort = await freeLoopbackPort()
  const bootif = `BOOTIF=01-${mac.replace(/:/g, '-')}`
  // bootArgs: the command line the image's boot artefacts carry (manifest kernelCmdline), given to
  // both images so that they unpack into the same kind of root filesystem.
  const append = [
    bootArgs,
    kind === 'agent'
      ? `${bootif} ipa-api-url=${stub.guestUrl} ipa-advertise-host=127.0.0.1 ipa-advertise-port=${hostPort} ipa-insecure=1`
      : `${bootif} rdk.bench-url=${stub.guestUrl}/v1/heartbeat/${node.uuid}`,
  ]
    .filter(Boolean)
    .join(' ')
  const result = {
    kind,
    memoryMiB,
    ok: false,
    heartbeatMs: undefined,
    lookupMs: undefined,
    statusMs: undefined,
    marks: {},
    failure: undefined,
    serialTail: '',
    argv: [],
  }
  const stop = new AbortController()
  let vm
  try {
    vm = await startVm({
      kernel,
      initrd,
      append,
      memoryMiB,
      mac,
      cacheDir,
      // Same machine for both images: one 5 GiB sparse disk (the agent waits for a root device of at
      // least 4 GiB) and the agent port forwarded.
      disks: [{path: disk, size: '5G'}],
      portForwards: [{guestPort: AGENT_PORT, hostPort}],
    })
    result.argv = vm.argv
    for (const [name, re] of Object.entries(marks)) {
      vm.waitForSerial(re, timeoutMs).then(
        () => (result.marks[name] = Date.now() - vm.startedAt),
        () => undefined,
      )
    }
    const status = probeStatus ? pollStatus(vm, hostPort, stop.signal) : Promise.resolve(undefined)
    const failed = new Promise((resolve) => {
      for (const f of FAILURES) {
        vm.waitForSerial(f.re, timeoutMs + 5000).then(
          (m) => resolve(m[0].trim().toLowerCase().startsWith(f.what) ? m[0].trim() : `${f.what}: ${m[0].trim()}`),
          () => undefined,
        )
      }
      vm.exited.then((st) => resolve(`qemu exited (${st.code ?? st.signal})`))
    })
    const outcome = await Promise.race([stub.waitForHeartbeat(node, timeoutMs, stop.signal).then((at) => ({at})), failed.then((why) => ({why}))]).catch(
      (err) => ({why: err.message.startsWith('no heartbeat') ? `timeout: ${err.message}` : err.message}),
    )
    if (outcome.at !== undefined) {
      result.ok = true
      result.heartbeatMs = outcome.at - vm.startedAt
      if (node.lookups.length) result.lookupMs = node.lookups[0] - vm.startedAt
      result.callbackUrl = node.callbackUrl
      if (probeStatus) {
        // The API listens before the first heartbeat; give the poller a few seconds to see it.
        const t = setTimeout(() => stop.abort(), 15_000)
        const st = await status
        clearTimeout(t)
        if (st) {
          result.statusMs = st.ms
          result.statusCode = st.status
        }
      }
    } else {
      result.failure = outcome.why
    }
  } catch (err) {
    result.failure = `could not boot: ${err.message}`
  } finally {
    stop.abort()
    if (vm) {
      result.serialTail = vm.serialLog().split('\n').slice(-25).join('\n')
      await vm.stop()
    }
    stub.removeNode(node)
    await rm(disk, {force: true})
  }
  return result
}

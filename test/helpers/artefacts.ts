// Shared by the boot-artefact tests: building the tiny image with extra formats, a bare busybox
// initramfs that rdk did not build, and waiting for an agent's heartbeat in a real Ironic.
import {chmod, copyFile, mkdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {gzipSync} from 'node:zlib'
import {run, runBuffer} from '../../src/common/exec.js'
import type {Ironic} from './ironic.js'

export interface BuiltArtefact {
  kind: string
  file: string
  path: string
  size: number
  sha256: string
}

export interface BuildTinyOptions {
  /** Extra elements (--element), e.g. 'burnin'. */
  elements?: string[]
  /** Custom hardware-manager modules (--hardware-manager). */
  hardwareManagers?: string[]
}

/** `rdk build` (the CLI, as users run it) into `out`; the package cache is the shared default one. */
export async function buildTiny(
  out: string,
  formats: string[],
  kernelArgs: string[] = [],
  env: Record<string, string> = {},
  opts: BuildTinyOptions = {},
): Promise<{artefacts: BuiltArtefact[]; stages: {name: string; ms: number; note?: string}[]; durationMs: number}> {
  const args = ['bin/run.js', 'build', '--output', out, '--json', '--format', formats.join(',')]
  for (const k of kernelArgs) args.push('--kernel-arg', k)
  for (const e of opts.elements ?? []) args.push('--element', e)
  for (const m of opts.hardwareManagers ?? []) args.push('--hardware-manager', m)
  const r = await run(process.execPath, args, {timeoutMs: 900_000, env})
  return JSON.parse(r.stdout)
}

/**
 * A bare busybox initramfs (gzip newc cpio made by the `cpio` tool, not by rdk): /init mounts
 * /proc and /dev, prints a marker and the kernel command line on the serial console, powers off.
 */
export async function busyboxInitrd(dir: string): Promise<string> {
  const root = join(dir, 'busybox-root')
  await mkdir(join(root, 'bin'), {recursive: true})
  for (const d of ['proc', 'dev', 'sys']) await mkdir(join(root, d), {recursive: true})
  await copyFile('/bin/busybox', join(root, 'bin/busybox'))
  const init = [
    '#!/bin/busybox sh',
    '/bin/busybox mount -t proc proc /proc',
    '/bin/busybox mount -t devtmpfs devtmpfs /dev',
    'exec >/dev/ttyS0 2>&1',
    'echo "RDK-BUSYBOX-UP cmdline=[$(/bin/busybox cat /proc/cmdline)]"',
    '/bin/busybox poweroff -f',
    '',
  ].join('\n')
  await writeFile(join(root, 'init'), init)
  await chmod(join(root, 'init'), 0o755)
  const names = `${['.', 'bin', 'bin/busybox', 'dev', 'init', 'proc', 'sys'].join('\n')}\n`
  const cpio = await runBuffer('cpio', ['--quiet', '-o', '-H', 'newc', '-R', '0:0'], {input: names, cwd: root})
  const out = join(dir, 'busybox.initramfs')
  await writeFile(out, gzipSync(cpio.stdout))
  return out
}

/** Poll the node until the agent has looked up (agent_url) and heartbeated. */
export async function waitForHeartbeat(ironic: Ironic, uuid: string, timeoutMs: number): Promise<Record<string, any>> {
  const deadline = Date.now() + timeoutMs
  let dii: Record<string, any> = {}
  while (Date.now() < deadline) {
    dii = (await ironic.getNode(uuid)).driver_internal_info
    if (dii.agent_url && dii.agent_last_heartbeat) return dii
    await new Promise((r) => setTimeout(r, 1000))
  }
  return dii
}

export async function packageVersion(): Promise<string> {
  return JSON.parse(await readFile('package.json', 'utf8')).version
}

/** A file that passes rdk's kernel check (boot sector signature + "HdrS" header), for tests that do not boot. */
export function stubKernel(): Buffer {
  const k = Buffer.alloc(64 * 1024, 0x90)
  k.writeUInt16LE(0xaa55, 0x1fe)
  k.write('HdrS', 0x202, 'latin1')
  return k
}

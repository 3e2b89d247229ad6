/**
 * An iPXE script (`<name>.ipxe`) that boots the kernel + initramfs over HTTP and chains from an
 * existing iPXE setup (`chain http://server/path/<name>.ipxe`).
 *
 * URLs are the base URL given at build time plus the file names, or — without one — the bare file
 * names, which iPXE resolves against the script's own URL (so the three files can be served from
 * any one directory). `initrd=<file>` is on the kernel line because iPXE's EFI build needs it, and
 * `BOOTIF=01-${netX/mac:hexhyp}` names the NIC iPXE booted from, as pxelinux's IPAPPEND 2 does.
 */
import {writeFile} from 'node:fs/promises'
import {resolve} from 'node:path'
import {ArtefactError, atomicOutput, bootCmdline, kernelArgWords, renderTemplate, type KernelArgs} from './common.js'

export interface IpxeOptions {
  /** Base name: the script boots <name>.kernel and <name>.initramfs. */
  name: string
  /** http(s) URL of the directory serving the files; default: relative to the script. */
  baseUrl?: string
  kernelArgs?: KernelArgs
  /** Kernel and initramfs file names (default <name>.kernel, <name>.initramfs). */
  kernelFile?: string
  initrdFile?: string
}

/** Check a base URL: http or https, no characters iPXE would treat as settings or separators. */
export function checkBaseUrl(url: string): string {
  if (!/^https?:\/\/[^\s/$]+(\/[^\s$]*)?$/.test(url)) throw new ArtefactError(`iPXE base URL '${url}' must be an http:// or https:// URL without spaces or '$'`)
  return url.endsWith('/') ? url : `${url}/`
}

/** The script's text. */
export async function ipxeScript(opts: IpxeOptions): Promise<string> {
  if (!/^[A-Za-z0-9][\w.+-]{0,63}$/.test(opts.name)) throw new ArtefactError(`iPXE name '${opts.name}' must be letters, digits, '.', '_', '+', '-'`)
  const base = opts.baseUrl ? checkBaseUrl(opts.baseUrl) : ''
  const kernelFile = opts.kernelFile ?? `${opts.name}.kernel`
  const initrdFile = opts.initrdFile ?? `${opts.name}.initramfs`
  return renderTemplate('boot.ipxe.ejs', {
    title: opts.name,
    baseUrl: base,
    scriptName: `${opts.name}.ipxe`,
    kernelUrl: `${base}${kernelFile}`,
    initrdUrl: `${base}${initrdFile}`,
    initrdName: initrdFile,
    append: bootCmdline([], kernelArgWords(opts.kernelArgs)),
  })
}

/** Write the script to `output` atomically. */
export async function writeIpxeScript(output: string, opts: IpxeOptions): Promise<{path: string; text: string}> {
  const text = await ipxeScript(opts)
  const path = resolve(output)
  await atomicOutput(path, (tmp) => writeFile(tmp, text, {mode: 0o644}))
  return {path, text}
}

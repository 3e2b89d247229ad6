/**
 * Putting elements' declared content into the tree: directories, files (or whole directories),
 * EJS templates, symlinks and device nodes, element by element in resolved order (a later
 * element overrides an earlier one's path). Plus what the spec itself adds: root's
 * authorized_keys and the custom hardware managers.
 */
import {lstat, readdir, readFile, readlink, stat} from 'node:fs/promises'
import {join} from 'node:path'
import ejs from 'ejs'
import {ElementError} from './errors.js'
import type {Element} from './elements.js'
import {kernelCmdline, type BuildSpec} from './spec.js'
import {TreeError, type FileTree} from './tree.js'

/** Where the agent looks for custom hardware managers (its ipa-hardware-managers-dir default). */
export const HARDWARE_MANAGERS_DIR = '/usr/share/rdk/hardware-managers'

/** The spec as templates see it: host-only fields (output, cacheDir) left out. */
export function templateSpec(spec: BuildSpec): Omit<BuildSpec, 'output' | 'cacheDir'> {
  const {output: _o, cacheDir: _c, ...rest} = spec
  return rest
}

export interface TemplateContext {
  spec: ReturnType<typeof templateSpec>
  element: {name: string; dir: string; description: string}
  elements: string[]
  kernelCmdline: string
  authorizedKeys: string[]
}

export function renderTemplate(text: string, file: string, ctx: TemplateContext): string {
  try {
    return ejs.render(text, ctx as unknown as Record<string, unknown>, {filename: file, async: false})
  } catch (err) {
    throw new ElementError(`template ${file} of element '${ctx.element.name}': ${(err as Error).message.trim()}`)
  }
}

/**
 * A file, or a directory copied recursively. The named source itself is followed if it is a
 * symlink; symlinks inside a copied directory stay symlinks. Sockets and FIFOs are skipped.
 */
async function addHostPath(tree: FileTree, imagePath: string, host: string, mode: number | undefined, owner: string | undefined, top = true): Promise<number> {
  const st = top ? await stat(host) : await lstat(host)
  if (st.isSymbolicLink()) {
    tree.addSymlink(imagePath, await readlink(host), {owner})
    return 1
  }
  if (st.isDirectory()) {
    tree.addDir(imagePath, mode ?? st.mode & 0o7777, {owner})
    let n = 1
    for (const name of (await readdir(host)).sort()) n += await addHostPath(tree, `${imagePath}/${name}`, join(host, name), undefined, owner, false)
    return n
  }
  if (!st.isFile()) return 0
  await tree.addFileFromHost(imagePath, host, {mode, owner})
  return 1
}

/** Add one element's declared content to the tree (source label = element name). */
export async function assembleElement(tree: FileTree, el: Element, spec: BuildSpec, elementNames: string[]): Promise<number> {
  const m = el.manifest
  let n = 0
  await tree.withSource(el.name, async () => {
    const wrap = async (what: string, fn: () => unknown) => {
      try {
        await fn()
      } catch (err) {
        if (err instanceof TreeError) throw new ElementError(`element '${el.name}': ${what}: ${err.message}`)
        throw err
      }
    }
    for (const d of m.dirs) await wrap(`dirs ${d.path}`, () => tree.addDir(d.path, d.mode, {owner: d.owner}))
    n += m.dirs.length
    for (const f of m.files) await wrap(`files ${f.path}`, async () => (n += await addHostPath(tree, f.path, f.source, f.mode, f.owner)))
    if (m.templates.length) {
      const ctx: TemplateContext = {
        spec: templateSpec(spec),
        element: {name: el.name, dir: el.dir, description: m.description},
        elements: elementNames,
        kernelCmdline: kernelCmdline(spec.kernelArgs),
        authorizedKeys: spec.authorizedKeys,
      }
      for (const t of m.templates) {
        const text = renderTemplate(await readFile(t.template, 'utf8'), t.template, ctx)
        await wrap(`templates ${t.path}`, () => tree.addFile(t.path, text, {mode: t.mode, owner: t.owner}))
        n++
      }
    }
    for (const s of m.symlinks) await wrap(`symlinks ${s.path}`, () => tree.addSymlink(s.path, s.target))
    for (const d of m.devices) await wrap(`devices ${d.path}`, () => tree.addDevice(d.path, d.kind, d.major, d.minor, d.mode))
    n += m.symlinks.length + m.devices.length
  })
  return n
}

/** What the spec adds by itself: /root/.ssh/authorized_keys and hardware-manager modules. */
export async function assembleFromSpec(tree: FileTree, spec: BuildSpec): Promise<number> {
  let n = 0
  await tree.withSource('spec', async () => {
    if (spec.authorizedKeys.length) {
      tree.addDir('/root', 0o700)
      tree.addDir('/root/.ssh', 0o700)
      tree.addFile('/root/.ssh/authorized_keys', `${spec.authorizedKeys.join('\n')}\n`, {mode: 0o600})
      n++
    }
    for (const p of spec.hardwareManagers) {
      const st = await stat(p)
      const files = st.isDirectory()
        ? (await readdir(p))
            .filter((f) => /\.m?js$/.test(f))
            .sort()
            .map((f) => join(p, f))
        : [p]
      for (const f of files) {
        const name = f.slice(f.lastIndexOf('/') + 1)
        if (tree.has(`${HARDWARE_MANAGERS_DIR}/${name}`) && tree.get(`${HARDWARE_MANAGERS_DIR}/${name}`)!.source === 'spec') {
          throw new ElementError(`hardwareManagers: two modules are named ${name}; the agent loads them from one directory`)
        }
        await tree.addFileFromHost(`${HARDWARE_MANAGERS_DIR}/${name}`, f, {mode: 0o644})
        n++
      }
    }
  })
  return n
}

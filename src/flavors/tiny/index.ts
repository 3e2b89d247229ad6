/**
 * The tiny flavor: a busybox ramdisk with the agent, its tools and a kernel, no systemd.
 *
 * `tiny.stages` at the bottom is the whole build, in order — the one list to read. The shared
 * stages come from src/builder/stages.ts; the three of its own are here: Debian packages (the
 * deploy toolset + whatever elements ask for), the Debian kernel with the deploy ramdisk's
 * modules, and Node + the agent bundle. No chroot, no root-only tricks.
 */
import type {FlavorDefinition, Stage} from '../../builder/stage.js'
import {
  assembleTreeStage,
  bundleStage,
  ipxeStage,
  isoStage,
  packInitramfsStage,
  pxeStage,
  resolveElementsStage,
  rootHooksStage,
  runHooksStage,
  writeArtefactsStage,
  writeKernelStage,
} from '../../builder/stages.js'
import {extractDeb} from '../../debian/extract.js'
import {installKernelModules, moduleList, prepareKernel} from '../../debian/kernel.js'
import {fetchPackages, resolvePackages} from '../../debian/packages.js'
import {buildToolset, DEPLOY_TOOLSET, PRUNED_DEPENDENCIES} from '../../debian/toolset.js'
import type {ExtractEntryInfo} from '../../debian/extract.js'
import {isElf, parseElf} from '../../debian/elf.js'
import {baseOf, FileTree, type TreeEntry} from '../../builder/tree.js'
import {addAgentBundle, addNodeRuntime} from './node.js'

/** Shared libraries (and their symlinks) of a dependency package: lib*.so* anywhere under usr/lib. */
function isSharedLibrary(e: ExtractEntryInfo): boolean {
  return /^\/?usr\/lib\/(?:[^/]+\/)*lib[^/]*\.so(?:\.[0-9.]+)?$/.test(e.path)
}

const fetchPackagesStage: Stage = {
  name: 'fetch-packages',
  description: 'fetch and verify the deploy toolset and the packages elements ask for; add their files with the shared-library closure',
  async run(ctx) {
    const cacheDir = ctx.spec.cacheDir
    const report = await ctx.tree.withSource('toolset', () => buildToolset(ctx.tree, {cacheDir, compress: false}))
    ctx.layers.set('toolset', 'toolset')
    for (const p of report.packages) {
      ctx.packages.push({name: p.name, version: p.version, arch: p.arch, element: 'toolset'})
      ctx.layers.set(p.name, 'toolset')
    }
    const inToolset = new Set(DEPLOY_TOOLSET.map((t) => t.package))
    const extra = ctx.packageRequests().filter((r) => !inToolset.has(r.name))
    let deps = 0
    if (extra.length) {
      // What elements ask for is installed whole. Of its dependencies (minus maintainer-script
      // machinery) only the shared libraries that its programs load, directly or through each
      // other, and that the image does not have yet (from the toolset or Node) are added.
      const resolved = await resolvePackages(
        extra.map((r) => r.name),
        {exclude: PRUNED_DEPENDENCIES},
      )
      const paths = await fetchPackages(resolved, cacheDir)
      const asked = new Map(extra.map((r) => [r.name, r.element]))
      const needed = new Set<string>()
      const collect = async (tree: FileTree, entries: readonly TreeEntry[]) => {
        for (const e of entries) {
          if (e.type !== 'file' || e.size < 64) continue
          const head = await tree.read(e.path)
          if (isElf(head)) for (const n of parseElf(head, e.path).needed) needed.add(n)
        }
      }
      for (const [i, p] of resolved.entries()) {
        const element = asked.get(p.name)
        if (!element) continue
        await ctx.tree.withSource(element, () => extractDeb(paths[i]!, ctx.tree, {source: element}))
        await collect(
          ctx.tree,
          ctx.tree.entries().filter((e) => e.source === element),
        )
        ctx.packages.push({name: p.name, version: p.version, arch: p.arch, element})
      }
      // Until nothing new is needed: a library added may need another one from a package already
      // looked at (librados2's libceph-common, libicu72's libicudata).
      const stagedTrees = new Map<number, FileTree>()
      for (let added = true; added; ) {
        added = false
        for (const [i, p] of resolved.entries()) {
          if (asked.has(p.name)) continue
          let staged = stagedTrees.get(i)
          if (!staged) {
            staged = new FileTree(ctx.tree.blobs)
            await extractDeb(paths[i]!, staged, {source: `dependency:${p.name}`, filter: isSharedLibrary})
            stagedTrees.set(i, staged)
          }
          const libs = staged
            .entries()
            .filter((e) => e.type !== 'dir' && !ctx.tree.has(e.path) && [...needed].some((n) => baseOf(e.path) === n || baseOf(e.path).startsWith(`${n}.`)))
          if (!libs.length) continue
          for (const e of libs) ctx.tree.insert(e)
          await collect(
            ctx.tree,
            libs.filter((e) => e.type === 'file'),
          )
          added = true
          if (!ctx.packages.some((q) => q.name === p.name)) {
            ctx.packages.push({name: p.name, version: p.version, arch: p.arch, element: '(library)'})
            deps++
          }
        }
      }
    }
    return `${report.packages.length} toolset packages${extra.length ? ` + ${extra.length} from elements${deps ? ` (+ libraries from ${deps} of their dependencies)` : ''}` : ''}`
  },
}

const fetchKernelStage: Stage = {
  name: 'fetch-kernel',
  description: "Debian's kernel (linux-image-amd64) and the deploy ramdisk's modules with their dependency closure, depmod'ed",
  async run(ctx) {
    const kernel = await prepareKernel({cacheDir: ctx.spec.cacheDir, modules: moduleList(ctx.spec.kernelModules)})
    const installed = await ctx.tree.withSource('kernel-modules', () => installKernelModules(kernel, ctx.tree, {workDir: ctx.workDir, compress: false}))
    ctx.layers.set('kernel', 'modules')
    ctx.kernel = {path: kernel.vmlinuz, version: kernel.kernelVersion, source: kernel.package.filename}
    ctx.packages.push({name: kernel.package.name, version: kernel.package.version, arch: kernel.package.arch, element: 'kernel'})
    return `kernel ${kernel.kernelVersion}, ${kernel.modules.length} modules, ${installed.files.length} files`
  },
}

const addAgentStage: Stage = {
  name: 'add-agent',
  description: 'Node runtime (stripped host node + libraries) and the agent bundle (/usr/lib/rdk/agent.mjs)',
  async run(ctx) {
    const node = await ctx.tree.withSource('node', () => addNodeRuntime(ctx.tree, {cacheDir: ctx.spec.cacheDir, icu: ctx.spec.nodeIcu}))
    ctx.layers.set('node', 'node')
    const agent = await ctx.tree.withSource('agent', () => addAgentBundle(ctx.tree))
    ctx.manifestExtra.node = node
    ctx.manifestExtra.agent = agent
    return `node ${node.version}, agent bundle ${agent.size} bytes`
  },
}

export const tiny: FlavorDefinition = {
  name: 'tiny',
  description: 'small busybox ramdisk: the agent, its tools and a kernel, no systemd',
  defaultElements: ['base', 'agent'],
  // Any root= makes the kernel unpack the initramfs into ramfs instead of a tmpfs capped at half
  // the RAM: the image then boots in 384 MiB instead of 416 (the /init inside is run either way).
  kernelArgs: {root: '/dev/ram0'},
  stages: [
    resolveElementsStage, // the flavor's default elements + the spec's, with dependencies
    rootHooksStage, // root.d hooks, before anything is in the tree
    fetchPackagesStage, // the deploy toolset + packages elements ask for
    fetchKernelStage, // Debian's kernel + the deploy modules
    assembleTreeStage, // elements' files, SSH keys, hardware managers
    addAgentStage, // Node + the agent bundle
    runHooksStage, // extra-data.d … finalise.d against a staged copy
    packInitramfsStage, // layered, cached, compressed cpio
    writeKernelStage, // <name>.kernel
    isoStage, // <name>.iso (also when a bundle needs it)
    pxeStage, // <name>-pxe/
    ipxeStage, // <name>.ipxe
    bundleStage, // <name>.tar.gz, <name>.zip, <file>.sha256
    writeArtefactsStage, // check, hash, manifest, rename into place
  ],
}

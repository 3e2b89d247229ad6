/**
 * The tiny flavor's own stages, plugged into the generic pipeline (src/build/registry.ts):
 * Debian packages (the deploy toolset + whatever elements ask for), the Debian kernel with the
 * deploy ramdisk's modules, and Node + the agent bundle. No chroot, no root-only tricks.
 */
import type {Stage, StageRegistry} from '../../build/registry.js'
import {extractDeb} from '../../debian/extract.js'
import {installKernelModules, moduleList, prepareKernel} from '../../debian/kernel.js'
import {fetchPackages, resolvePackages} from '../../debian/packages.js'
import {buildToolset, DEPLOY_TOOLSET, PRUNED_DEPENDENCIES} from '../../debian/toolset.js'
import type {ExtractEntryInfo} from '../../debian/extract.js'
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
    const inToolset = new Set([...DEPLOY_TOOLSET.map((t) => t.package), ...report.packages.map((p) => p.name)])
    const extra = ctx.packageRequests().filter((r) => !inToolset.has(r.name))
    let deps = 0
    if (extra.length) {
      // What elements ask for is installed whole; its dependencies (those the toolset does not
      // already bring, minus maintainer-script machinery) contribute their shared libraries only.
      const resolved = await resolvePackages(extra.map((r) => r.name), {exclude: [...PRUNED_DEPENDENCIES, ...inToolset]})
      const paths = await fetchPackages(resolved, cacheDir)
      const asked = new Map(extra.map((r) => [r.name, r.element]))
      for (const [i, p] of resolved.entries()) {
        const element = asked.get(p.name)
        const source = element ?? p.name
        if (!element) deps++
        await ctx.tree.withSource(source, () => extractDeb(paths[i]!, ctx.tree, {source, ...(element ? {} : {filter: isSharedLibrary})}))
        ctx.packages.push({name: p.name, version: p.version, arch: p.arch, element: element ?? `(dependency)`})
      }
    }
    return `${report.packages.length} toolset packages${extra.length ? ` + ${extra.length} from elements${deps ? ` (+ ${deps} dependencies' libraries)` : ''}` : ''}`
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

export function register(registry: StageRegistry): void {
  registry.registerStage('tiny', fetchPackagesStage, {replace: 'fetch-packages'})
  registry.registerStage('tiny', fetchKernelStage, {replace: 'fetch-kernel'})
  registry.registerStage('tiny', addAgentStage, {after: 'assemble-tree'})
}

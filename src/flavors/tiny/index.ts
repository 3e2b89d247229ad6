/**
 * The tiny flavor's own stages, plugged into the generic pipeline (src/build/registry.ts):
 * Debian packages (the deploy toolset + whatever elements ask for), the Debian kernel with the
 * deploy ramdisk's modules, and Node + the agent bundle. No chroot, no root-only tricks.
 */
import type {Stage, StageRegistry} from '../../build/registry.js'
import {extractDeb} from '../../debian/extract.js'
import {installKernelModules, prepareKernel} from '../../debian/kernel.js'
import {fetchPackages, resolvePackages} from '../../debian/packages.js'
import {buildToolset, DEPLOY_TOOLSET} from '../../debian/toolset.js'
import {addAgentBundle, addNodeRuntime} from './node.js'

const fetchPackagesStage: Stage = {
  name: 'fetch-packages',
  description: 'fetch and verify the deploy toolset and the packages elements ask for; add their files with the shared-library closure',
  async run(ctx) {
    const cacheDir = ctx.spec.cacheDir
    const report = await ctx.tree.withSource('toolset', () => buildToolset(ctx.tree, {cacheDir, compress: false}))
    for (const p of report.packages) ctx.packages.push({name: p.name, version: p.version, arch: p.arch, element: 'toolset'})
    const inToolset = new Set(DEPLOY_TOOLSET.map((t) => t.package))
    const extra = ctx.packageRequests().filter((r) => !inToolset.has(r.name))
    if (extra.length) {
      const resolved = await resolvePackages(extra.map((r) => r.name), {noDependencies: true})
      const paths = await fetchPackages(resolved, cacheDir)
      for (const [i, p] of resolved.entries()) {
        await ctx.tree.withSource(extra[i]?.element ?? p.name, () => extractDeb(paths[i]!, ctx.tree))
        ctx.packages.push({name: p.name, version: p.version, arch: p.arch, element: extra[i]?.element})
      }
    }
    return `${report.packages.length} toolset packages${extra.length ? ` + ${extra.length} from elements` : ''}`
  },
}

const fetchKernelStage: Stage = {
  name: 'fetch-kernel',
  description: "Debian's kernel (linux-image-amd64) and the deploy ramdisk's modules with their dependency closure, depmod'ed",
  async run(ctx) {
    const kernel = await prepareKernel({cacheDir: ctx.spec.cacheDir})
    const installed = await ctx.tree.withSource('kernel-modules', () => installKernelModules(kernel, ctx.tree, {workDir: ctx.workDir, compress: false}))
    ctx.kernel = {path: kernel.vmlinuz, version: kernel.kernelVersion, source: kernel.package.filename}
    ctx.packages.push({name: kernel.package.name, version: kernel.package.version, arch: kernel.package.arch, element: 'kernel'})
    return `kernel ${kernel.kernelVersion}, ${kernel.modules.length} modules, ${installed.files.length} files`
  },
}

const addAgentStage: Stage = {
  name: 'add-agent',
  description: 'Node runtime (stripped host node + libraries) and the agent bundle (/usr/lib/rdk/agent.mjs)',
  async run(ctx) {
    const node = await ctx.tree.withSource('node', () => addNodeRuntime(ctx.tree, {cacheDir: ctx.spec.cacheDir}))
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

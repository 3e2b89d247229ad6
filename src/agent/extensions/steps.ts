/**
 * clean, deploy and service extensions: get_*_steps and execute_*_step, which share one shape.
 */
import type {Extension} from '../commands.js'
import {CleaningError, DeploymentError, HardwareManagerMethodNotFound, RESTError, ServicingError, VersionMismatch} from '../errors.js'
import type {StepKind} from '../hardware/manager.js'
import type {NodeInfo, Port, Step} from '../hardware/types.js'
import type {AgentRuntime} from '../runtime.js'

const FAILURE: Record<StepKind, new (details?: string) => RESTError> = {
  clean: CleaningError,
  deploy: DeploymentError,
  service: ServicingError,
}

/** IPA's hardware.check_versions: a version given by Ironic must equal ours. */
export function checkVersions(rt: AgentRuntime, provided: unknown): void {
  if (provided === undefined || provided === null) return
  if (typeof provided === 'object' && Object.keys(provided as object).length === 0) return
  const current = rt.registry.currentVersions()
  if (JSON.stringify(sortKeys(provided)) !== JSON.stringify(sortKeys(current))) throw new VersionMismatch(current, provided)
}

function sortKeys(v: unknown): unknown {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return v
  return Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)))
}

function cacheNode(rt: AgentRuntime, node: unknown): NodeInfo {
  const n = (node && typeof node === 'object' ? node : {}) as NodeInfo
  rt.node = n
  for (const m of rt.registry.managers) if ('cachedNode' in m) (m as {cachedNode?: NodeInfo}).cachedNode = n
  return n
}

export function stepsExtension(kind: StepKind): Extension<AgentRuntime> {
  const Failure = FAILURE[kind]
  return {
    name: kind,
    commands: {
      [`get_${kind}_steps`]: {
        async: false,
        params: {node: 'required', ports: 'required'},
        async run(p, rt) {
          const node = cacheNode(rt, p.node)
          const steps = await rt.registry.getSteps(kind, node, (p.ports ?? []) as Port[])
          return {[`${kind}_steps`]: steps, hardware_manager_version: rt.registry.currentVersions()}
        },
      },
      [`execute_${kind}_step`]: {
        async: true,
        params: {step: 'required', node: 'required', ports: 'required', [`${kind}_version`]: 'optional'},
        extraParams: true,
        async run(p, rt) {
          const {step, node: rawNode, ports, [`${kind}_version`]: version, ...kwargs} = p
          checkVersions(rt, version)
          if (!step || typeof step !== 'object' || typeof (step as Step).step !== 'string') {
            throw new Failure(`Malformed ${kind}_step, no "step" key: ${JSON.stringify(step)}`)
          }
          const s = step as Step
          const portList = (ports ?? []) as Port[]
          const requestNode = (rawNode && typeof rawNode === 'object' ? rawNode : {}) as NodeInfo
          // Only a step some manager advertises for this kind runs (asked with this request's node
          // and ports); anything else fails before the agent caches anything from the request.
          const runStep = await rt.registry.resolveStep(kind, s.step, requestNode, portList)
          if (!runStep) {
            rt.log.warn(`refusing to run ${kind} step ${s.step.slice(0, 200)}: no hardware manager advertises it`)
            throw new HardwareManagerMethodNotFound(s.step)
          }
          const node = cacheNode(rt, rawNode)
          const args = {...kwargs, ...((s.args as Record<string, unknown> | undefined) ?? {})}
          let result: unknown
          try {
            result = await runStep(node, portList, args)
          } catch (err) {
            if (err instanceof RESTError) throw err
            throw new Failure(`Error performing ${kind} step ${s.step}: ${(err as Error)?.message ?? String(err)}`)
          }
          return {[`${kind}_result`]: result ?? null, [`${kind}_step`]: step}
        },
      },
    },
  }
}

/**
 * Inspection before lookup (IPA's inspector.py): collect data with the configured collectors and
 * POST it to ironic-inspector's /v1/continue or Ironic's /v1/continue_inspection. Returns the node
 * UUID from the answer (passed to lookup) and, from Ironic's endpoint at API 1.84, the lookup-style
 * answer with the agent token Ironic made for us (our next lookup only gets "******").
 */
import type {IronicClient, LookupResult} from './ironic-client.js'
import {errorText, parseLookupBody, sleep} from './ironic-client.js'
import type {BlockDevice, Inventory} from './hardware/types.js'
import type {AgentRuntime} from './runtime.js'
import {logExtension} from './extensions/log.js'
import {redactJson} from './redact.js'

const GiB = 1024 ** 3

/** IPA's root disk guess: the smallest disk of at least 4 GiB (ties by name). */
export function guessRootDisk(disks: BlockDevice[]): BlockDevice | null {
  const big = disks.filter((d) => d.size >= 4 * GiB).sort((a, b) => a.size - b.size || a.name.localeCompare(b.name))
  return big[0] ?? null
}

export async function collectInspectionData(rt: AgentRuntime): Promise<Record<string, unknown>> {
  const data: Record<string, unknown> = {}
  const errors: string[] = []
  const collectors = rt.config.inspectionCollectors
  for (const name of collectors) {
    try {
      if (name === 'default') {
        const inventory = (await rt.registry.dispatchToManagers('list_hardware_info')) as Inventory
        data.inventory = inventory
        data.root_disk = guessRootDisk(inventory.disks)
        data.boot_interface = inventory.boot.pxe_interface
        data.configuration = {
          collectors,
          managers: rt.registry.managers.map((m) => m.get_version()),
        }
      } else if (name === 'logs') {
        // IPA's collect_logs sends the same bundle as log.collect_system_logs (agent log, dmesg,
        // ip, lsblk, lshw, /proc files, /init's progress log): base64 tar.gz.
        const logs = (await logExtension.commands.collect_system_logs!.run({}, rt)) as {system_logs: string}
        data.logs = logs.system_logs
      } else {
        const extra = await rt.registry.dispatchCollector(name, data)
        if (extra && typeof extra === 'object') Object.assign(data, extra)
      }
    } catch (err) {
      rt.log.error('inspection collector failed', {collector: name, err})
      errors.push(`collector ${name} failed: ${(err as Error).message}`)
    }
  }
  data.error = errors.length ? errors.join('; ') : null
  // Nothing secret leaves for Ironic: the token and credentials are masked in every string.
  return redactJson(data)
}

export interface InspectionOutcome {
  /** The node's UUID from the answer (for lookup's node_uuid). */
  uuid?: string
  /** Ironic's /v1/continue_inspection at API ≥ 1.84: node and config (agent_token) as from a lookup. */
  lookup?: LookupResult
}

export async function runInspection(rt: AgentRuntime, client: IronicClient, url: string): Promise<InspectionOutcome> {
  const data = await collectInspectionData(rt)
  let delay = 5000
  for (let attempt = 1; attempt <= 5; attempt++) {
    try {
      const res = await client.postInspection(url, data)
      if (res.status >= 200 && res.status < 300) {
        let body: unknown
        try {
          body = res.json()
        } catch {
          body = undefined
        }
        const lookup = parseLookupBody(body)
        const uuid = lookup?.node.uuid ?? (typeof (body as {uuid?: unknown})?.uuid === 'string' ? (body as {uuid: string}).uuid : undefined)
        rt.log.info('inspection data posted', {url, node: uuid, lookup_answer: Boolean(lookup)})
        return {uuid, lookup}
      }
      if (res.status < 500 && res.status !== 409) {
        rt.log.error('inspection rejected; continuing to lookup', {status: res.status, error: errorText(res)})
        return {}
      }
      rt.log.warn('inspection endpoint busy or failing; retrying', {status: res.status})
    } catch (err) {
      rt.log.warn('inspection endpoint unreachable; retrying', {err})
    }
    await sleep(delay)
    delay = Math.min(30_000, delay * 1.5)
  }
  rt.log.error('inspection data could not be posted; continuing to lookup')
  return {}
}

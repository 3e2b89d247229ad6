/** log.collect_system_logs: the bundle IPA returns (base64 tar.gz), with files from managers. */
import {gunzipSync} from 'node:zlib'
import tar from 'tar-stream'
import {describe, expect, it} from 'vitest'
import {logExtension} from '../src/agent/extensions/log.js'

async function entries(b64: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  const ex = tar.extract()
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, stream, next) => {
      const chunks: Buffer[] = []
      stream.on('data', (c: Buffer) => chunks.push(c))
      stream.on('end', () => {
        out[h.name] = Buffer.concat(chunks).toString()
        next()
      })
    })
    ex.on('finish', resolve)
    ex.on('error', reject)
  })
  ex.end(gunzipSync(Buffer.from(b64, 'base64')))
  await done
  return out
}

describe('log.collect_system_logs', () => {
  it('bundles the agent log, system state and the files hardware managers add', async () => {
    const rt = {
      registry: {
        dispatchToAllManagers: async (method: string, io: Record<string, unknown>) => {
          expect(method).toBe('collect_system_logs')
          io['vendor-tool.txt'] = 'firmware 1.2.3'
          return {}
        },
      },
    }
    const r = (await logExtension.commands.collect_system_logs!.run({}, rt as never)) as {system_logs: string}
    const files = await entries(r.system_logs)
    expect(files['vendor-tool.txt']).toBe('firmware 1.2.3')
    expect(files.proc_cmdline).toBeTruthy()
    expect(files.proc_partitions).toMatch(/major\s+minor/)
    expect(Object.keys(files)).toContain('agent.log')
    expect(files['ip_addr.txt']).toMatch(/lo/)
    // Files this host does not have (the tiny image's /run/rdk/init.log) are left out, not empty.
    for (const [name, data] of Object.entries(files)) expect(data.length, name).toBeGreaterThan(0)
  })
})

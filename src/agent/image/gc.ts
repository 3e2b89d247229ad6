/**
 * A nudge for the garbage collector while gigabytes stream through.
 *
 * Every socket read hands the agent a fresh 64 KiB buffer. V8 frees dead buffers only when it
 * collects garbage, and with a small JS heap it waits until ~64 MB of such external memory has
 * piled up: writing an image would then cost ~60 MB of RSS for nothing. A minor (young
 * generation) collection every few MiB takes ~0.1 ms and keeps RSS flat; gc() is obtained once
 * through a V8 flag, without exposing it to the rest of the agent.
 */
import v8 from 'node:v8'
import vm from 'node:vm'

type GcFn = (opts?: {type?: 'minor' | 'major'}) => void
let gcFn: GcFn | null | undefined

function getGc(): GcFn | null {
  if (gcFn !== undefined) return gcFn
  try {
    v8.setFlagsFromString('--expose-gc')
    gcFn = vm.runInNewContext('gc') as GcFn
    v8.setFlagsFromString('--no-expose-gc')
  } catch {
    gcFn = null
  }
  return gcFn
}

/** Call with each chunk's size; runs a minor GC every `every` bytes. */
export class GcNudger {
  private since = 0
  constructor(private readonly every = 4 * 1024 * 1024) {}

  add(bytes: number): void {
    this.since += bytes
    if (this.since < this.every) return
    this.since = 0
    getGc()?.({type: 'minor'})
  }
}

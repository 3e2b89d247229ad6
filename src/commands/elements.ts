import {Flags} from '@oclif/core'
import {ElementCatalog, elementSearchPaths, HOOK_PHASES, type Element} from '../builder/elements.js'
import {RdkCommand} from './base.js'

interface Row {
  name: string
  description: string
  dir: string
  origin: 'built-in' | 'user'
  depends: string[]
  provides: string[]
  conflicts: string[]
  packages: string[]
  hooks: string[]
  shadows?: string[]
  error?: string
}

/** The first sentence, at most 100 characters (--json has the whole description). */
function short(text: string): string {
  const first = /^(.*?\.)(\s|$)/.exec(text)?.[1] ?? text
  return first.length > 100 ? `${first.slice(0, 99)}…` : first
}

export default class Elements extends RdkCommand {
  static override summary = 'List the elements rdk build can use, with their descriptions and where they come from'
  static override description =
    'Search order: --elements-path directories, then $RDK_ELEMENTS_PATH (colon-separated), then the built-in elements. The first element of a name wins; later ones are shown as shadowed.'
  static override flags = {
    'elements-path': Flags.string({description: 'extra element directory, searched first (repeatable)', multiple: true}),
    json: Flags.boolean({description: 'print JSON'}),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Elements)
    const catalog = await ElementCatalog.scan(elementSearchPaths(flags['elements-path'] ?? []))
    const rows: Row[] = []
    for (const name of catalog.names()) {
      const loc = catalog.location(name)!
      const shadows = catalog.shadowed.filter((s) => s.name === name).map((s) => s.dir)
      const base = {name, dir: loc.dir, origin: loc.builtin ? ('built-in' as const) : ('user' as const), ...(shadows.length ? {shadows} : {})}
      let el: Element
      try {
        el = await catalog.load(name)
      } catch (err) {
        rows.push({...base, description: '', depends: [], provides: [], conflicts: [], packages: [], hooks: [], error: (err as Error).message})
        continue
      }
      const m = el.manifest
      rows.push({
        ...base,
        description: m.description,
        depends: m.depends,
        provides: m.provides,
        conflicts: m.conflicts,
        packages: m.packages.map((p) => p.name),
        hooks: HOOK_PHASES.flatMap((ph) => (el.hooks[ph] ?? []).map((h) => `${ph}/${h.name}`)),
      })
    }
    if (flags.json) {
      this.log(JSON.stringify({searchPaths: catalog.searchPaths, elements: rows}, null, 2))
      return
    }
    if (rows.length === 0) {
      this.log(`no elements found in ${catalog.searchPaths.join(', ')}`)
      return
    }
    const width = Math.max(...rows.map((r) => r.name.length))
    const pad = ''.padEnd(width)
    for (const r of rows) {
      const desc = r.error ? `INVALID: ${r.error}` : short(r.description) || '(no description)'
      this.log(`${r.name.padEnd(width)}  ${desc}`)
      const facts = [r.origin === 'built-in' ? 'built-in' : r.dir]
      if (r.depends.length) facts.push(`depends: ${r.depends.join(', ')}`)
      if (r.provides.length) facts.push(`provides: ${r.provides.join(', ')}`)
      if (r.packages.length) facts.push(`packages: ${r.packages.join(', ')}`)
      this.log(`${pad}  [${facts.join('; ')}]`)
      for (const s of r.shadows ?? []) this.log(`${pad}  (shadows ${s})`)
    }
  }
}

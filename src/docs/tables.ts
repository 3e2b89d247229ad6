/**
 * Settings tables in the docs, generated from the code's own tables so they cannot drift:
 *
 *   docs/build.md   the build spec   ← SPEC_SETTINGS (src/builder/spec.ts)
 *   docs/agent.md   agent settings   ← SETTINGS (src/agent/config.ts)
 *
 * Each table sits between `<!-- BEGIN GENERATED: <id> … -->` and `<!-- END GENERATED: <id> -->`.
 * `npm run docs` (scripts/gen-docs.js) rewrites them; test/docs-tables.test.ts regenerates them in
 * memory and fails when a docs file differs.
 */
import {flagName, SETTINGS, type Setting} from '../agent/config.js'
import {SPEC_SETTINGS, type SpecSetting} from '../builder/spec.js'

export interface GeneratedBlock {
  /** Docs file, relative to the package root. */
  file: string
  id: string
  render(): string
}

/** A table cell: `|` escaped, `<name>` kept visible (not an HTML tag). */
const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/\n/g, ' ')
const code = (s: string) => `\`${s}\``

function specValue(s: SpecSetting): string {
  const choices = s.choices?.map(code).join(' | ')
  switch (s.kind) {
    case 'string':
      return 'string'
    case 'enum':
      return choices!
    case 'int':
      return 'whole number'
    case 'path':
      return 'path'
    case 'list':
      return 'list of names'
    case 'enumList':
      return `list of ${choices}`
    case 'pathList':
      return 'list of paths'
    case 'map':
      return 'mapping `K: V` (`null`: a bare word) or list of `"K=V"`'
  }
}

export function renderSpecTable(settings: readonly SpecSetting[] = SPEC_SETTINGS): string {
  const rows = settings.map((s) => {
    const flag = s.kind === 'map' ? `--${s.flag} K=V` : `--${s.flag}`
    return `| ${code(s.key)} | ${code(flag)}${s.repeatable ? ' (repeatable)' : ''} | ${cell(specValue(s))} | ${cell(s.defaultHelp)} | ${cell(s.help)} |`
  })
  return ['| YAML key | flag | value | default | what it is |', '|---|---|---|---|---|', ...rows].join('\n')
}

function agentDefault(v: unknown): string {
  if (v === undefined) return 'unset'
  if (Array.isArray(v)) return v.length ? code(v.join(',')) : 'none'
  if (v === '') return 'empty'
  return code(String(v))
}

export function renderAgentTable(settings: readonly Setting[] = SETTINGS): string {
  const rows = settings.map(
    (s) => `| ${code(s.param)} | ${code(`--${flagName(s)}`)} | ${code(s.option)} | ${s.type} | ${cell(agentDefault(s.default))} | ${cell(s.help)} |`,
  )
  return ['| kernel parameter | flag | config key | type | default | what it is |', '|---|---|---|---|---|---|', ...rows].join('\n')
}

export const BLOCKS: readonly GeneratedBlock[] = [
  {file: 'docs/build.md', id: 'spec-settings', render: () => renderSpecTable()},
  {file: 'docs/agent.md', id: 'agent-settings', render: () => renderAgentTable()},
]

export const REGENERATE = 'npm run docs'

/** `text` with the block `id` replaced by `content`; an error if the markers are missing. */
export function replaceBlock(text: string, file: string, id: string, content: string): string {
  const begin = `<!-- BEGIN GENERATED: ${id} (${REGENERATE}; do not edit by hand) -->`
  const end = `<!-- END GENERATED: ${id} -->`
  const i = text.indexOf(begin)
  const j = text.indexOf(end)
  if (i < 0 || j < i) throw new Error(`${file}: no ${begin} … ${end} markers`)
  return `${text.slice(0, i + begin.length)}\n${content}\n${text.slice(j)}`
}

/** Every docs file with its generated blocks brought up to date (file → new text). */
export function regenerate(read: (file: string) => string): Map<string, string> {
  const out = new Map<string, string>()
  for (const b of BLOCKS) out.set(b.file, replaceBlock(out.get(b.file) ?? read(b.file), b.file, b.id, b.render()))
  return out
}

/**
 * The settings tables in the docs are generated (src/docs/tables.ts, `npm run docs`): regenerate
 * them in memory and compare, so a new or changed setting without regenerated docs fails here.
 */
import {readFileSync} from 'node:fs'
import {describe, expect, it} from 'vitest'
import {SETTINGS} from '../src/agent/config.js'
import {SPEC_SETTINGS} from '../src/builder/spec.js'
import {BLOCKS, regenerate, renderAgentTable, renderSpecTable, replaceBlock} from '../src/docs/tables.js'

const read = (f: string) => readFileSync(f, 'utf8')

describe('generated docs tables', () => {
  for (const [file, text] of regenerate(read)) {
    it(`${file} is up to date (else: npm run docs)`, () => {
      expect(read(file)).toBe(text)
    })
  }

  it('has a row for every build setting and every agent setting', () => {
    const spec = renderSpecTable()
    for (const s of SPEC_SETTINGS) expect(spec).toContain(`| \`${s.key}\` | \`--${s.flag}`)
    const agent = renderAgentTable()
    for (const s of SETTINGS) expect(agent).toContain(`| \`${s.param}\` |`)
    expect(agent.split('\n')).toHaveLength(SETTINGS.length + 2)
  })

  it('notices a setting the docs do not have yet', () => {
    const extra = [...SPEC_SETTINGS, {...SPEC_SETTINGS[0]!, key: 'newThing', flag: 'new-thing', help: 'a new setting'}] as typeof SPEC_SETTINGS
    const block = BLOCKS.find((b) => b.id === 'spec-settings')!
    const withExtra = replaceBlock(read(block.file), block.file, block.id, renderSpecTable(extra))
    expect(withExtra).not.toBe(read(block.file))
    expect(withExtra).toContain('| `newThing` | `--new-thing` |')
    expect(() => replaceBlock('no markers here', 'x.md', 'spec-settings', '')).toThrow(/no <!-- BEGIN GENERATED: spec-settings/)
  })
})
